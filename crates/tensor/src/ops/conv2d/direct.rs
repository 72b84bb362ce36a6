//! The direct wide-row forward kernel, and when a padded layer takes it.

use super::*;
use crate::isa::Isa;

//
// With stride 1 and no padding, index the output by the input's row length
// W instead of OW: output pixel (oy, ox) sits at q = oy·W + ox, and kernel
// tap t = (c, ki, kj) reads x at q + off_t, off_t = c·H·W + ki·W + kj, the
// same offset for every pixel. So, per output channel o,
//
// ```text
// yw[o, q] = bias[o] + Σ_t w[o, t] · x[q + off_t],   q < L = (OH − 1)·W + OW
// ```
//
// is one long contiguous loop per tap, and the W − OW columns at the end of
// each wide row are junk, dropped when the rows are copied out. The kernel
// keeps a block of DIRECT_CO channels × DIRECT_PX pixels in registers and
// streams the taps through it: per tap, two loads of x and DIRECT_CO
// broadcast weights feed 2·DIRECT_CO vector FMAs. No im2col matrix and no
// GEMM packing: on the LeNet shapes the GEMM path spent more time copying
// (im2col, then matrixmultiply's packing of it) than multiplying, and its
// 16-row micro-kernel wasted 10 of 16 rows on conv1's 6 output channels.
//
// The sum runs in the order of the naive oracle (bias, then taps in (c, ki,
// kj) order). The AVX2 kernel fuses each multiply-add (one rounding), the
// portable one rounds twice; both are tested against the oracle.

/// Output channels per register block.
pub(super) const DIRECT_CO: usize = 6;
/// Pixels per register block (two 8-lane vectors).
pub(super) const DIRECT_PX: usize = 16;

/// Whether the direct kernel handles this geometry as it is.
pub(super) fn direct_applies(s: &Conv2dShape) -> bool {
    s.opts.stride == (1, 1) && s.opts.dilation == (1, 1) && s.opts.padding == (0, 0)
}

/// Whether the forward pass runs the direct kernel on a zero-padded copy
/// of the input: stride 1 without dilation, with padding, and
/// [`DIRECT_PADDED_IN`] input channels per group. Measured on the CIFAR
/// ResNets' 3×3 convolutions at batch 128 (benches/resnet_conv.rs): on 16
/// channels over 32×32 maps the direct kernel takes about 0.65× the time
/// of im2col + GEMM (forward) and 0.8× (input gradient, as the forward of
/// the flipped kernel); on 32 channels the two are even, and on 64 over
/// 8×8 maps the GEMM is faster (the wide rows waste a third of the last
/// pixel blocks there, and its packing is amortised over longer dot
/// products).
pub(super) fn direct_padded_applies(s: &Conv2dShape) -> bool {
    s.opts.stride == (1, 1)
        && s.opts.dilation == (1, 1)
        && s.opts.padding != (0, 0)
        && DIRECT_PADDED_IN.contains(&s.group_in())
}

/// Input channels per group for which the padded direct path is taken.
pub(super) const DIRECT_PADDED_IN: std::ops::RangeInclusive<usize> = 8..=16;

/// The same convolution on the input padded by hand: H + 2·py by W + 2·px,
/// no padding.
pub(super) fn padded_shape(s: &Conv2dShape) -> Conv2dShape {
    let (py, px) = s.opts.padding;
    Conv2dShape {
        in_h: s.in_h + 2 * py,
        in_w: s.in_w + 2 * px,
        opts: Conv2dOptions {
            padding: (0, 0),
            ..s.opts
        },
        ..*s
    }
}

/// Wide output length L, rounded up to whole pixel blocks.
pub(super) fn direct_wide_len(s: &Conv2dShape) -> usize {
    ((s.out_h() - 1) * s.in_w + s.out_w()).div_ceil(DIRECT_PX) * DIRECT_PX
}

/// Scratch of [`forward_direct`]: the input followed by a pixel block of
/// zeros (the last block reads past L), the weights in tap-major
/// blocks, and one block of wide output rows.
pub(super) fn direct_scratch_len(s: &Conv2dShape) -> usize {
    let k = s.col_rows();
    let blocks = s.group_out().div_ceil(DIRECT_CO);
    s.group_in() * s.in_h * s.in_w
        + DIRECT_PX
        + blocks * k * DIRECT_CO
        + DIRECT_CO * direct_wide_len(s)
}

/// y_g = conv(x_g, w_g) + bias_g for one image and one group by wide rows
/// (see above). x_bg is (Cg, H, W), w_g is (O/g, Cg·KH·KW). Each output
/// channel o's plane is handed to `emit(o, rows)` as wide rows of W floats
/// (`rows[oy·W + ox]`, at least (OH−1)·W + OW of them, junk past OW in each
/// row): [`copy_planes`] copies them out, the fused block relu-pools them
/// in place. Needs [`direct_applies`].
pub(super) fn forward_direct(
    s: &Conv2dShape,
    x_bg: &[f32],
    w_g: &[f32],
    bias_g: Option<&[f32]>,
    scratch: &mut [f32],
    kernel: Isa,
    emit: &mut dyn FnMut(usize, &[f32]),
) {
    let (h, w) = (s.in_h, s.in_w);
    let (cg, og, k) = (s.group_in(), s.group_out(), s.col_rows());
    let lw = direct_wide_len(s);
    let blocks = og.div_ceil(DIRECT_CO);
    let (xp, rest) = scratch.split_at_mut(cg * h * w + DIRECT_PX);
    let (wt, rest) = rest.split_at_mut(blocks * k * DIRECT_CO);
    let yw = rest; // DIRECT_CO·lw floats, then any slack the caller gave
                   // x with DIRECT_PX zeros after it: the last pixel block reads past L.
    xp[..cg * h * w].copy_from_slice(x_bg);
    xp[cg * h * w..].fill(0.0);
    // Weights tap-major per block of channels, wt[block][t][o], zeros for
    // the channels past O/g in the last block.
    for (blk, wb) in wt.chunks_mut(k * DIRECT_CO).enumerate() {
        for (t, row) in wb.chunks_mut(DIRECT_CO).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                let o = blk * DIRECT_CO + j;
                *v = if o < og { w_g[o * k + t] } else { 0.0 };
            }
        }
    }
    // Tap offsets, (c, ki, kj) order.
    let mut offs = Vec::with_capacity(k);
    for c in 0..cg {
        for ki in 0..s.kernel_h {
            for kj in 0..s.kernel_w {
                offs.push(c * h * w + ki * w + kj);
            }
        }
    }
    for blk in 0..blocks {
        let mut init = [0.0f32; DIRECT_CO];
        for (j, v) in init.iter_mut().enumerate() {
            let o = blk * DIRECT_CO + j;
            *v = match bias_g {
                Some(b) if o < og => b[o],
                _ => 0.0,
            };
        }
        let wb = &wt[blk * k * DIRECT_CO..][..k * DIRECT_CO];
        let mut q0 = 0;
        // Two pixel blocks at a time where AVX-512 runs them in one pass
        // (each output's FMAs in the same order: the same bits).
        #[cfg(target_arch = "x86_64")]
        if kernel.avx512() {
            while q0 + 2 * DIRECT_PX <= lw {
                let mut acc = [[0.0f32; 2 * DIRECT_PX]; DIRECT_CO];
                wide_block2(xp, &offs, wb, &init, q0, &mut acc);
                for (j, a) in acc.iter().enumerate() {
                    yw[j * lw + q0..][..2 * DIRECT_PX].copy_from_slice(a);
                }
                q0 += 2 * DIRECT_PX;
            }
        }
        for q0 in (q0..lw).step_by(DIRECT_PX) {
            let mut acc = [[0.0f32; DIRECT_PX]; DIRECT_CO];
            wide_block(kernel, xp, &offs, wb, &init, q0, &mut acc);
            for (j, a) in acc.iter().enumerate() {
                yw[j * lw + q0..][..DIRECT_PX].copy_from_slice(a);
            }
        }
        // Channel j's rows run on into the next channel's (junk to it).
        for j in 0..DIRECT_CO.min(og - blk * DIRECT_CO) {
            emit(blk * DIRECT_CO + j, &yw[j * lw..]);
        }
    }
}

/// The `emit` of [`forward_direct`] that copies the valid OW columns of each
/// wide row into y_bg (O/g, OH, OW).
pub(super) fn copy_planes<'a>(
    s: &Conv2dShape,
    y_bg: &'a mut [f32],
) -> impl FnMut(usize, &[f32]) + 'a {
    let (oh, ow, w) = (s.out_h(), s.out_w(), s.in_w);
    move |o, rows| {
        for oy in 0..oh {
            // Rows of 10 to 32 floats: inlined copies, not a memmove call
            // each.
            copy_short(&mut y_bg[(o * oh + oy) * ow..][..ow], &rows[oy * w..][..ow]);
        }
    }
}

/// One register block: acc[j][i] = init[j] + Σ_t wb[t][j] · x[off_t + q0 + i].
pub(super) fn wide_block(
    kernel: Isa,
    x: &[f32],
    offs: &[usize],
    wb: &[f32],
    init: &[f32; DIRECT_CO],
    q0: usize,
    acc: &mut [[f32; DIRECT_PX]; DIRECT_CO],
) {
    assert!(wb.len() >= offs.len() * DIRECT_CO, "wide_block: weights");
    let reach = offs.iter().max().map_or(0, |m| m + q0 + DIRECT_PX);
    assert!(reach <= x.len(), "wide_block: reads past x");
    #[cfg(target_arch = "x86_64")]
    if kernel.avx2() {
        // SAFETY: the CPU has AVX2 and FMA (`avx2` checks it), and every
        // load stays below `reach` ≤ x.len() and `offs.len()·DIRECT_CO`
        // ≤ wb.len() (asserted above).
        return unsafe { wide_block_avx2(x, offs, wb, init, q0, acc) };
    }
    wide_block_portable(x, offs, wb, init, q0, acc)
}

/// Two register blocks side by side (2·DIRECT_PX pixels) in one pass of
/// the AVX-512 loop: acc[j][i] = init[j] + Σ_t wb[t][j] · x[off_t + q0 + i].
/// Panics unless the CPU has AVX-512.
#[cfg(target_arch = "x86_64")]
fn wide_block2(
    x: &[f32],
    offs: &[usize],
    wb: &[f32],
    init: &[f32; DIRECT_CO],
    q0: usize,
    acc: &mut [[f32; 2 * DIRECT_PX]; DIRECT_CO],
) {
    assert!(
        Isa::detected().avx512(),
        "wide_block2: this CPU has no AVX-512"
    );
    assert!(wb.len() >= offs.len() * DIRECT_CO, "wide_block2: weights");
    let reach = offs.iter().max().map_or(0, |m| m + q0 + 2 * DIRECT_PX);
    assert!(reach <= x.len(), "wide_block2: reads past x");
    // SAFETY: the CPU has AVX-512F (asserted), and every load stays below
    // `reach` ≤ x.len() and `offs.len()·DIRECT_CO` ≤ wb.len() (asserted).
    unsafe { wide_block2_avx512(x, offs, wb, init, q0, acc) }
}

/// # Safety
/// The CPU must support AVX-512F; every offset `off` of `offs` must have
/// `off + q0 + 32 ≤ x.len()`, and `offs.len()·DIRECT_CO ≤ wb.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn wide_block2_avx512(
    x: &[f32],
    offs: &[usize],
    wb: &[f32],
    init: &[f32; DIRECT_CO],
    q0: usize,
    acc: &mut [[f32; 2 * DIRECT_PX]; DIRECT_CO],
) {
    use std::arch::x86_64::*;
    let mut lo = [_mm512_setzero_ps(); DIRECT_CO];
    let mut hi = [_mm512_setzero_ps(); DIRECT_CO];
    for j in 0..DIRECT_CO {
        lo[j] = _mm512_set1_ps(init[j]);
        hi[j] = lo[j];
    }
    let xp = x.as_ptr();
    for (&off, wt) in offs.iter().zip(wb.chunks_exact(DIRECT_CO)) {
        // SAFETY: off + q0 + 32 ≤ x.len() (the caller's contract).
        let (x0, x1) = unsafe {
            (
                _mm512_loadu_ps(xp.add(off + q0)),
                _mm512_loadu_ps(xp.add(off + q0 + 16)),
            )
        };
        for j in 0..DIRECT_CO {
            let wv = _mm512_set1_ps(wt[j]);
            lo[j] = _mm512_fmadd_ps(wv, x0, lo[j]);
            hi[j] = _mm512_fmadd_ps(wv, x1, hi[j]);
        }
    }
    for j in 0..DIRECT_CO {
        // SAFETY: acc[j] is 32 floats: two vectors of 16.
        unsafe {
            _mm512_storeu_ps(acc[j].as_mut_ptr(), lo[j]);
            _mm512_storeu_ps(acc[j].as_mut_ptr().add(16), hi[j]);
        }
    }
}

pub(super) fn wide_block_portable(
    x: &[f32],
    offs: &[usize],
    wb: &[f32],
    init: &[f32; DIRECT_CO],
    q0: usize,
    acc: &mut [[f32; DIRECT_PX]; DIRECT_CO],
) {
    for (a, &v) in acc.iter_mut().zip(init) {
        *a = [v; DIRECT_PX];
    }
    for (&off, wt) in offs.iter().zip(wb.chunks_exact(DIRECT_CO)) {
        let xs: &[f32; DIRECT_PX] = x[off + q0..][..DIRECT_PX].try_into().unwrap();
        for (a, &wv) in acc.iter_mut().zip(wt) {
            for (a, &xv) in a.iter_mut().zip(xs) {
                *a += wv * xv;
            }
        }
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA; every offset `off` of `offs` must
/// have `off + q0 + 16 ≤ x.len()`, and `offs.len()·DIRECT_CO ≤ wb.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn wide_block_avx2(
    x: &[f32],
    offs: &[usize],
    wb: &[f32],
    init: &[f32; DIRECT_CO],
    q0: usize,
    acc: &mut [[f32; DIRECT_PX]; DIRECT_CO],
) {
    use std::arch::x86_64::*;
    let mut lo = [_mm256_setzero_ps(); DIRECT_CO];
    let mut hi = [_mm256_setzero_ps(); DIRECT_CO];
    for j in 0..DIRECT_CO {
        lo[j] = _mm256_set1_ps(init[j]);
        hi[j] = lo[j];
    }
    let xp = x.as_ptr();
    for (&off, wt) in offs.iter().zip(wb.chunks_exact(DIRECT_CO)) {
        // SAFETY: off + q0 + 16 ≤ x.len() (the caller's contract).
        let (x0, x1) = unsafe {
            (
                _mm256_loadu_ps(xp.add(off + q0)),
                _mm256_loadu_ps(xp.add(off + q0 + 8)),
            )
        };
        for j in 0..DIRECT_CO {
            let wv = _mm256_set1_ps(wt[j]);
            lo[j] = _mm256_fmadd_ps(wv, x0, lo[j]);
            hi[j] = _mm256_fmadd_ps(wv, x1, hi[j]);
        }
    }
    for j in 0..DIRECT_CO {
        // SAFETY: acc[j] is 16 floats: two vectors of 8.
        unsafe {
            _mm256_storeu_ps(acc[j].as_mut_ptr(), lo[j]);
            _mm256_storeu_ps(acc[j].as_mut_ptr().add(8), hi[j]);
        }
    }
}

/// [`conv2d_forward`] on one chosen direct kernel, sequentially, for tests
/// and benchmarks. Panics unless the geometry is stride 1 without padding
/// or dilation, or if the CPU lacks the kernel's instructions.
pub fn conv2d_forward_direct(
    s: &Conv2dShape,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    kernel: Isa,
) {
    let op = "conv2d_forward_direct";
    assert!(
        direct_applies(s),
        "{op}: needs stride 1, no padding or dilation; got {:?}",
        s.opts
    );
    check_len(op, "x", s.input_shape().iter().product(), x.len());
    check_len(op, "w", s.weight_shape().iter().product(), w.len());
    check_len(op, "y", s.output_shape().iter().product(), y.len());
    let (c, hw, o, p) = (
        s.in_channels,
        s.in_h * s.in_w,
        s.out_channels,
        s.out_pixels(),
    );
    let (cg, og, k) = (s.group_in(), s.group_out(), s.col_rows());
    let mut scratch = vec![0.0; direct_scratch_len(s)];
    for (b, y_b) in y.chunks_mut(o * p).enumerate() {
        for g in 0..s.opts.groups {
            forward_direct(
                s,
                &x[(b * c + g * cg) * hw..][..cg * hw],
                &w[g * og * k..(g + 1) * og * k],
                bias.map(|v| &v[g * og..(g + 1) * og]),
                &mut scratch,
                kernel,
                &mut copy_planes(s, &mut y_b[g * og * p..(g + 1) * og * p]),
            );
        }
    }
}

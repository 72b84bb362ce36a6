//! The forward pass as a matrix product on packed panels, with our own
//! micro-kernel: y_g (O/g, P) = bias + W_g (O/g, K) · cols (K, P).
//!
//! A GEMM library packs both operands on every call: the weights into
//! panels of MR rows and the im2col matrix into panels of NR columns, so
//! that its micro-kernel reads both contiguously. Called once per image,
//! that packs the same weights B times a pass and copies every im2col
//! matrix twice (im2col, then its packing). Here the weights are packed
//! once per call, and im2col writes its matrix straight into the panels the
//! micro-kernel reads:
//!
//! ```text
//! A panel i (MR rows of W):   a[i][k·MR + r] = W[i·MR + r, k]          (0 past O/g)
//! B panel j (NR columns):     b[j][k·NR + l] = cols[k, j·NR + l]       (0 past P)
//! tile (i, j) of y:           y[i·MR + r, j·NR + l] = bias[i·MR + r] + Σ_k a[i][k·MR + r]·b[j][k·NR + l]
//! ```
//!
//! The micro-kernel (`tile.rs`) holds an MR × NR tile in registers, starts
//! it at the bias and adds the K products in order, so each output is
//! bias + Σ_k in order (the oracle's order) whatever the threads. A group of
//! fewer output channels than MR still computes MR rows (zero weights past
//! its last): a depthwise convolution would do up to 8 times the work it
//! needs, which none of our networks has.

use super::im2col::{copy_short, shifted_rows, valid_range};
use super::tile::{kernel, tile, Start, Strided};
use super::*;
use crate::isa::Isa;

/// Whether [`conv2d_forward`] takes this path: every geometry the direct
/// kernels do not take.
pub(super) fn packed_applies(s: &Conv2dShape) -> bool {
    !direct_applies(s) && !direct_padded_applies(s)
}

/// The packed forward pass: the same contract as [`conv2d_forward`].
pub(super) fn forward_packed(
    s: &Conv2dShape,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    epi: Option<&Epilogue>,
    k: Isa,
) {
    let (mr, nr) = tile(k);
    let (c, hw, o, p) = (
        s.in_channels,
        s.in_h * s.in_w,
        s.out_channels,
        s.out_pixels(),
    );
    let (cg, og, kk, groups) = (s.group_in(), s.group_out(), s.col_rows(), s.opts.groups);
    let b_len = p.div_ceil(nr) * nr * kk;
    let (a, a_len) = pack_groups(s, w, mr);
    let ipc = images_per_chunk(s);
    for_each_chunk(y, ipc * o * p, run_parallel(s), |chunk, y_chunk| {
        with_scratch(b_len, |b| {
            for (i, y_b) in y_chunk.chunks_mut(o * p).enumerate() {
                let img = chunk * ipc + i;
                for g in 0..groups {
                    let x_bg = &x[(img * c + g * cg) * hw..][..cg * hw];
                    im2col_panels(s, x_bg, nr, b);
                    let bias_g = bias.map(|bv| &bv[g * og..(g + 1) * og]);
                    let y_bg = &mut y_b[g * og * p..(g + 1) * og * p];
                    multiply(&a[g * a_len..][..a_len], b, bias_g, (og, kk, p), y_bg, k);
                }
                if let Some(e) = epi {
                    e.apply(img, y_b, k);
                }
            }
        });
    });
    crate::buffers::give(a);
}

/// Scratch floats [`forward_image_packed`] needs: one group's packed
/// weights and panels.
pub(super) fn packed_scratch_len(s: &Conv2dShape, k: Isa) -> usize {
    let (mr, nr) = tile(k);
    let kk = s.col_rows();
    (s.group_out().div_ceil(mr) * mr + s.out_pixels().div_ceil(nr) * nr) * kk
}

/// The packed product for one image, x_b (C, H, W) → y_b (O, OH, OW), its
/// weights packed here (for callers that go image by image, such as the
/// fused conv → ReLU → max-pool); the same bits as [`forward_packed`].
/// `scratch` holds [`packed_scratch_len`] floats.
pub(super) fn forward_image_packed(
    s: &Conv2dShape,
    x_b: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    scratch: &mut [f32],
    y_b: &mut [f32],
    k: Isa,
) {
    let (mr, _) = tile(k);
    let (hw, p, kk) = (s.in_h * s.in_w, s.out_pixels(), s.col_rows());
    let (cg, og) = (s.group_in(), s.group_out());
    let (a, b) = scratch.split_at_mut(og.div_ceil(mr) * mr * kk);
    for g in 0..s.opts.groups {
        pack_weights(&w[g * og * kk..][..og * kk], (og, kk), mr, a);
        im2col_panels(s, &x_b[g * cg * hw..][..cg * hw], tile(k).1, b);
        let bias_g = bias.map(|bv| &bv[g * og..(g + 1) * og]);
        multiply(
            a,
            b,
            bias_g,
            (og, kk, p),
            &mut y_b[g * og * p..][..og * p],
            k,
        );
    }
}

/// The weights of every group packed into panels of `mr` rows, for a
/// whole batch: the buffer (from the free lists; give it back) and the
/// floats of one group's panels.
pub(super) fn pack_groups(s: &Conv2dShape, w: &[f32], mr: usize) -> (Vec<f32>, usize) {
    let (og, kk) = (s.group_out(), s.col_rows());
    let a_len = og.div_ceil(mr) * mr * kk;
    let mut a = crate::buffers::take(s.opts.groups * a_len);
    for (g, a_g) in a.chunks_exact_mut(a_len).enumerate() {
        pack_weights(&w[g * og * kk..][..og * kk], (og, kk), mr, a_g);
    }
    (a, a_len)
}

/// W (rows × K, row-major) into panels of `mr` rows, k-major within a
/// panel, zero past the last row. OVERWRITES out (⌈rows/mr⌉·mr·K floats).
fn pack_weights(w: &[f32], (rows, kk): (usize, usize), mr: usize, out: &mut [f32]) {
    for (i, panel) in out.chunks_exact_mut(mr * kk).enumerate() {
        for (kc, slot) in panel.chunks_exact_mut(mr).enumerate() {
            for (r, v) in slot.iter_mut().enumerate() {
                let row = i * mr + r;
                *v = if row < rows { w[row * kk + kc] } else { 0.0 };
            }
        }
    }
}

/// im2col of one image and group, written straight into panels of `nr`
/// columns (see the module's table), zero past the last column and where
/// the patch reads padding. OVERWRITES out (K·⌈P/nr⌉·nr floats).
fn im2col_panels(s: &Conv2dShape, x: &[f32], nr: usize, out: &mut [f32]) {
    let (h, w, oh, ow) = (s.in_h, s.in_w, s.out_h(), s.out_w());
    let ((sy, sx), (py, px), (dy, dx)) = (s.opts.stride, s.opts.padding, s.opts.dilation);
    let (kk, p) = (s.col_rows(), oh * ow);
    let panel_len = kk * nr;
    // The columns past P in the last panel stay zero.
    if p % nr != 0 {
        let last = &mut out[(p / nr) * panel_len..][..panel_len];
        last.fill(0.0);
    }
    if sy == 1 && sx == 1 && ow == w && nr.is_multiple_of(ow) {
        return same_rows_into_panels(s, x, nr, out);
    }
    let mut r = 0;
    for c in 0..s.group_in() {
        let plane = &x[c * h * w..(c + 1) * h * w];
        for ki in 0..s.kernel_h {
            let (lo, hi) = valid_range(oh, h, sy, ki * dy, py);
            for kj in 0..s.kernel_w {
                let (ox0, ox1) = valid_range(ow, w, sx, kj * dx, px);
                for oy in 0..oh {
                    let src = (lo..hi)
                        .contains(&oy)
                        .then(|| &plane[(oy * sy + ki * dy - py) * w..][..w]);
                    // The output row's pixels, a panel's run at a time.
                    let mut ox = 0;
                    while ox < ow {
                        let q = oy * ow + ox;
                        let run = (nr - q % nr).min(ow - ox);
                        let dst = &mut out[(q / nr) * panel_len + r * nr + q % nr..][..run];
                        match src {
                            None => dst.fill(0.0),
                            Some(row) => {
                                // Padding, the values read, padding.
                                let a = ox0.clamp(ox, ox + run);
                                let b = ox1.clamp(a, ox + run);
                                dst[..a - ox].fill(0.0);
                                dst[b - ox..].fill(0.0);
                                let vals = &mut dst[a - ox..b - ox];
                                if a == b {
                                    // All padding: nothing to read.
                                } else if sx == 1 {
                                    copy_short(vals, &row[a + kj * dx - px..][..b - a]);
                                } else {
                                    for (t, d) in vals.iter_mut().enumerate() {
                                        *d = row[(a + t) * sx + kj * dx - px];
                                    }
                                }
                            }
                        }
                        ox += run;
                    }
                }
                r += 1;
            }
        }
    }
}

/// [`im2col_panels`] for "same" layers (stride 1, output as wide as the
/// input) whose panels hold whole output rows (nr a multiple of OW, as for
/// the ResNets' 32, 16 and 8 with nr = 16 or 32): row k of a panel is then
/// a block of whole rows of the input plane, shifted by kj·dx − px, which
/// [`shifted_rows`] copies in one go.
fn same_rows_into_panels(s: &Conv2dShape, x: &[f32], nr: usize, out: &mut [f32]) {
    let (h, w, oh) = (s.in_h, s.in_w, s.out_h());
    let ((py, px), (dy, dx)) = (s.opts.padding, s.opts.dilation);
    let (kk, p) = (s.col_rows(), oh * w);
    let rows_per_panel = nr / w;
    let mut r = 0;
    for c in 0..s.group_in() {
        let plane = &x[c * h * w..(c + 1) * h * w];
        for ki in 0..s.kernel_h {
            let (lo, hi) = valid_range(oh, h, 1, ki * dy, py);
            for kj in 0..s.kernel_w {
                for j in 0..p.div_ceil(nr) {
                    let oy_a = j * rows_per_panel;
                    let oy_b = (oy_a + rows_per_panel).min(oh);
                    let dst = &mut out[j * kk * nr + r * nr..][..(oy_b - oy_a) * w];
                    // Output rows va..vb read the input; the others padding.
                    let (va, vb) = (
                        lo.clamp(oy_a, oy_b),
                        hi.clamp(oy_a, oy_b).max(lo.clamp(oy_a, oy_b)),
                    );
                    dst[..(va - oy_a) * w].fill(0.0);
                    dst[(vb - oy_a) * w..].fill(0.0);
                    if va < vb {
                        let iy = va + ki * dy - py;
                        let src = &plane[iy * w..][..(vb - va) * w];
                        shifted_rows(
                            src,
                            &mut dst[(va - oy_a) * w..(vb - oy_a) * w],
                            w,
                            kj * dx,
                            px,
                        );
                    }
                }
                r += 1;
            }
        }
    }
}

/// y (rows × P) = bias + A · B over the packed panels, tile by tile: every
/// B panel (K × nr, in cache) meets every A panel. OVERWRITES y.
fn multiply(
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    (rows, kk, p): (usize, usize, usize),
    y: &mut [f32],
    k: Isa,
) {
    let (mr, nr) = tile(k);
    let mut spill = [0f32; 8 * 32]; // a partial tile, then its valid part
    for j in 0..p.div_ceil(nr) {
        let b_j = &b[j * kk * nr..][..kk * nr];
        let cols = nr.min(p - j * nr);
        for i in 0..rows.div_ceil(mr) {
            let a_i = &a[i * kk * mr..][..kk * mr];
            let tile_rows = mr.min(rows - i * mr);
            let mut init = [0f32; 8];
            if let Some(bv) = bias {
                init[..tile_rows].copy_from_slice(&bv[i * mr..][..tile_rows]);
            }
            let full = tile_rows == mr && cols == nr;
            let (out, ldc) = match full {
                true => (&mut y[i * mr * p + j * nr..], p),
                false => (&mut spill[..], nr),
            };
            let start = Start::Rows(&init);
            kernel(
                k,
                (mr, nr),
                kk,
                a_i,
                (1, mr),
                b_j,
                Strided(nr),
                start,
                out,
                ldc,
            );
            if !full {
                for r in 0..tile_rows {
                    let dst = &mut y[(i * mr + r) * p + j * nr..][..cols];
                    dst.copy_from_slice(&spill[r * nr..][..cols]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv_naive::conv2d_forward_naive;
    use crate::ops::test_values::values;

    /// On every ISA, against the naive convolution: ResNet shapes (strided
    /// too), output channels and pixels that are not whole tiles, groups,
    /// dilation, no bias; and im2col's panels hold im2col's matrix.
    /// Input and weight shapes, stride, padding, groups, dilation.
    type Case = (
        [usize; 4],
        [usize; 4],
        (usize, usize),
        (usize, usize),
        usize,
        usize,
    );

    #[test]
    fn packed_forward_matches_the_oracle() {
        let cases: [Case; 8] = [
            ([1, 1, 2, 3], [2, 1, 2, 2], (1, 1), (3, 3), 1, 1),
            ([2, 32, 16, 16], [32, 32, 3, 3], (1, 1), (1, 1), 1, 1),
            ([2, 16, 32, 32], [32, 16, 3, 3], (2, 2), (1, 1), 1, 1),
            ([2, 64, 8, 8], [64, 64, 3, 3], (1, 1), (1, 1), 1, 1),
            ([3, 5, 7, 9], [7, 5, 3, 2], (1, 2), (2, 0), 1, 1),
            ([2, 6, 9, 8], [10, 3, 3, 3], (2, 1), (1, 1), 2, 1),
            ([1, 3, 11, 10], [5, 3, 3, 3], (1, 1), (2, 2), 1, 2),
            ([2, 4, 5, 5], [3, 4, 1, 1], (1, 1), (0, 0), 1, 1),
        ];
        for (i, (input, weight, stride, padding, groups, dil)) in cases.into_iter().enumerate() {
            let opts = Conv2dOptions {
                stride,
                padding,
                dilation: (dil, dil),
                groups,
            };
            let s = Conv2dShape::new(&input, &weight, opts).unwrap();
            let x = values(input.iter().product(), 3 + i as u32);
            let w = values(weight.iter().product(), 5 + i as u32);
            let bias = values(weight[0], 7 + i as u32);
            for with_bias in [true, false] {
                let b = with_bias.then_some(&bias[..]);
                let mut want = vec![0.0; s.output_shape().iter().product()];
                conv2d_forward_naive(&s, &x, &w, b, &mut want);
                for k in Isa::available() {
                    let mut y = vec![f32::NAN; want.len()];
                    forward_packed(&s, &x, &w, b, &mut y, None, k);
                    for (j, (&g, &e)) in y.iter().zip(&want).enumerate() {
                        let tol = 1e-4 * (1.0 + e.abs());
                        assert!((g - e).abs() <= tol, "case {i} {k:?} y[{j}]: {g} vs {e}");
                    }
                }
            }
            // The panels against im2col, column by column.
            let one = Conv2dShape { batch: 1, ..s };
            let (kk, p, cg) = (s.col_rows(), s.out_pixels(), s.group_in());
            let x0 = &x[..cg * s.in_h * s.in_w];
            let mut cols = vec![0.0; kk * p];
            im2col(&one, x0, &mut cols);
            for nr in [16, 32] {
                let mut panels = vec![f32::NAN; kk * p.div_ceil(nr) * nr];
                im2col_panels(&one, x0, nr, &mut panels);
                for r in 0..kk {
                    for q in 0..p.div_ceil(nr) * nr {
                        let got = panels[(q / nr) * kk * nr + r * nr + q % nr];
                        let want = if q < p { cols[r * p + q] } else { 0.0 };
                        assert_eq!(got, want, "case {i} nr {nr} row {r} column {q}");
                    }
                }
            }
        }
    }
}

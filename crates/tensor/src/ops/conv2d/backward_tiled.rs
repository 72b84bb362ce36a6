//! The weight gradient, and the input gradient of strided layers, on the
//! tile micro-kernel (`tile.rs`) instead of a GEMM library.
//!
//! # Weight gradient
//!
//! For layers of at least [`TILED_MIN_GROUP_OUT`] output channels per group
//! (the ResNets' 16-, 32- and 64-channel layers):
//!
//! ```text
//! dW_gᵀ (K, O/g) = Σ_b cols_b,g (K, P) · dY_b,gᵀ (P, O/g)
//! A = MR rows of cols, read from the padded input:   a(r, q) = xp[taps[i·MR + r] + segs[q]]
//! B panel j = NR output channels of dY, transposed:  b[j][q·NR + l] = dY[j·NR + l, q]   (0 past O/g)
//! ```
//!
//! Both of the product's operands run along the pixels q, and a GEMM
//! library would pack both, transposing the im2col matrix. Here im2col is
//! not made at all: the micro-kernel broadcasts A one value at a time, so
//! it reads cols[(c, ki, kj), q] where it lies in a padded copy of the
//! input, at the tap's offset c·Hp·Wp + ki·dy·Wp + kj·dx plus the pixel's
//! oy·sy·Wp + ox·sx ([`super::tile::AGathered`]), for any stride and
//! dilation. Only dY is transposed into panels, O/g·P values an image
//! against the product's K·O/g·P.
//!
//! The batch is cut into at most [`WEIGHT_GRAD_CHUNKS`] chunks of whole
//! images (a function of the batch only). Each chunk's tiles start at what
//! its partial dWᵀ holds, so its images accumulate in order, and the
//! partials are then added in chunk order. The result is the same bits for
//! any thread count, and every buffer comes from the free lists.
//!
//! # Input gradient
//!
//! Strided layers (whose input gradient is not a forward convolution) go
//! through col2im of
//!
//! ```text
//! dcols (K, P) = W_gᵀ (K, O/g) · dY_b,g (O/g, P)
//! A = Wᵀ read in place:  a[r + l·K] = W[l, i·MR + r]        B = dY read in place:  b[l·P + q]
//! ```
//!
//! with no copy of either operand, when K is a whole number of tile rows
//! and P of tile columns (as in every ResNet layer).

use super::forward::pad_into;
use super::tile::{kernel, narrow_tile, tile, AGathered, Start, Strided};
use super::*;

/// Layers with at least this many output channels per group take this
/// path. With fewer, the tile's 16 columns would mostly multiply the zero
/// channels padding the panel.
pub(super) const TILED_MIN_GROUP_OUT: usize = 16;

/// The weight gradient's tile: 16 columns wide for 16 output channels a
/// group, where [`tile`]'s 32 would be half zeros.
fn weight_grad_tile(s: &Conv2dShape, k: Isa) -> (usize, usize) {
    if s.group_out() <= 16 {
        narrow_tile(k)
    } else {
        tile(k)
    }
}

/// The most partial gradients a batch is split into: enough to share the
/// work among the cores, few enough that adding them up costs little.
pub(super) const WEIGHT_GRAD_CHUNKS: usize = 16;

/// Whether `backward_weight_core` takes this path.
pub(super) fn tiled_weight_grad_applies(s: &Conv2dShape) -> bool {
    s.group_out() >= TILED_MIN_GROUP_OUT
}

/// dw (O, Cg, KH, KW) = Σ_b dY_b · cols_bᵀ per group, of `map(x)` and
/// `map(dy)` if `map` is given. OVERWRITES dw. Lengths checked by the
/// caller.
pub(super) fn weight_grad_tiled(
    s: &Conv2dShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    map: Option<&(impl Fn(f32) -> f32 + Sync)>,
    k: Isa,
) {
    let (mr, nr) = weight_grad_tile(s, k);
    let (og, kk, groups) = (s.group_out(), s.col_rows(), s.opts.groups);
    let (kpad, opad) = (kk.div_ceil(mr) * mr, og.div_ceil(nr) * nr);
    let part_len = groups * kpad * opad; // dWᵀ of every group, padded
    let ipc = s.batch.div_ceil(WEIGHT_GRAD_CHUNKS).max(1);
    let n_chunks = s.batch.div_ceil(ipc);
    if n_chunks == 0 || s.out_pixels() == 0 {
        dw.fill(0.0);
        return;
    }
    let (taps, segs) = gathered_cols(s, kpad);
    let a_rows = AGathered::new(&segs);
    let mut partials = crate::buffers::take(n_chunks * part_len); // zeroed below
    let parallel = run_parallel(s) && n_chunks > 1;
    for_each_chunk(&mut partials, part_len, parallel, |chunk, part| {
        part.fill(0.0);
        let images = chunk * ipc..((chunk + 1) * ipc).min(s.batch);
        accumulate_chunk(s, (x, dy), images, map, (k, &taps, a_rows), part);
    });
    // Fixed-order reduction, transposing dWᵀ back: chunk 0, + chunk 1, ...
    for (c, part) in partials.chunks_exact(part_len).enumerate() {
        for g in 0..groups {
            let part_g = &part[g * kpad * opad..][..kpad * opad];
            let dw_g = &mut dw[g * og * kk..][..og * kk];
            for (o, dw_o) in dw_g.chunks_exact_mut(kk).enumerate() {
                for (r, d) in dw_o.iter_mut().enumerate() {
                    let v = part_g[r * opad + o];
                    *d = if c == 0 { v } else { *d + v };
                }
            }
        }
    }
    crate::buffers::give(partials);
}

/// Where im2col's matrix lies in a padded copy of the input (see the
/// module doc): row r (tap (c, ki, kj)) at `taps[r]`, the rows past K at
/// the first one (their sums land in rows of dWᵀ that are never read), and
/// output pixel q `segs[q]` further.
fn gathered_cols(s: &Conv2dShape, kpad: usize) -> (Vec<usize>, Vec<usize>) {
    let ((py, px), (sy, sx), (dy, dx)) = (s.opts.padding, s.opts.stride, s.opts.dilation);
    let (hp, wp, ow) = (s.in_h + 2 * py, s.in_w + 2 * px, s.out_w());
    let mut taps = Vec::with_capacity(kpad);
    for ci in 0..s.group_in() {
        for ki in 0..s.kernel_h {
            for kj in 0..s.kernel_w {
                taps.push(ci * hp * wp + ki * dy * wp + kj * dx);
            }
        }
    }
    taps.resize(kpad, taps.first().copied().unwrap_or(0));
    let segs = (0..s.out_pixels())
        .map(|q| (q / ow) * sy * wp + (q % ow) * sx)
        .collect();
    (taps, segs)
}

/// Adds the images `images` into `part`, the chunk's dWᵀ of every group
/// (groups × kpad × opad, as [`weight_grad_tiled`] lays it out).
/// `taps` and `a_rows` place im2col's rows and pixels ([`gathered_cols`]).
fn accumulate_chunk(
    s: &Conv2dShape,
    (x, dy): (&[f32], &[f32]),
    images: std::ops::Range<usize>,
    map: Option<&(impl Fn(f32) -> f32 + Sync)>,
    (k, taps, a_rows): (Isa, &[usize], AGathered),
    part: &mut [f32],
) {
    let (mr, nr) = weight_grad_tile(s, k);
    let (c, hw, o, p) = (
        s.in_channels,
        s.in_h * s.in_w,
        s.out_channels,
        s.out_pixels(),
    );
    let (cg, og, kk) = (s.group_in(), s.group_out(), s.col_rows());
    let (kpad, opad) = (kk.div_ceil(mr) * mr, og.div_ceil(nr) * nr);
    let (hp, wp) = (s.in_h + 2 * s.opts.padding.0, s.in_w + 2 * s.opts.padding.1);
    let mapped_len = if map.is_some() { cg * hw } else { 0 };
    with_scratch(cg * hp * wp + opad * p + mapped_len, |buf| {
        // The padded input (Cg, Hp, Wp), opad/NR panels of (P, NR), and
        // the mapped input (Cg, H, W).
        let (xp, rest) = buf.split_at_mut(cg * hp * wp);
        let (panels, x_mapped) = rest.split_at_mut(opad * p);
        // Channels past O/g stay zero for every image.
        panels.fill(0.0);
        for b in images {
            for g in 0..s.opts.groups {
                let x_bg = &x[(b * c + g * cg) * hw..][..cg * hw]; // (Cg, H, W)
                let x_bg = match map {
                    None => x_bg,
                    Some(f) => {
                        super::backward::map_into(f, x_bg, x_mapped);
                        &*x_mapped
                    }
                };
                pad_into(s, x_bg, xp);
                let dy_bg = &dy[(b * o + g * og) * p..][..og * p]; // (O/g, P)
                pack_transposed(dy_bg, (og, p), 0..p, nr, map, panels);
                let part_g = &mut part[g * kpad * opad..][..kpad * opad];
                for (j, panel) in panels.chunks_exact(p * nr).enumerate() {
                    for i in 0..kpad / mr {
                        let a = a_rows.rows(&taps[i * mr..][..mr]);
                        let out = &mut part_g[i * mr * opad + j * nr..];
                        let (b_rows, start) = (Strided(nr), Start::Out);
                        kernel(k, (mr, nr), p, xp, a, panel, b_rows, start, out, opad);
                    }
                }
            }
        }
    });
}

/// The pixels `qs` of dY_b,g (rows × P) transposed into panels of `nr`
/// rows: `panels[j][(q − qs.start)·nr + l] = map(dy[j·nr + l, q])`. Writes
/// rows < `rows` only (the caller zeroes the padding columns).
fn pack_transposed(
    dy: &[f32],
    (rows, p): (usize, usize),
    qs: std::ops::Range<usize>,
    nr: usize,
    map: Option<&impl Fn(f32) -> f32>,
    panels: &mut [f32],
) {
    let bp = qs.len();
    let f = |v: f32| map.map_or(v, |m| m(v));
    // Eight rows at a time where a panel holds them: each pixel's eight
    // values then go out as one contiguous store, instead of eight stores a
    // panel row apart.
    let whole = if nr.is_multiple_of(8) {
        rows / 8 * 8
    } else {
        0
    };
    for o0 in (0..whole).step_by(8) {
        let src: [&[f32]; 8] = std::array::from_fn(|i| &dy[(o0 + i) * p..][qs.clone()]);
        let panel = &mut panels[(o0 / nr) * bp * nr..][..bp * nr];
        for (q, dst) in panel.chunks_exact_mut(nr).enumerate() {
            let v: [f32; 8] = std::array::from_fn(|i| f(src[i][q]));
            dst[o0 % nr..][..8].copy_from_slice(&v);
        }
    }
    for (o, src) in dy.chunks_exact(p).enumerate().take(rows).skip(whole) {
        let panel = &mut panels[(o / nr) * bp * nr..][..bp * nr];
        for (q, &v) in src[qs.clone()].iter().enumerate() {
            panel[q * nr + o % nr] = f(v);
        }
    }
}

/// Whether [`input_cols_tiled`] can compute this layer's dcols on `k`:
/// whole tiles only, since it reads W and dY in place.
pub(super) fn tiled_input_grad_applies(s: &Conv2dShape, k: Isa) -> bool {
    let (mr, nr) = tile(k);
    let (kk, p) = (s.col_rows(), s.out_pixels());
    kk > 0 && p > 0 && kk.is_multiple_of(mr) && p.is_multiple_of(nr)
}

/// dcols (K, P) = W_gᵀ (K, O/g) · dY_b,g (O/g, P) for one image and group,
/// K and P whole tiles ([`tiled_input_grad_applies`]). OVERWRITES dcols.
pub(super) fn input_cols_tiled(
    w_g: &[f32],
    dy_bg: &[f32],
    (kk, og, p): (usize, usize, usize),
    dcols: &mut [f32],
    k: Isa,
) {
    let (mr, nr) = tile(k);
    let zero = [0f32; 16];
    for i in 0..kk / mr {
        let a = &w_g[i * mr..]; // a[r + l·K] = W[l, i·MR + r]
        for j in 0..p / nr {
            let b = &dy_bg[j * nr..]; // b[l·P + q] = dY[l, j·NR + q]
            let out = &mut dcols[i * mr * p + j * nr..];
            kernel(
                k,
                (mr, nr),
                og,
                a,
                (1, kk),
                b,
                Strided(p),
                Start::Rows(&zero),
                out,
                p,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv_naive::{conv2d_backward_input_naive, conv2d_backward_weight_naive};
    use crate::ops::test_values::values;

    /// On every ISA, against the naive weight gradient: the ResNets'
    /// 32- and 64-channel layers (strided too), channels and rows that are
    /// not whole tiles, groups, and more images than chunks.
    #[test]
    fn tiled_weight_grad_matches_the_oracle() {
        // Input and weight shapes, stride, padding, groups.
        // Input and weight shapes, stride, padding, groups, dilation.
        type Case = ([usize; 4], [usize; 4], usize, usize, usize, usize);
        let cases: [Case; 9] = [
            ([3, 32, 16, 16], [32, 32, 3, 3], 1, 1, 1, 1),
            ([2, 16, 32, 32], [16, 16, 3, 3], 1, 1, 1, 1),
            ([2, 3, 8, 8], [20, 3, 3, 3], 1, 1, 1, 1),
            ([2, 16, 16, 16], [32, 16, 3, 3], 2, 1, 1, 1),
            ([2, 64, 8, 8], [64, 64, 3, 3], 1, 1, 1, 1),
            ([35, 5, 7, 9], [33, 5, 3, 2], 1, 0, 1, 1),
            ([2, 6, 9, 8], [70, 3, 3, 3], 2, 1, 2, 1),
            ([2, 4, 12, 11], [18, 4, 3, 3], 1, 2, 1, 2),
            ([1, 8, 15, 13], [16, 8, 1, 1], 2, 0, 1, 1),
        ];
        for (i, (input, weight, stride, pad, groups, dil)) in cases.into_iter().enumerate() {
            let opts = Conv2dOptions {
                stride: (stride, stride),
                padding: (pad, pad),
                groups,
                dilation: (dil, dil),
            };
            let s = Conv2dShape::new(&input, &weight, opts).unwrap();
            assert!(tiled_weight_grad_applies(&s), "case {i}");
            let x = values(input.iter().product(), 3 + i as u32);
            let dy = values(s.output_shape().iter().product(), 5 + i as u32);
            let mut want = vec![0.0; weight.iter().product()];
            conv2d_backward_weight_naive(&s, &x, &dy, &mut want);
            for k in Isa::available() {
                let mut dw = vec![f32::NAN; want.len()];
                weight_grad_tiled(&s, &x, &dy, &mut dw, None::<&fn(f32) -> f32>, k);
                for (j, (&g, &e)) in dw.iter().zip(&want).enumerate() {
                    let tol = 1e-4 * (1.0 + e.abs());
                    assert!((g - e).abs() <= tol, "case {i} {k:?} dw[{j}]: {g} vs {e}");
                }
            }
        }
    }

    /// On every ISA, against the naive input gradient: the ResNets'
    /// strided layers, with col2im after the tiled dcols.
    #[test]
    fn tiled_input_grad_matches_the_oracle() {
        for (i, (input, weight)) in [
            ([2, 16, 32, 32], [32, 16, 3, 3]),
            ([2, 32, 16, 16], [64, 32, 3, 3]),
            ([3, 16, 16, 16], [32, 16, 1, 1]),
        ]
        .into_iter()
        .enumerate()
        {
            let pad = weight[2] / 2;
            let opts = Conv2dOptions {
                stride: (2, 2),
                padding: (pad, pad),
                ..Conv2dOptions::default()
            };
            let s = Conv2dShape::new(&input, &weight, opts).unwrap();
            let w = values(weight.iter().product(), 3 + i as u32);
            let dy = values(s.output_shape().iter().product(), 5 + i as u32);
            let mut want = vec![0.0; input.iter().product()];
            conv2d_backward_input_naive(&s, &w, &dy, &mut want);
            let (kk, og, p, chw) = (
                s.col_rows(),
                s.group_out(),
                s.out_pixels(),
                want.len() / input[0],
            );
            for k in Isa::available() {
                assert!(tiled_input_grad_applies(&s, k), "case {i} {k:?}");
                let mut dx = vec![f32::NAN; want.len()];
                let mut dcols = vec![f32::NAN; kk * p];
                for (b, dx_b) in dx.chunks_mut(chw).enumerate() {
                    input_cols_tiled(&w, &dy[b * og * p..][..og * p], (kk, og, p), &mut dcols, k);
                    dx_b.fill(0.0);
                    col2im(&Conv2dShape { batch: 1, ..s }, &dcols, dx_b);
                }
                for (j, (&g, &e)) in dx.iter().zip(&want).enumerate() {
                    let tol = 1e-4 * (1.0 + e.abs());
                    assert!((g - e).abs() <= tol, "case {i} {k:?} dx[{j}]: {g} vs {e}");
                }
            }
        }
    }
}

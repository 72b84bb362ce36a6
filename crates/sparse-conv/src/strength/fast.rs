//! The general method: both measures as GEMMs (the default, bitcount, hands
//! over to it wherever bits do not apply).
//!
//! Coactivation. The weight gradient of a convolution is
//! `dW[o,c,j,h] = Σ_b Σ_{y,x} dY[b,o,y,x] · X[b, g·Cg + c, y·s_y + j·d_y − p_y, x·s_x + h·d_x − p_x]`
//! with padded taps contributing 0. Put `dY = [Y > θ]` and `X = [X > θ]` and
//! this is, term for term, the coactivation count. So the whole measure is
//! one call of the engine's im2col + GEMM weight-gradient kernel on
//! binarised activity, [`conv2d_coactivation`], which thresholds x and y as
//! it gathers them (no separate binarising pass, and padded taps stay 0,
//! i.e. inactive). The counts are sums of 0/1 products, exact in f32 below
//! 2^24, so the result does not depend on summation order at all.
//!
//! Correlation. Correlation across the batch is the batch mean of products
//! of z-scores, and the z-score of an input value depends only on the input
//! unit, not on which connection reads it. So we z-score X and Y once; then
//! at output position p the correlations of all connections of group g are
//! one small GEMM, `(O/g, B) · (B, Cg·KH·KW)`: output z-scores at p times the
//! z-scored patch every connection sees at p. The absolute value has to be
//! taken per position, before summing over positions, so (unlike
//! coactivation) the positions cannot be folded into the GEMM's inner
//! dimension: it is a batch of P products.

use super::shared::zscore_over_batch;
use super::Measure;
use rayon::prelude::*;
use tensor::gemm::{gemm, Mat};
use tensor::ops::conv2d::{conv2d_coactivation, PARALLEL_MIN_FLOPS};
use tensor::Conv2dShape;

pub(super) fn accumulate(
    s: &Conv2dShape,
    x: &[f32],
    y: &[f32],
    measure: Measure,
    threshold: f32,
    acc: &mut [f32],
) {
    match measure {
        Measure::Coactivation => coactivation(s, x, y, threshold, acc),
        Measure::Correlation => correlation(s, x, y, acc),
    }
}

/// Coactivation counts: the weight gradient of binarised activity, which
/// the engine computes directly ([`conv2d_coactivation`] binarises while it
/// gathers, so this costs one weight gradient). The counts are added to
/// `acc`; being integers, the sum is exact.
fn coactivation(s: &Conv2dShape, x: &[f32], y: &[f32], threshold: f32, acc: &mut [f32]) {
    let mut counts = vec![0.0f32; acc.len()];
    conv2d_coactivation(s, x, y, threshold, &mut counts);
    for (a, c) in acc.iter_mut().zip(&counts) {
        *a += c;
    }
}

/// The output positions are cut into at most this many contiguous slices,
/// each reduced on one thread into its own partial sums. A constant, not the
/// thread count, so the partials and their in-order sum are the same on any
/// machine.
const MAX_SLICES: usize = 16;

fn correlation(s: &Conv2dShape, x: &[f32], y: &[f32], acc: &mut [f32]) {
    let batch = s.batch;
    if batch < 2 {
        return; // every std is 0, so every correlation is 0
    }
    let zx = zscore_over_batch(x, batch); // (B, C, H, W)
    let zy = zscore_over_batch(y, batch); // (B, O, OH, OW)
    let pixels = s.out_pixels();
    let slices = pixels.min(MAX_SLICES);
    let slice_sums = |i: usize| {
        let positions = i * pixels / slices..(i + 1) * pixels / slices;
        abs_correlation_sums(s, &zx, &zy, positions)
    };
    let partials: Vec<Vec<f64>> = if s.flops() >= PARALLEL_MIN_FLOPS {
        (0..slices).into_par_iter().map(slice_sums).collect()
    } else {
        (0..slices).map(slice_sums).collect()
    };
    // Σ_p |Σ_b zx·zy| / B averaged over the P positions.
    let scale = 1.0 / (batch * pixels) as f64;
    for (k, a) in acc.iter_mut().enumerate() {
        let total: f64 = partials.iter().map(|part| part[k]).sum();
        *a += (total * scale) as f32;
    }
}

/// Σ over the output positions in `positions` of |Σ_b zy·zx| for every
/// connection, weight-shaped (O, Cg·KH·KW).
fn abs_correlation_sums(
    s: &Conv2dShape,
    zx: &[f32],
    zy: &[f32],
    positions: std::ops::Range<usize>,
) -> Vec<f64> {
    let (batch, o_all, pixels) = (s.batch, s.out_channels, s.out_pixels());
    let (og, k) = (s.group_out(), s.col_rows());
    let mut sums = vec![0.0f64; o_all * k];
    let mut patch = vec![0.0f32; batch * k]; // (B, K): what every connection sees
    let mut products = vec![0.0f32; og * k]; // (O/g, K)
    for p in positions {
        let (oy, ox) = (p / s.out_w(), p % s.out_w());
        for g in 0..s.opts.groups {
            gather_patches(s, zx, g, oy, ox, &mut patch);
            // Output z-scores of the group at p, read in place: element
            // (o, b) sits at zy[(b·O + g·Og + o)·P + p].
            let zy_p = Mat {
                data: &zy[g * og * pixels + p..],
                rows: og,
                cols: batch,
                row_stride: pixels,
                col_stride: o_all * pixels,
            };
            gemm(
                1.0,
                zy_p,
                Mat::row_major(&patch, batch, k),
                0.0,
                &mut products,
                k,
            );
            let group_sums = &mut sums[g * og * k..(g + 1) * og * k];
            for (sum, v) in group_sums.iter_mut().zip(&products) {
                *sum += v.abs() as f64;
            }
        }
    }
    sums
}

/// For each image b, the z-scored input patch of group g read by output
/// position (oy, ox), in weight order (c, j, h): `patch[b·K + (c·KH + j)·KW + h]`.
/// Padded taps are 0, the z-score of a constant.
fn gather_patches(s: &Conv2dShape, zx: &[f32], g: usize, oy: usize, ox: usize, patch: &mut [f32]) {
    let (cg, kh, kw) = (s.group_in(), s.kernel_h, s.kernel_w);
    let (h, w) = (s.in_h, s.in_w);
    let k = cg * kh * kw;
    for (b, dst) in patch.chunks_mut(k).enumerate() {
        for c in 0..cg {
            let plane = &zx[(b * s.in_channels + g * cg + c) * h * w..][..h * w];
            for j in 0..kh {
                let row = &mut dst[(c * kh + j) * kw..][..kw];
                let iy =
                    (oy * s.opts.stride.0 + j * s.opts.dilation.0).checked_sub(s.opts.padding.0);
                let Some(iy) = iy.filter(|&iy| iy < h) else {
                    row.fill(0.0);
                    continue;
                };
                for (t, v) in row.iter_mut().enumerate() {
                    let ix = (ox * s.opts.stride.1 + t * s.opts.dilation.1)
                        .checked_sub(s.opts.padding.1);
                    *v = match ix.filter(|&ix| ix < w) {
                        Some(ix) => plane[iy * w + ix],
                        None => 0.0,
                    };
                }
            }
        }
    }
}

//! What the methods share: turning activity into what a measure compares
//! (0/1 for coactivation, z-scores for correlation), and, for the notebook's
//! convolution methods, reducing one connection's "seen map" against the
//! output.

use super::Measure;

/// 1 where `v > threshold`, else 0: a unit's activity for coactivation.
pub(super) fn binarise(v: &[f32], threshold: f32) -> Vec<f32> {
    v.iter()
        .map(|&value| if value > threshold { 1.0 } else { 0.0 })
        .collect()
}

/// Z-scores each column of `v`, a row-major (batch, n) array, over the batch:
/// `(v − mean) / std` with the unbiased std (divide by batch − 1).
///
/// A column whose values are all equal gets all zeros: its std is 0 and the
/// correlation convention says 0. We test equality directly because in
/// floating point the variance of equal values can round to a tiny positive
/// number, which would turn rounding noise into z-scores of ±1. A batch of
/// one is all zeros for the same reason.
///
/// With z-scores, `correlation = Σ_b zx·zy / batch`, which is the measure's
/// definition: the mean of products divides by B, the stds by B − 1.
pub(super) fn zscore_over_batch(v: &[f32], batch: usize) -> Vec<f32> {
    let mut z = vec![0.0f32; v.len()];
    let n = v.len() / batch.max(1);
    if batch < 2 || n == 0 {
        return z;
    }
    let first = &v[..n];
    // Row-major passes over the batch keep the memory access sequential.
    let mut mean = vec![0.0f64; n];
    let mut constant = vec![true; n];
    for row in v.chunks(n) {
        for i in 0..n {
            mean[i] += row[i] as f64;
            constant[i] &= row[i] == first[i];
        }
    }
    for m in &mut mean {
        *m /= batch as f64;
    }
    let mut var = vec![0.0f64; n];
    for row in v.chunks(n) {
        for i in 0..n {
            let d = row[i] as f64 - mean[i];
            var[i] += d * d;
        }
    }
    let inv_std: Vec<f64> = var
        .iter()
        .zip(&constant)
        .map(|(&s, &c)| {
            if c {
                0.0
            } else {
                1.0 / (s / (batch - 1) as f64).sqrt()
            }
        })
        .collect();
    for (zrow, row) in z.chunks_mut(n).zip(v.chunks(n)) {
        for i in 0..n {
            zrow[i] = ((row[i] as f64 - mean[i]) * inv_std[i]) as f32;
        }
    }
    z
}

/// The input the convolution methods convolve: binarised before the
/// convolution pads it, so padded taps are inactive whatever the threshold;
/// raw values for correlation (padding then reads as the value 0).
pub(super) fn seen_input(measure: Measure, x: &[f32], threshold: f32) -> Vec<f32> {
    match measure {
        Measure::Coactivation => binarise(x, threshold),
        Measure::Correlation => x.to_vec(),
    }
}

/// Seen maps or the output, (batch, channels, pixels), made ready for
/// [`connection_strength`]. Seen maps of binarised input are already 0/1, so
/// for coactivation only the output needs binarising.
pub(super) fn activity(
    measure: Measure,
    v: Vec<f32>,
    batch: usize,
    binarise_at: Option<f32>,
) -> Vec<f32> {
    match (measure, binarise_at) {
        (Measure::Coactivation, Some(threshold)) => binarise(&v, threshold),
        (Measure::Coactivation, None) => v,
        (Measure::Correlation, _) => zscore_over_batch(&v, batch),
    }
}

/// A (batch, channels, pixels) stack of maps.
#[derive(Clone, Copy)]
pub(super) struct Maps<'a> {
    pub data: &'a [f32],
    pub channels: usize,
    pub pixels: usize,
}

impl<'a> Maps<'a> {
    /// Channel `ch` of image `b`.
    fn plane(&self, b: usize, ch: usize) -> &'a [f32] {
        &self.data[(b * self.channels + ch) * self.pixels..][..self.pixels]
    }
}

/// One connection's strength, from channel `seen_ch` of the seen maps (the
/// input it sees at every output position) and channel `o` of the output,
/// both prepared by [`activity`]. `sums` is scratch for the per-position
/// sums of correlation.
pub(super) fn connection_strength(
    measure: Measure,
    seen: Maps,
    seen_ch: usize,
    out: Maps,
    o: usize,
    batch: usize,
    sums: &mut Vec<f32>,
) -> f32 {
    match measure {
        Measure::Coactivation => {
            // Products of 0/1 values, counted in f32: exact below 2^24.
            let mut count = 0.0f32;
            for b in 0..batch {
                for (s, y) in seen.plane(b, seen_ch).iter().zip(out.plane(b, o)) {
                    count += s * y;
                }
            }
            count
        }
        Measure::Correlation => {
            if batch == 0 {
                return 0.0;
            }
            sums.clear();
            sums.resize(seen.pixels, 0.0);
            for b in 0..batch {
                for ((sum, s), y) in sums
                    .iter_mut()
                    .zip(seen.plane(b, seen_ch))
                    .zip(out.plane(b, o))
                {
                    *sum += s * y;
                }
            }
            let total: f64 = sums.iter().map(|v| v.abs() as f64).sum();
            (total / (batch * seen.pixels) as f64) as f32
        }
    }
}

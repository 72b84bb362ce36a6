//! Reductions: sum and mean of a whole tensor, and the f64 slice sums of
//! the per-plane reductions (average pooling; batch norm has its own loops
//! in `batch_norm_loops.rs`). Every sum runs in a fixed order, so the
//! result never depends on threads.

use crate::ops::geometry::Conv2dShape;
use crate::ops::scratch::check_len;
use crate::tensor::Tensor;

/// Independent accumulators of the slice sums below: enough to keep the
/// adds from waiting on each other, and a fixed order of combination.
const LANES: usize = 4;

/// Σ f(i) over `len` values in LANES interleaved f64 accumulators, combined
/// as (l0 + l1) + (l2 + l3): a fixed order, whatever the caller.
#[inline(always)]
pub(crate) fn lane_sum(len: usize, f: impl Fn(usize) -> f64) -> f64 {
    let mut acc = [0f64; LANES];
    let full = len / LANES * LANES;
    for i in (0..full).step_by(LANES) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(i + l);
        }
    }
    for (l, i) in (full..len).enumerate() {
        acc[l] += f(i);
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

/// Σ x, in f64.
pub fn sum_f64(x: &[f32]) -> f64 {
    lane_sum(x.len(), |i| x[i] as f64)
}

/// Σ x², in f64.
pub fn sum_squares_f64(x: &[f32]) -> f64 {
    lane_sum(x.len(), |i| {
        let v = x[i] as f64;
        v * v
    })
}

/// Σ d·(x − center), in f64. `d` and `x` have the same length.
pub fn sum_products_f64(d: &[f32], x: &[f32], center: f64) -> f64 {
    assert_eq!(d.len(), x.len(), "sum_products_f64: lengths differ");
    lane_sum(d.len(), |i| d[i] as f64 * (x[i] as f64 - center))
}

/// Sum of `v` with 8 independent accumulators (so the compiler can
/// vectorise), combined in a fixed order.
pub fn sum_lanes(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut it = v.chunks_exact(8);
    for c in &mut it {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += *x;
        }
    }
    let tail: f32 = it.remainder().iter().sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `db[o] = Σ_{b, oy, ox} dy[b, o, oy, ox]`. OVERWRITES db.
/// dy is (B, O, OH, OW), db is (O). Sequential, in a fixed order (b, then
/// the pixels of each (b, o) plane in 8 interleaved lanes): it is a few
/// microseconds of memory traffic, not worth a thread.
pub fn conv2d_backward_bias(s: &Conv2dShape, dy: &[f32], db: &mut [f32]) {
    let op = "conv2d_backward_bias";
    check_len(op, "dy", s.output_shape().iter().product(), dy.len());
    check_len(op, "db", s.out_channels, db.len());
    let (o, p) = (s.out_channels, s.out_pixels());
    db.fill(0.0);
    for b in 0..s.batch {
        for (oo, d) in db.iter_mut().enumerate() {
            *d += sum_lanes(&dy[(b * o + oo) * p..][..p]);
        }
    }
}

impl Tensor {
    pub fn sum(&self) -> Tensor {
        let a = self.clone();
        let s: f32 = self.data().iter().sum();
        Tensor::from_op(vec![s], &[], &[self], move |dout, grads| {
            grads.accumulate(&a, |g| g.iter_mut().for_each(|v| *v += dout[0]));
        })
    }

    pub fn mean(&self) -> Tensor {
        let n = self.numel().max(1) as f32;
        let a = self.clone();
        let s: f32 = self.data().iter().sum::<f32>() / n;
        Tensor::from_op(vec![s], &[], &[self], move |dout, grads| {
            grads.accumulate(&a, |g| g.iter_mut().for_each(|v| *v += dout[0] / n));
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_sums_match_plain_sums() {
        for n in [0, 1, 3, 4, 5, 17] {
            let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 2.0).collect();
            let d: Vec<f32> = (0..n).map(|i| 1.0 - i as f32 * 0.25).collect();
            let plain: f64 = x.iter().map(|&v| v as f64).sum();
            assert!((sum_f64(&x) - plain).abs() < 1e-12);
            let sq: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum();
            assert!((sum_squares_f64(&x) - sq).abs() < 1e-12);
            let pr: f64 = d
                .iter()
                .zip(&x)
                .map(|(&d, &x)| d as f64 * (x as f64 - 0.3))
                .sum();
            assert!((sum_products_f64(&d, &x, 0.3) - pr).abs() < 1e-12);
        }
    }
}

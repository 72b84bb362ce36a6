//! Checks an op's backward against central finite differences.
//!
//! The function under test maps some inputs to an output tensor. We reduce
//! that output to a scalar with a fixed random projection, L = Σ out·R (R
//! random, so no symmetry can hide a wrong sign or a swapped index), then
//! compare ∂L/∂input from `backward` with (L(v+ε) − L(v−ε)) / 2ε for every
//! input element. L is summed in f64 to keep the numeric side's rounding small.
//!
//! The error is relative to the gradient itself, not to an absolute floor
//! of 1: the gradients of small test ops are mostly well below 1, where an
//! absolute floor would let a backward off by several percent pass. Only
//! elements whose gradient is tiny next to the rest of their input's are
//! measured against that input's typical gradient (see [`gradcheck`]).

use crate::rng::Rng;
use crate::tape::no_grad;
use crate::tensor::Tensor;

/// Where analytic and numeric gradients disagree most.
#[derive(Debug, Clone)]
pub struct GradcheckReport {
    /// The largest error, as [`gradcheck`] measures it.
    pub max_error: f32,
    pub worst_input: usize,
    pub worst_index: usize,
    pub analytic: f32,
    pub numeric: f32,
}

/// Below this fraction of an input's typical gradient (its root mean
/// square), an element's error is measured against the typical gradient
/// instead of its own: a near-zero numeric gradient is mostly the finite
/// difference's own noise, and dividing by it would fail any op.
pub const SMALL_FRACTION: f64 = 0.1;

/// Passes when, for every element of every input,
/// |analytic − numeric| / max(|numeric|, `SMALL_FRACTION` · rms) ≤ `tol`,
/// where rms is the root mean square of that input's numeric gradient. So
/// the error is relative, whatever the gradient's scale: a backward off by
/// 1% anywhere fails at `tol` < 0.01 (see the tests). The numeric gradient
/// is the central difference (L(v+ε) − L(v−ε)) / 2ε, with L summed in f64.
/// `inputs` should be leaves marked `requires_grad`; their grads are reset.
pub fn gradcheck(
    f: &dyn Fn(&[Tensor]) -> Tensor,
    inputs: &[Tensor],
    eps: f32,
    tol: f32,
) -> Result<GradcheckReport, String> {
    let out = f(inputs);
    let mut rng = Rng::seed(0x9C);
    let r: Vec<f32> = (0..out.numel()).map(|_| rng.uniform(-1.0, 1.0)).collect();
    for x in inputs {
        x.zero_grad();
    }
    out.mul(&Tensor::from_vec(r.clone(), out.shape()))
        .sum()
        .backward();

    let loss = |inputs: &[Tensor]| -> f64 {
        no_grad(|| f(inputs))
            .data()
            .iter()
            .zip(&r)
            .map(|(&o, &r)| o as f64 * r as f64)
            .sum()
    };
    let mut report = GradcheckReport {
        max_error: 0.0,
        worst_input: 0,
        worst_index: 0,
        analytic: 0.0,
        numeric: 0.0,
    };
    for (i, x) in inputs.iter().enumerate() {
        let grad = x.grad().unwrap_or_else(|| vec![0.0; x.numel()]);
        let numeric: Vec<f64> = (0..grad.len())
            .map(|j| {
                let v = x.data()[j];
                x.data_mut()[j] = v + eps;
                let plus = loss(inputs);
                x.data_mut()[j] = v - eps;
                let minus = loss(inputs);
                x.data_mut()[j] = v;
                (plus - minus) / (2.0 * eps as f64)
            })
            .collect();
        let rms = (numeric.iter().map(|n| n * n).sum::<f64>() / numeric.len().max(1) as f64).sqrt();
        // An input whose gradient is all zero is judged in absolute terms.
        let floor = (SMALL_FRACTION * rms).max(f32::EPSILON as f64);
        for (j, (&analytic, &n)) in grad.iter().zip(&numeric).enumerate() {
            let err = ((analytic as f64 - n).abs() / n.abs().max(floor)) as f32;
            if err > report.max_error || err.is_nan() {
                report = GradcheckReport {
                    max_error: err,
                    worst_input: i,
                    worst_index: j,
                    analytic,
                    numeric: n as f32,
                };
            }
        }
    }
    if report.max_error <= tol {
        Ok(report)
    } else {
        Err(format!(
            "gradcheck failed: input {} element {}: analytic {} vs numeric {} (error {} > tol {tol})",
            report.worst_input, report.worst_index, report.analytic, report.numeric, report.max_error
        ))
    }
}

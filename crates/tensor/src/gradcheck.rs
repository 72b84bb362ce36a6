//! Checks an op's backward against central finite differences.
//!
//! The function under test maps some inputs to an output tensor. We reduce
//! that output to a scalar with a fixed random projection, L = Σ out·R (R
//! random, so no symmetry can hide a wrong sign or a swapped index), then
//! compare ∂L/∂input from `backward` with (L(v+ε) − L(v−ε)) / 2ε for every
//! input element. L is summed in f64 to keep the numeric side's rounding small.

use crate::rng::Rng;
use crate::tape::no_grad;
use crate::tensor::Tensor;

/// Where analytic and numeric gradients disagree most.
#[derive(Debug, Clone)]
pub struct GradcheckReport {
    pub max_error: f32,
    pub worst_input: usize,
    pub worst_index: usize,
    pub analytic: f32,
    pub numeric: f32,
}

/// Passes when every |analytic − numeric| / max(1, |numeric|) ≤ `tol`.
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
        for (j, &analytic) in grad.iter().enumerate() {
            let v = x.data()[j];
            x.data_mut()[j] = v + eps;
            let plus = loss(inputs);
            x.data_mut()[j] = v - eps;
            let minus = loss(inputs);
            x.data_mut()[j] = v;
            let numeric = ((plus - minus) / (2.0 * eps as f64)) as f32;
            let err = (analytic - numeric).abs() / numeric.abs().max(1.0);
            if err > report.max_error || err.is_nan() {
                report = GradcheckReport {
                    max_error: err,
                    worst_input: i,
                    worst_index: j,
                    analytic,
                    numeric,
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

//! Batch normalisation of (B, C, H, W) images, per channel, with the
//! semantics of PyTorch's `BatchNorm2d`.
//!
//! ```text
//! training    N = B·H·W values per channel c
//!             mean_c = Σ x / N        var_c = Σ (x − mean_c)² / N     (biased)
//!             y = (x − mean_c) · invstd_c · γ_c + β_c,   invstd_c = 1/√(var_c + eps)
//!             running_mean_c ← (1 − m)·running_mean_c + m·mean_c
//!             running_var_c  ← (1 − m)·running_var_c  + m·var_c·N/(N − 1)  (unbiased)
//! evaluation  the same y with running_mean and running_var in place of the
//!             batch's; nothing is updated
//! ```
//!
//! Backward, with x̂ = (x − mean)·invstd (the batch's statistics in
//! training, the running ones in evaluation):
//!
//! ```text
//! dβ_c = Σ dy        dγ_c = Σ dy·x̂
//! training    dx = γ·invstd · (dy − dβ/N − x̂·dγ/N)   (mean and var depend on x)
//! evaluation  dx = γ·invstd · dy                      (they are constants)
//! ```
//!
//! Every sum over a channel is taken plane by plane (one image's H·W values,
//! in f64 lanes of a fixed order, `batch_norm_loops.rs`), and the planes'
//! sums are added in image order, so the result does not depend on how
//! rayon splits the planes, nor on the instruction set. The
//! variance comes from Σx and Σx² in f64, which holds ample precision for
//! activations (whose mean is not millions of standard deviations from 0).
//!
//! [`Tensor::batch_norm2d_relu`] is the same op followed by ReLU in the
//! same pass (a conv → batch norm → ReLU block writes one tensor, not two);
//! its backward takes ReLU's mask from its own output (y > 0 exactly where
//! the batch norm's output is), inside the two passes of the batch norm's.
//!
//! [`batch_norm2d_naive`] and [`batch_norm2d_backward_naive`] are the
//! definitions written out in f64, kept as the test oracles.

use rayon::prelude::*;

use crate::isa::Isa;
use crate::ops::batch_norm_loops::{input_grad_plane, scale_shift_plane, sums_grad, sums_x_x2};
use crate::tensor::Tensor;

/// Below this many values, one thread does the whole op.
const PARALLEL_MIN_VALUES: usize = 1 << 14;

/// Whether the layer normalises by the batch or by its running statistics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BatchNormMode {
    /// Batch statistics; the running statistics move by `momentum`.
    Train { momentum: f32 },
    /// Running statistics; nothing changes.
    Eval,
}

/// One value per (image, channel) plane of `x` (B·C planes of `hw` values),
/// in plane order, computed in parallel when there is enough work.
fn per_plane<T: Send>(x: &[f32], hw: usize, f: impl Fn(usize, &[f32]) -> T + Sync) -> Vec<T> {
    if x.len() >= PARALLEL_MIN_VALUES {
        x.par_chunks(hw).enumerate().map(|(p, v)| f(p, v)).collect()
    } else {
        x.chunks(hw).enumerate().map(|(p, v)| f(p, v)).collect()
    }
}

/// Adds the planes' values channel by channel, in image order.
fn channel_totals(planes: &[f64], c: usize) -> Vec<f64> {
    let mut t = vec![0.0; c];
    for image in planes.chunks(c) {
        for (t, v) in t.iter_mut().zip(image) {
            *t += v;
        }
    }
    t
}

/// The batch's mean and biased variance per channel, in f64.
/// x is (B, C, H·W) flattened; `c` channels of `hw` values.
pub fn batch_stats(x: &[f32], c: usize, hw: usize) -> (Vec<f64>, Vec<f64>) {
    let n = (x.len() / (c * hw).max(1) * hw) as f64;
    // Σx and Σx² in one pass, each in a fixed lane order.
    let k = Isa::best();
    let sums = per_plane(x, hw, |_, p| sums_x_x2(p, k));
    let s = channel_totals(&sums.iter().map(|v| v.0).collect::<Vec<_>>(), c);
    let q = channel_totals(&sums.iter().map(|v| v.1).collect::<Vec<_>>(), c);
    let mean: Vec<f64> = s.iter().map(|s| s / n).collect();
    let var = q
        .iter()
        .zip(&mean)
        .map(|(q, m)| (q / n - m * m).max(0.0))
        .collect();
    (mean, var)
}

/// y = x·scale_c + shift_c, plane by plane, then relu if `RELU`.
/// OVERWRITES y.
fn scale_shift<const RELU: bool>(
    x: &[f32],
    hw: usize,
    scale: &[f32],
    shift: &[f32],
    y: &mut [f32],
) {
    let (c, k) = (scale.len(), Isa::best());
    let plane = |(p, (yp, xp)): (usize, (&mut [f32], &[f32]))| {
        scale_shift_plane(xp, scale[p % c], shift[p % c], RELU, yp, k);
    };
    if x.len() >= PARALLEL_MIN_VALUES {
        y.par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each(plane);
    } else {
        y.chunks_mut(hw)
            .zip(x.chunks(hw))
            .enumerate()
            .for_each(plane);
    }
}

/// What the backward pass needs from the forward: per channel, the mean
/// and 1/√(var + eps) that normalised x.
pub struct BatchNormSaved {
    mean: Vec<f64>,
    invstd: Vec<f64>,
    training: bool,
}

/// The forward pass on slices. x and y are (B, C, H·W); `weight`, `bias`,
/// `running_mean`, `running_var` have C values. Returns the statistics the
/// backward pass needs; in training mode, also updates the running ones.
/// With `RELU`, y is relu of the batch norm. OVERWRITES y.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm2d_forward<const RELU: bool>(
    x: &[f32],
    (c, hw): (usize, usize),
    weight: &[f32],
    bias: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    mode: BatchNormMode,
    eps: f32,
    y: &mut [f32],
) -> BatchNormSaved {
    let (mean, var, training) = match mode {
        BatchNormMode::Train { momentum } => {
            let (mean, var) = batch_stats(x, c, hw);
            let n = (x.len() / c) as f64;
            let (m, n1) = (momentum as f64, n / (n - 1.0));
            for ch in 0..c {
                running_mean[ch] = ((1.0 - m) * running_mean[ch] as f64 + m * mean[ch]) as f32;
                running_var[ch] = ((1.0 - m) * running_var[ch] as f64 + m * var[ch] * n1) as f32;
            }
            (mean, var, true)
        }
        BatchNormMode::Eval => (
            running_mean.iter().map(|&v| v as f64).collect(),
            running_var.iter().map(|&v| v as f64).collect(),
            false,
        ),
    };
    let (invstd, scale, shift) = affine(&mean, &var, weight, bias, eps);
    scale_shift::<RELU>(x, hw, &scale, &shift, y);
    BatchNormSaved {
        mean,
        invstd,
        training,
    }
}

/// y = (x − mean)·invstd·γ + β as y = x·scale + shift per channel: returns
/// (invstd, scale, shift).
fn affine(
    mean: &[f64],
    var: &[f64],
    weight: &[f32],
    bias: &[f32],
    eps: f32,
) -> (Vec<f64>, Vec<f32>, Vec<f32>) {
    let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps as f64).sqrt()).collect();
    let scale = (0..mean.len())
        .map(|i| (invstd[i] * weight[i] as f64) as f32)
        .collect();
    let shift = (0..mean.len())
        .map(|i| (bias[i] as f64 - mean[i] * invstd[i] * weight[i] as f64) as f32)
        .collect();
    (invstd, scale, shift)
}

/// Evaluation's batch norm as y = x·scale + shift per channel: the
/// (scale, shift) that [`batch_norm2d_forward`] applies in evaluation mode,
/// for a convolution to apply to its own output ([`crate::ops::epilogue`]).
pub fn batch_norm2d_eval_affine(
    weight: &[f32],
    bias: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    eps: f32,
) -> (Vec<f32>, Vec<f32>) {
    let mean: Vec<f64> = running_mean.iter().map(|&v| v as f64).collect();
    let var: Vec<f64> = running_var.iter().map(|&v| v as f64).collect();
    let (_, scale, shift) = affine(&mean, &var, weight, bias, eps);
    (scale, shift)
}

/// The backward pass on slices: returns (dx, dγ, dβ). With `relu_out`
/// (the op's own output y = relu(batch norm)), the gradient reaching the
/// batch norm is relu_grad(y, dy), taken on the fly. dx is a fresh buffer
/// written whole.
pub fn batch_norm2d_backward(
    x: &[f32],
    dy: &[f32],
    relu_out: Option<&[f32]>,
    (c, hw): (usize, usize),
    weight: &[f32],
    saved: &BatchNormSaved,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = (x.len() / c) as f64;
    // Σ g and Σ g·(x − mean) per plane, in one pass and a fixed lane
    // order; g is the gradient at the batch norm's output.
    let k = Isa::best();
    let sums = per_plane(dy, hw, |p, d| {
        let (xp, mean) = (&x[p * hw..(p + 1) * hw], saved.mean[p % c]);
        let yp = relu_out.map(|y| &y[p * hw..(p + 1) * hw]);
        sums_grad(d, xp, yp, mean, k)
    });
    // Σ dy and Σ dy·(x − mean) per channel.
    let sd = channel_totals(&sums.iter().map(|v| v.0).collect::<Vec<_>>(), c);
    let sdx = channel_totals(&sums.iter().map(|v| v.1).collect::<Vec<_>>(), c);
    let dgamma: Vec<f32> = (0..c).map(|i| (sdx[i] * saved.invstd[i]) as f32).collect();
    let dbeta: Vec<f32> = sd.iter().map(|&v| v as f32).collect();
    // dx = a·dy − k·x + b per channel, with a = γ·invstd and, in training,
    // k = a·invstd²·Σdy(x − mean)/N, b = k·mean − a·Σdy/N.
    let mut a = vec![0f32; c];
    let mut k = vec![0f32; c];
    let mut b = vec![0f32; c];
    for i in 0..c {
        let ai = weight[i] as f64 * saved.invstd[i];
        a[i] = ai as f32;
        if saved.training {
            let ki = ai * saved.invstd[i] * saved.invstd[i] * sdx[i] / n;
            k[i] = ki as f32;
            b[i] = (ki * saved.mean[i] - ai * sd[i] / n) as f32;
        }
    }
    let mut dx = crate::buffers::take(x.len()); // overwritten whole
    let isa = Isa::best();
    let plane = |(p, dxp): (usize, &mut [f32])| {
        let coef = (a[p % c], k[p % c], b[p % c]);
        let (xp, dp) = (&x[p * hw..(p + 1) * hw], &dy[p * hw..(p + 1) * hw]);
        let yp = relu_out.map(|y| &y[p * hw..(p + 1) * hw]);
        input_grad_plane(dp, xp, yp, coef, dxp, isa);
    };
    if x.len() >= PARALLEL_MIN_VALUES {
        dx.par_chunks_mut(hw).enumerate().for_each(plane);
    } else {
        dx.chunks_mut(hw).enumerate().for_each(plane);
    }
    (dx, dgamma, dbeta)
}

/// The forward pass written out in f64, as the test oracle: returns y and
/// the updated running statistics.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm2d_naive(
    x: &[f32],
    shape: [usize; 4],
    weight: &[f32],
    bias: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    mode: BatchNormMode,
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let [nb, c, h, w] = shape;
    let at = |b: usize, ch: usize, i: usize| x[(b * c + ch) * h * w + i] as f64;
    let n = (nb * h * w) as f64;
    let mut y = vec![0f32; x.len()];
    let (mut rm, mut rv) = (running_mean.to_vec(), running_var.to_vec());
    for ch in 0..c {
        let values = || (0..nb).flat_map(move |b| (0..h * w).map(move |i| at(b, ch, i)));
        let (mean, var) = match mode {
            BatchNormMode::Train { momentum } => {
                let mean = values().sum::<f64>() / n;
                let var = values().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
                let m = momentum as f64;
                rm[ch] = ((1.0 - m) * rm[ch] as f64 + m * mean) as f32;
                rv[ch] = ((1.0 - m) * rv[ch] as f64 + m * var * n / (n - 1.0)) as f32;
                (mean, var)
            }
            BatchNormMode::Eval => (running_mean[ch] as f64, running_var[ch] as f64),
        };
        let invstd = 1.0 / (var + eps as f64).sqrt();
        for b in 0..nb {
            for i in 0..h * w {
                let v = (at(b, ch, i) - mean) * invstd * weight[ch] as f64 + bias[ch] as f64;
                y[(b * c + ch) * h * w + i] = v as f32;
            }
        }
    }
    (y, rm, rv)
}

/// The training-mode backward pass written out in f64, term by term, as
/// the test oracle: returns (dx, dγ, dβ).
pub fn batch_norm2d_backward_naive(
    x: &[f32],
    dy: &[f32],
    shape: [usize; 4],
    weight: &[f32],
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let [nb, c, h, w] = shape;
    let n = (nb * h * w) as f64;
    let idx = |b: usize, ch: usize, i: usize| (b * c + ch) * h * w + i;
    let (mut dx, mut dgamma, mut dbeta) = (vec![0f32; x.len()], vec![0f32; c], vec![0f32; c]);
    for ch in 0..c {
        let all: Vec<usize> = (0..nb)
            .flat_map(|b| (0..h * w).map(move |i| idx(b, ch, i)))
            .collect();
        let mean = all.iter().map(|&j| x[j] as f64).sum::<f64>() / n;
        let var = all
            .iter()
            .map(|&j| (x[j] as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        let invstd = 1.0 / (var + eps as f64).sqrt();
        let xhat = |j: usize| (x[j] as f64 - mean) * invstd;
        let sum_dy: f64 = all.iter().map(|&j| dy[j] as f64).sum();
        let sum_dy_xhat: f64 = all.iter().map(|&j| dy[j] as f64 * xhat(j)).sum();
        dbeta[ch] = sum_dy as f32;
        dgamma[ch] = sum_dy_xhat as f32;
        for &j in &all {
            let g = weight[ch] as f64
                * invstd
                * (dy[j] as f64 - sum_dy / n - xhat(j) * sum_dy_xhat / n);
            dx[j] = g as f32;
        }
    }
    (dx, dgamma, dbeta)
}

impl Tensor {
    /// Batch normalisation of a (B, C, H, W) tensor by channel (PyTorch's
    /// `F.batch_norm`): `weight` γ and `bias` β are (C) parameters;
    /// `running_mean` and `running_var` are (C) buffers, updated in place
    /// in training mode. Panics if a channel has fewer than 2 values in
    /// training mode (the unbiased variance needs 2, as PyTorch says).
    pub fn batch_norm2d(
        &self,
        weight: &Tensor,
        bias: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        mode: BatchNormMode,
        eps: f32,
    ) -> Tensor {
        self.batch_norm2d_op::<false>(weight, bias, running_mean, running_var, mode, eps)
    }

    /// `batch_norm2d(…).relu()` as one op: the same values and gradients,
    /// bit for bit, in fewer passes over memory.
    pub fn batch_norm2d_relu(
        &self,
        weight: &Tensor,
        bias: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        mode: BatchNormMode,
        eps: f32,
    ) -> Tensor {
        self.batch_norm2d_op::<true>(weight, bias, running_mean, running_var, mode, eps)
    }

    fn batch_norm2d_op<const RELU: bool>(
        &self,
        weight: &Tensor,
        bias: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        mode: BatchNormMode,
        eps: f32,
    ) -> Tensor {
        let s = self.shape().to_vec();
        assert!(
            s.len() == 4
                && [weight, bias, running_mean, running_var]
                    .iter()
                    .all(|t| t.shape() == [s[1]]),
            "batch_norm2d: input {s:?} needs (B, C, H, W) and weight, bias and running statistics of shape (C); got {:?}, {:?}, {:?}, {:?}",
            weight.shape(),
            bias.shape(),
            running_mean.shape(),
            running_var.shape()
        );
        let (c, hw) = (s[1], s[2] * s[3]);
        if let BatchNormMode::Train { .. } = mode {
            assert!(
                s[0] * hw > 1,
                "batch_norm2d: expected more than 1 value per channel when training, got input {s:?}"
            );
        }
        let mut y = crate::buffers::take(self.numel()); // overwritten whole
        let saved = batch_norm2d_forward::<RELU>(
            &self.data(),
            (c, hw),
            &weight.data(),
            &bias.data(),
            &mut running_mean.data_mut(),
            &mut running_var.data_mut(),
            mode,
            eps,
            &mut y,
        );
        let (x, w, b) = (self.clone(), weight.clone(), bias.clone());
        Tensor::from_op_with_output(y, &s, &[self, weight, bias], move |y, dout, grads| {
            let y = RELU.then(|| y.data());
            let relu_out = y.as_deref().map(|v| &v[..]);
            let (dx, dgamma, dbeta) =
                batch_norm2d_backward(&x.data(), dout, relu_out, (c, hw), &w.data(), &saved);
            grads.add_owned(&x, dx);
            grads.add(&w, &dgamma);
            grads.add(&b, &dbeta);
        })
    }
}

//! Layers with parameters (Conv2d, Linear, BatchNorm2d) and MaxPool2d,
//! initialised as PyTorch initialises them, from a seeded generator.
//!
//! Two weight initialisations ([`Init`]): PyTorch's default for Conv2d and
//! Linear (uniform, bound 1/√fan_in), and the Kaiming-normal one that the
//! CIFAR ResNets use (normal, standard deviation √2/√fan_in).

use crate::ops::batch_norm::BatchNormMode;
use crate::ops::conv2d::{Conv2dOptions, PoolOptions};
use crate::ops::epilogue::BatchNormEval;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// PyTorch's `kaiming_uniform_(w, a)` bound: gain·√(3 / fan_in) with
/// gain = √(2 / (1 + a²)). For a = √5, PyTorch's default for conv and linear
/// weights, this is 1/√fan_in.
pub fn kaiming_uniform_bound(fan_in: usize, a: f32) -> f32 {
    let gain = (2.0 / (1.0 + a * a)).sqrt();
    gain * (3.0 / fan_in as f32).sqrt()
}

/// The `a` PyTorch uses for the default initialisation of Conv2d and Linear.
pub const DEFAULT_KAIMING_A: f32 = 2.236_068; // √5

/// How a layer's weight is drawn. A bias, if any, is always PyTorch's
/// default: uniform in ±1/√fan_in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// PyTorch's default for Conv2d and Linear: uniform in
    /// ±kaiming_uniform_bound(fan_in, √5) = ±1/√fan_in.
    Default,
    /// `torch.nn.init.kaiming_normal_(w)` (mode fan_in, ReLU gain √2):
    /// normal with standard deviation √2/√fan_in. The CIFAR ResNets use it.
    KaimingNormal,
}

impl Init {
    /// One weight value for a unit with `fan_in` inputs.
    pub fn draw(self, fan_in: usize, rng: &mut Rng) -> f32 {
        match self {
            Init::Default => {
                let b = kaiming_uniform_bound(fan_in, DEFAULT_KAIMING_A);
                rng.uniform(-b, b)
            }
            Init::KaimingNormal => kaiming_normal_std(fan_in) * rng.normal(),
        }
    }
}

/// The standard deviation of PyTorch's `kaiming_normal_` with its defaults
/// (fan_in, gain √2 for ReLU): √2/√fan_in.
pub fn kaiming_normal_std(fan_in: usize) -> f32 {
    (2.0 / fan_in as f32).sqrt()
}

/// Weights by `init`, then a bias uniform in ±1/√fan_in: the order and the
/// bounds of PyTorch's `reset_parameters` (followed, for Kaiming-normal,
/// by the model's own re-initialisation of the weight).
fn init_layer(
    weight_shape: &[usize],
    fan_in: usize,
    bias: bool,
    init: Init,
    rng: &mut Rng,
) -> (Tensor, Option<Tensor>) {
    let n = weight_shape.iter().product();
    let w = (0..n).map(|_| init.draw(fan_in, rng)).collect();
    let weight = Tensor::from_vec(w, weight_shape).requires_grad();
    let bias = bias.then(|| {
        let bb = 1.0 / (fan_in as f32).sqrt();
        Tensor::uniform(&[weight_shape[0]], -bb, bb, rng).requires_grad()
    });
    (weight, bias)
}

/// A 2-D convolution layer: weight (O, C/groups, KH, KW), optional bias (O).
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub opts: Conv2dOptions,
}

impl Conv2d {
    /// PyTorch's default initialisation.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        opts: Conv2dOptions,
        bias: bool,
        rng: &mut Rng,
    ) -> Conv2d {
        Conv2d::with_init(
            in_channels,
            out_channels,
            kernel,
            opts,
            bias,
            Init::Default,
            rng,
        )
    }

    pub fn with_init(
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        opts: Conv2dOptions,
        bias: bool,
        init: Init,
        rng: &mut Rng,
    ) -> Conv2d {
        assert!(
            opts.groups > 0
                && in_channels.is_multiple_of(opts.groups)
                && out_channels.is_multiple_of(opts.groups),
            "Conv2d: {in_channels} in and {out_channels} out channels do not divide into {} groups",
            opts.groups
        );
        let cg = in_channels / opts.groups;
        let fan_in = cg * kernel.0 * kernel.1;
        let (weight, bias) = init_layer(
            &[out_channels, cg, kernel.0, kernel.1],
            fan_in,
            bias,
            init,
            rng,
        );
        Conv2d { weight, bias, opts }
    }

    /// Inputs per output unit: C/groups · KH · KW.
    pub fn fan_in(&self) -> usize {
        self.weight.shape()[1..].iter().product()
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(&self.weight, self.bias.as_ref(), self.opts)
    }

    /// `pool.forward(&self.forward(x).relu())` as one fused op
    /// ([`Tensor::conv2d_relu_max_pool2d`]): bitwise the same output and
    /// gradients (a narrow layer's bias gradient to rounding), with less
    /// memory traffic.
    pub fn forward_relu_pool(&self, x: &Tensor, pool: &MaxPool2d) -> Tensor {
        x.conv2d_relu_max_pool2d(
            &self.weight,
            self.bias.as_ref(),
            self.opts,
            PoolOptions {
                kernel: pool.kernel,
                stride: pool.stride,
            },
        )
    }

    pub fn parameters(&self) -> Vec<Tensor> {
        std::iter::once(self.weight.clone())
            .chain(self.bias.clone())
            .collect()
    }
}

/// y = x·Wᵀ + b with W (out, in).
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// PyTorch's default initialisation.
    pub fn new(in_features: usize, out_features: usize, bias: bool, rng: &mut Rng) -> Linear {
        Linear::with_init(in_features, out_features, bias, Init::Default, rng)
    }

    pub fn with_init(
        in_features: usize,
        out_features: usize,
        bias: bool,
        init: Init,
        rng: &mut Rng,
    ) -> Linear {
        let shape = [out_features, in_features];
        let (weight, bias) = init_layer(&shape, in_features, bias, init, rng);
        Linear { weight, bias }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }

    pub fn parameters(&self) -> Vec<Tensor> {
        std::iter::once(self.weight.clone())
            .chain(self.bias.clone())
            .collect()
    }
}

/// Batch normalisation over channels, PyTorch's `BatchNorm2d(C)`: weight
/// γ = 1 and bias β = 0 (parameters), running mean 0 and running variance
/// 1 (buffers), momentum 0.1, eps 1e-5. In training mode it normalises by
/// the batch and moves the running statistics; in evaluation mode it
/// normalises by the running statistics (see [`crate::ops::batch_norm`]).
pub struct BatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    /// Training batches seen, PyTorch's `num_batches_tracked` (a count kept
    /// for checkpoints; with a fixed momentum nothing reads it).
    pub num_batches_tracked: Tensor,
    pub momentum: f32,
    pub eps: f32,
    pub training: bool,
}

impl BatchNorm2d {
    pub fn new(channels: usize) -> BatchNorm2d {
        BatchNorm2d {
            weight: Tensor::full(&[channels], 1.0).requires_grad(),
            bias: Tensor::zeros(&[channels]).requires_grad(),
            running_mean: Tensor::zeros(&[channels]),
            running_var: Tensor::full(&[channels], 1.0),
            num_batches_tracked: Tensor::zeros(&[]),
            momentum: 0.1,
            eps: 1e-5,
            training: true,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mode = self.mode();
        let (w, b, m, v) = (
            &self.weight,
            &self.bias,
            &self.running_mean,
            &self.running_var,
        );
        x.batch_norm2d(w, b, m, v, mode, self.eps)
    }

    /// `forward(x).relu()` as one op ([`Tensor::batch_norm2d_relu`]).
    pub fn forward_relu(&self, x: &Tensor) -> Tensor {
        let mode = self.mode();
        let (w, b, m, v) = (
            &self.weight,
            &self.bias,
            &self.running_mean,
            &self.running_var,
        );
        x.batch_norm2d_relu(w, b, m, v, mode, self.eps)
    }

    /// Evaluation's batch norm as a per-channel scale and shift, for a
    /// convolution to apply to its own output
    /// ([`Tensor::conv2d_then`]): the running statistics, whatever the mode.
    pub fn eval_affine(&self) -> BatchNormEval {
        let (w, b, m, v) = (
            &self.weight,
            &self.bias,
            &self.running_mean,
            &self.running_var,
        );
        BatchNormEval::new(w, b, m, v, self.eps)
    }

    /// This pass's mode; a training pass counts itself.
    fn mode(&self) -> BatchNormMode {
        if self.training {
            self.num_batches_tracked.data_mut()[0] += 1.0;
            BatchNormMode::Train {
                momentum: self.momentum,
            }
        } else {
            BatchNormMode::Eval
        }
    }

    pub fn parameters(&self) -> Vec<Tensor> {
        vec![self.weight.clone(), self.bias.clone()]
    }

    /// The buffers in PyTorch's order: running mean, running variance,
    /// batches tracked.
    pub fn buffers(&self) -> Vec<Tensor> {
        vec![
            self.running_mean.clone(),
            self.running_var.clone(),
            self.num_batches_tracked.clone(),
        ]
    }
}

/// Max pooling with a window and a stride, no padding.
#[derive(Clone, Copy, Debug)]
pub struct MaxPool2d {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
}

impl MaxPool2d {
    /// PyTorch's `MaxPool2d(k)`: a k×k window moved by k.
    pub fn new(k: usize) -> MaxPool2d {
        MaxPool2d {
            kernel: (k, k),
            stride: (k, k),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.max_pool2d(self.kernel, self.stride)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kaiming_bound_matches_pytorch_formula() {
        // a = √5: gain = √(2/6), bound = √(1/3)·√(3/75) = 1/√75.
        assert!((kaiming_uniform_bound(75, DEFAULT_KAIMING_A) - 1.0 / 75f32.sqrt()).abs() < 1e-6);
        // a = 0 (PyTorch's kaiming_uniform_ default): √(6/fan_in).
        assert!((kaiming_uniform_bound(24, 0.0) - 0.5).abs() < 1e-6);
    }

    #[test]
    fn conv_init_stays_in_bounds_and_is_seeded() {
        let c = Conv2d::new(
            6,
            16,
            (5, 5),
            Conv2dOptions::default(),
            true,
            &mut Rng::seed(3),
        );
        let bound = 1.0 / 150f32.sqrt();
        assert_eq!(c.weight.shape(), [16, 6, 5, 5]);
        assert!(c.weight.data().iter().all(|v| v.abs() <= bound));
        let spread = c.weight.data().iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(
            spread > 0.9 * bound,
            "weights should fill the range, max |w| = {spread}"
        );
        let again = Conv2d::new(
            6,
            16,
            (5, 5),
            Conv2dOptions::default(),
            true,
            &mut Rng::seed(3),
        );
        assert_eq!(c.weight.to_vec(), again.weight.to_vec());
        assert!(c.bias.unwrap().data().iter().all(|v| v.abs() <= bound));
    }
}

//! Layers with parameters (Conv2d, Linear) and MaxPool2d, initialised as
//! PyTorch initialises them, from a seeded generator.

use crate::ops::conv2d::{Conv2dOptions, PoolOptions};
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

/// Weights uniform in ±kaiming_uniform_bound(fan_in, √5), then a bias uniform in
/// ±1/√fan_in: the order and the bounds of PyTorch's `reset_parameters`.
fn default_init(
    weight_shape: &[usize],
    fan_in: usize,
    bias: bool,
    rng: &mut Rng,
) -> (Tensor, Option<Tensor>) {
    let wb = kaiming_uniform_bound(fan_in, DEFAULT_KAIMING_A);
    let weight = Tensor::uniform(weight_shape, -wb, wb, rng).requires_grad();
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
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        opts: Conv2dOptions,
        bias: bool,
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
        let (weight, bias) =
            default_init(&[out_channels, cg, kernel.0, kernel.1], fan_in, bias, rng);
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
    pub fn new(in_features: usize, out_features: usize, bias: bool, rng: &mut Rng) -> Linear {
        let (weight, bias) = default_init(&[out_features, in_features], in_features, bias, rng);
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

//! The pieces of a residual block that are not convolutions: the add of the
//! shortcut followed by ReLU, and He et al.'s parameter-free shortcut for a
//! block that halves the map and widens the channels (their CIFAR "option
//! A").
//!
//! ```text
//! add_relu       y = relu(a + b)                   a, b, y: (B, C, H, W)
//!                da = db = dy where y > 0, else 0
//! shortcut_pad   y[b, p + c, i, j] = x[b, c, s·i, s·j]   for c < C
//!                y[b, k, i, j] = 0                 for the p channels each side
//!                x: (B, C, H, W), y: (B, C + 2p, ⌈H/s⌉, ⌈W/s⌉)
//!                dx[b, c, s·i, s·j] = dy[b, p + c, i, j], 0 elsewhere
//! ```
//!
//! `shortcut_pad` is PyTorch's `F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, p, p))`.
//! Both ops compute each image on its own, so they split over images
//! without changing a bit.

use rayon::prelude::*;

use crate::ops::elementwise::{relu, relu_grad};
use crate::tensor::Tensor;

/// Below this many values, one thread does the whole op.
const PARALLEL_MIN_VALUES: usize = 1 << 15;

/// Runs `f(chunk index, out chunk)` over `out` in chunks of `chunk` values,
/// on the pool when there is enough work.
fn for_chunks(out: &mut [f32], chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let chunk = chunk.max(1);
    if out.len() >= PARALLEL_MIN_VALUES {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, o)| f(i, o));
    } else {
        out.chunks_mut(chunk).enumerate().for_each(|(i, o)| f(i, o));
    }
}

/// y = relu(a + b) on slices of one length. OVERWRITES y.
pub fn add_relu_forward(a: &[f32], b: &[f32], y: &mut [f32]) {
    assert!(
        a.len() == b.len() && a.len() == y.len(),
        "add_relu: lengths"
    );
    const CHUNK: usize = 1 << 12;
    for_chunks(y, CHUNK, |i, yc| {
        let (ac, bc) = (&a[i * CHUNK..][..yc.len()], &b[i * CHUNK..][..yc.len()]);
        for ((y, &a), &b) in yc.iter_mut().zip(ac).zip(bc) {
            *y = relu(a + b);
        }
    });
}

/// dx = dy where y > 0, else 0: the gradient reaching both addends.
/// OVERWRITES dx.
pub fn add_relu_backward(y: &[f32], dy: &[f32], dx: &mut [f32]) {
    assert!(
        y.len() == dy.len() && y.len() == dx.len(),
        "add_relu: lengths"
    );
    const CHUNK: usize = 1 << 12;
    for_chunks(dx, CHUNK, |i, gc| {
        let (yc, dc) = (&y[i * CHUNK..][..gc.len()], &dy[i * CHUNK..][..gc.len()]);
        for ((g, &y), &d) in gc.iter_mut().zip(yc).zip(dc) {
            *g = relu_grad(y, d);
        }
    });
}

/// The geometry of [`Tensor::shortcut_pad`]: input (B, C, H, W), stride s,
/// p zero channels on each side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PadShortcut {
    pub batch: usize,
    pub channels: usize,
    pub in_hw: (usize, usize),
    pub stride: usize,
    pub pad: usize,
}

impl PadShortcut {
    pub fn out_hw(&self) -> (usize, usize) {
        (
            self.in_hw.0.div_ceil(self.stride),
            self.in_hw.1.div_ceil(self.stride),
        )
    }
    pub fn out_channels(&self) -> usize {
        self.channels + 2 * self.pad
    }
    pub fn out_shape(&self) -> [usize; 4] {
        let (oh, ow) = self.out_hw();
        [self.batch, self.out_channels(), oh, ow]
    }
}

/// Subsample, then pad channels. OVERWRITES y.
pub fn shortcut_pad_forward(g: &PadShortcut, x: &[f32], y: &mut [f32]) {
    let ((h, w), (oh, ow), s) = (g.in_hw, g.out_hw(), g.stride);
    let (in_image, out_image) = (g.channels * h * w, g.out_channels() * oh * ow);
    for_chunks(y, out_image, |b, yi| {
        let xi = &x[b * in_image..][..in_image];
        yi.fill(0.0);
        for c in 0..g.channels {
            let (xp, yp) = (
                &xi[c * h * w..][..h * w],
                &mut yi[(g.pad + c) * oh * ow..][..oh * ow],
            );
            for i in 0..oh {
                for j in 0..ow {
                    yp[i * ow + j] = xp[s * i * w + s * j];
                }
            }
        }
    });
}

/// The gradient of [`shortcut_pad_forward`]: dy's middle channels put back
/// at the sampled positions, zeros elsewhere. OVERWRITES dx.
pub fn shortcut_pad_backward(g: &PadShortcut, dy: &[f32], dx: &mut [f32]) {
    let ((h, w), (oh, ow), s) = (g.in_hw, g.out_hw(), g.stride);
    let (in_image, out_image) = (g.channels * h * w, g.out_channels() * oh * ow);
    for_chunks(dx, in_image, |b, xi| {
        let yi = &dy[b * out_image..][..out_image];
        xi.fill(0.0);
        for c in 0..g.channels {
            let (xp, yp) = (
                &mut xi[c * h * w..][..h * w],
                &yi[(g.pad + c) * oh * ow..][..oh * ow],
            );
            for i in 0..oh {
                for j in 0..ow {
                    xp[s * i * w + s * j] = yp[i * ow + j];
                }
            }
        }
    });
}

/// The definition by coordinates, as the test oracle.
pub fn shortcut_pad_naive(g: &PadShortcut, x: &[f32]) -> Vec<f32> {
    let [b, oc, oh, ow] = g.out_shape();
    let (h, w) = g.in_hw;
    let mut y = vec![0f32; b * oc * oh * ow];
    for n in 0..b {
        for k in 0..oc {
            for i in 0..oh {
                for j in 0..ow {
                    if k >= g.pad && k - g.pad < g.channels {
                        let c = k - g.pad;
                        y[((n * oc + k) * oh + i) * ow + j] =
                            x[((n * g.channels + c) * h + g.stride * i) * w + g.stride * j];
                    }
                }
            }
        }
    }
    y
}

impl Tensor {
    /// relu(self + other), for two tensors of one shape: the end of a
    /// residual block, in one pass.
    pub fn add_relu(&self, other: &Tensor) -> Tensor {
        assert_eq!(
            self.shape(),
            other.shape(),
            "add_relu: shapes {:?} and {:?} differ",
            self.shape(),
            other.shape()
        );
        let mut y = crate::buffers::take(self.numel()); // overwritten whole
        add_relu_forward(&self.data(), &other.data(), &mut y);
        let (a, b) = (self.clone(), other.clone());
        Tensor::from_op_with_output(y, self.shape(), &[self, other], move |y, dout, grads| {
            let mut g = crate::buffers::take(dout.len());
            add_relu_backward(&y.data(), dout, &mut g);
            // The one gradient reaches both addends; the last taker gets
            // the buffer itself.
            if b.needs_grad() {
                grads.add(&a, &g);
                grads.add_owned(&b, g);
            } else {
                grads.add_owned(&a, g);
            }
        })
    }

    /// He et al.'s CIFAR shortcut "option A": every `stride`-th row and
    /// column, then `pad` channels of zeros on each side. (B, C, H, W) →
    /// (B, C + 2·pad, ⌈H/stride⌉, ⌈W/stride⌉).
    pub fn shortcut_pad(&self, stride: usize, pad: usize) -> Tensor {
        let s = self.shape();
        assert!(
            s.len() == 4 && stride >= 1,
            "shortcut_pad: input {s:?} must be (B, C, H, W) and stride ≥ 1, got stride {stride}"
        );
        let g = PadShortcut {
            batch: s[0],
            channels: s[1],
            in_hw: (s[2], s[3]),
            stride,
            pad,
        };
        let out_shape = g.out_shape();
        let mut y = crate::buffers::take(out_shape.iter().product()); // overwritten whole
        shortcut_pad_forward(&g, &self.data(), &mut y);
        let x = self.clone();
        Tensor::from_op(y, &out_shape, &[self], move |dout, grads| {
            if !x.needs_grad() {
                return;
            }
            let mut dx = crate::buffers::take(x.numel());
            shortcut_pad_backward(&g, dout, &mut dx);
            grads.add_owned(&x, dx);
        })
    }
}

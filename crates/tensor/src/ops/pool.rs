//! Pooling: max_pool2d, which saves the argmax of every window in forward
//! so that backward is a scatter (the approach burn takes), and the global
//! average pool that ends a ResNet.
//!
//! ```text
//! global_avg_pool2d   y[b, c] = Σ_ij x[b, c, i, j] / (H·W)     (B, C, H, W) → (B, C)
//!                     dx[b, c, i, j] = dy[b, c] / (H·W)
//! ```

use rayon::prelude::*;

use crate::ops::reduce::sum_f64;
use crate::tensor::Tensor;

/// Below this many outputs, splitting across threads costs more than it saves.
const PARALLEL_MIN_OUTPUTS: usize = 1 << 15;

/// Max-pools each (H, W) plane of `x`, writing the maximum into `y` and its
/// index within the plane into `arg`. x is (planes, H, W), y and arg are
/// (planes, OH, OW). See [`max_pool2d_plane`] for which element wins.
pub fn max_pool2d_forward(
    x: &[f32],
    (h, w): (usize, usize),
    k: (usize, usize),
    s: (usize, usize),
    y: &mut [f32],
    arg: &mut [u32],
) {
    let (oh, ow) = pooled_size((h, w), k, s);
    let planes = x.len() / (h * w);
    assert_eq!(y.len(), planes * oh * ow, "max_pool2d: output length");
    assert_eq!(arg.len(), y.len(), "max_pool2d: argmax length");
    let pool_plane = |(xp, (yp, ap)): (&[f32], (&mut [f32], &mut [u32]))| {
        max_pool2d_plane(xp, (h, w), k, s, yp, ap)
    };
    if y.len() >= PARALLEL_MIN_OUTPUTS {
        x.par_chunks(h * w)
            .zip(y.par_chunks_mut(oh * ow).zip(arg.par_chunks_mut(oh * ow)))
            .for_each(pool_plane);
    } else {
        x.chunks(h * w)
            .zip(y.chunks_mut(oh * ow).zip(arg.chunks_mut(oh * ow)))
            .for_each(pool_plane);
    }
}

/// (OH, OW) of a (H, W) plane pooled by windows `k` moved by `s`, no padding.
pub fn pooled_size((h, w): (usize, usize), k: (usize, usize), s: (usize, usize)) -> (usize, usize) {
    ((h - k.0) / s.0 + 1, (w - k.1) / s.1 + 1)
}

/// Max-pools one (H, W) plane `xp` into `yp` (OH, OW), with each window's
/// argmax, an index into the plane, in `ap`.
///
/// The scan is PyTorch's: row-major through the window, taking a value if it
/// is greater than the best so far or NaN. So among equal values the first
/// wins, a NaN beats any number, and among several NaNs the last wins; a
/// window of −∞ points at its first element.
///
/// The take-or-keep is written with bit masks rather than an `if` so that it
/// compiles without branches: on real activations `v > best` is a coin
/// toss, and the mispredicted branches made the branchy loop several times
/// slower (LLVM turns plain `if`-selects back into branches here).
pub fn max_pool2d_plane(
    xp: &[f32],
    (h, w): (usize, usize),
    (kh, kw): (usize, usize),
    (sh, sw): (usize, usize),
    yp: &mut [f32],
    ap: &mut [u32],
) {
    let (oh, ow) = pooled_size((h, w), (kh, kw), (sh, sw));
    assert!(
        h * w <= u32::MAX as usize,
        "max_pool2d: a {h}x{w} plane is too large for u32 argmax indices"
    );
    let (xp, yp, ap) = (&xp[..h * w], &mut yp[..oh * ow], &mut ap[..oh * ow]);
    if (kh, kw, sh, sw) == (2, 2, 2, 2) {
        return max_pool_2x2(xp, w, (oh, ow), yp, ap);
    }
    for oy in 0..oh {
        for ox in 0..ow {
            let mut best = f32::NEG_INFINITY;
            let mut best_i = ((oy * sh) * w + ox * sw) as u32;
            for ky in 0..kh {
                let row = (oy * sh + ky) * w + ox * sw;
                for (i, &v) in xp[row..row + kw].iter().enumerate() {
                    // All ones if v is taken, else all zeros.
                    let take = ((v > best) | v.is_nan()) as u32;
                    let m = take.wrapping_neg();
                    best_i = (best_i & !m) | ((row + i) as u32 & m);
                    best = f32::from_bits((best.to_bits() & !m) | (v.to_bits() & m));
                }
            }
            yp[oy * ow + ox] = best;
            ap[oy * ow + ox] = best_i;
        }
    }
}

/// The scan of [`max_pool2d_plane`] for the common 2×2 window with stride 2,
/// unrolled: the same four candidates in the same order, without the loop
/// bookkeeping of the general case.
fn max_pool_2x2(xp: &[f32], w: usize, (oh, ow): (usize, usize), yp: &mut [f32], ap: &mut [u32]) {
    for oy in 0..oh {
        let (top, bottom) = (
            &xp[2 * oy * w..][..2 * ow],
            &xp[(2 * oy + 1) * w..][..2 * ow],
        );
        let (yr, ar) = (&mut yp[oy * ow..][..ow], &mut ap[oy * ow..][..ow]);
        for ox in 0..ow {
            let i0 = (2 * oy * w + 2 * ox) as u32;
            let candidates = [
                (top[2 * ox], i0),
                (top[2 * ox + 1], i0 + 1),
                (bottom[2 * ox], i0 + w as u32),
                (bottom[2 * ox + 1], i0 + w as u32 + 1),
            ];
            let (mut best, mut best_i) = (f32::NEG_INFINITY, i0);
            for (v, i) in candidates {
                let m = (((v > best) | v.is_nan()) as u32).wrapping_neg();
                best_i = (best_i & !m) | (i & m);
                best = f32::from_bits((best.to_bits() & !m) | (v.to_bits() & m));
            }
            yr[ox] = best;
            ar[ox] = best_i;
        }
    }
}

/// `dx[argmax] += dy`, plane by plane. dx is (planes, H, W).
pub fn max_pool2d_backward(
    dy: &[f32],
    arg: &[u32],
    plane_in: usize,
    plane_out: usize,
    dx: &mut [f32],
) {
    for ((dxp, dyp), ap) in dx
        .chunks_mut(plane_in)
        .zip(dy.chunks(plane_out))
        .zip(arg.chunks(plane_out))
    {
        for (&d, &i) in dyp.iter().zip(ap) {
            dxp[i as usize] += d;
        }
    }
}

/// The direct definition, as the test oracle: returns y only.
pub fn max_pool2d_naive(
    x: &[f32],
    shape: [usize; 4],
    k: (usize, usize),
    s: (usize, usize),
) -> Vec<f32> {
    let [b, c, h, w] = shape;
    let (oh, ow) = ((h - k.0) / s.0 + 1, (w - k.1) / s.1 + 1);
    let mut y = Vec::with_capacity(b * c * oh * ow);
    for p in 0..b * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut m = f32::NEG_INFINITY;
                for ky in 0..k.0 {
                    for kx in 0..k.1 {
                        m = m.max(x[p * h * w + (oy * s.0 + ky) * w + ox * s.1 + kx]);
                    }
                }
                y.push(m);
            }
        }
    }
    y
}

impl Tensor {
    /// Max pooling over (B, C, H, W) with a `kernel` window moved by `stride`,
    /// no padding (PyTorch's MaxPool2d(kernel, stride)).
    pub fn max_pool2d(&self, kernel: (usize, usize), stride: (usize, usize)) -> Tensor {
        let s = self.shape();
        assert!(
            s.len() == 4 && kernel.0 >= 1 && kernel.1 >= 1 && stride.0 >= 1 && stride.1 >= 1
                && s[2] >= kernel.0 && s[3] >= kernel.1,
            "max_pool2d: input {s:?} does not fit kernel {kernel:?} with stride {stride:?} (want (B, C, H, W), H ≥ kh, W ≥ kw)"
        );
        let (h, w) = (s[2], s[3]);
        let (oh, ow) = ((h - kernel.0) / stride.0 + 1, (w - kernel.1) / stride.1 + 1);
        let out_shape = [s[0], s[1], oh, ow];
        let n_out = s[0] * s[1] * oh * ow;
        let mut y = vec![0.0; n_out];
        let mut arg = vec![0u32; n_out];
        max_pool2d_forward(&self.data(), (h, w), kernel, stride, &mut y, &mut arg);
        let a = self.clone();
        Tensor::from_op(y, &out_shape, &[self], move |dout, grads| {
            grads.accumulate(&a, |dx| max_pool2d_backward(dout, &arg, h * w, oh * ow, dx));
        })
    }
}

/// Each plane's mean: x is (planes, H·W), y is (planes). Each plane is
/// summed on its own in a fixed order ([`sum_f64`]). OVERWRITES y.
pub fn global_avg_pool2d_forward(x: &[f32], hw: usize, y: &mut [f32]) {
    assert_eq!(x.len(), y.len() * hw, "global_avg_pool2d: lengths");
    let mean = |(y, p): (&mut f32, &[f32])| *y = (sum_f64(p) / hw as f64) as f32;
    if x.len() >= PARALLEL_MIN_OUTPUTS {
        y.par_iter_mut().zip(x.par_chunks(hw)).for_each(mean);
    } else {
        y.iter_mut().zip(x.chunks(hw)).for_each(mean);
    }
}

/// dx = dy / (H·W) over each plane. OVERWRITES dx.
pub fn global_avg_pool2d_backward(dy: &[f32], hw: usize, dx: &mut [f32]) {
    assert_eq!(dx.len(), dy.len() * hw, "global_avg_pool2d: lengths");
    let spread = |(p, &d): (&mut [f32], &f32)| p.fill(d / hw as f32);
    if dx.len() >= PARALLEL_MIN_OUTPUTS {
        dx.par_chunks_mut(hw).zip(dy.par_iter()).for_each(spread);
    } else {
        dx.chunks_mut(hw).zip(dy.iter()).for_each(spread);
    }
}

impl Tensor {
    /// The mean of each (H, W) plane: (B, C, H, W) → (B, C), PyTorch's
    /// `F.adaptive_avg_pool2d(x, 1).flatten(1)`.
    pub fn global_avg_pool2d(&self) -> Tensor {
        let s = self.shape().to_vec();
        assert!(
            s.len() == 4 && s[2] * s[3] > 0,
            "global_avg_pool2d: input {s:?} must be (B, C, H, W) with H, W ≥ 1"
        );
        let hw = s[2] * s[3];
        let mut y = vec![0.0; s[0] * s[1]];
        global_avg_pool2d_forward(&self.data(), hw, &mut y);
        let a = self.clone();
        Tensor::from_op(y, &[s[0], s[1]], &[self], move |dout, grads| {
            if !a.needs_grad() {
                return;
            }
            let mut dx = crate::buffers::take(a.numel()); // overwritten whole
            global_avg_pool2d_backward(dout, hw, &mut dx);
            grads.add_owned(&a, dx);
        })
    }
}

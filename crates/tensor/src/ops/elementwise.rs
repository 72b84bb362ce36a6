//! Elementwise ops: add and mul (the second operand may broadcast), relu,
//! sigmoid, and scaling by a constant.

use rayon::prelude::*;

use crate::tensor::Tensor;

/// Elementwise work below this many values runs on one thread.
const PARALLEL_MIN_VALUES: usize = 1 << 15;
/// Values per task of the parallel elementwise loops.
const CHUNK: usize = 1 << 13;

/// `out[i] = f(a[i], b[i])` for slices of one length, in chunks on the pool
/// when there are enough values. Each value is computed on its own, so the
/// split does not change a bit. OVERWRITES out.
pub(crate) fn zip_map(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    assert!(
        a.len() == out.len() && b.len() == out.len(),
        "zip_map: lengths {}, {}, {}",
        out.len(),
        a.len(),
        b.len()
    );
    let chunk = |(o, (a, b)): (&mut [f32], (&[f32], &[f32]))| {
        for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
            *o = f(a, b);
        }
    };
    if out.len() >= PARALLEL_MIN_VALUES {
        out.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(chunk);
    } else {
        chunk((out, (a, b)));
    }
}

/// `out[i] = f(out[i], a[i])`, as [`zip_map`] in place.
pub(crate) fn update_with(out: &mut [f32], a: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    assert_eq!(a.len(), out.len(), "update_with: lengths");
    let chunk = |(o, a): (&mut [f32], &[f32])| {
        for (o, &a) in o.iter_mut().zip(a) {
            *o = f(*o, a);
        }
    };
    if out.len() >= PARALLEL_MIN_VALUES {
        out.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK))
            .for_each(chunk);
    } else {
        chunk((out, a));
    }
}

/// For `b` broadcast against `a`'s shape by numpy's rule (dimensions aligned
/// from the right; each of `b`'s is 1 or equal), the index into `b` of every
/// element of `a`. `None` if `b` has `a`'s shape exactly.
fn broadcast_index(op: &str, a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    if a == b {
        return None;
    }
    let fits = b.len() <= a.len()
        && b.iter()
            .rev()
            .zip(a.iter().rev())
            .all(|(&bd, &ad)| bd == ad || bd == 1);
    assert!(fits, "{op}: cannot broadcast shape {b:?} to {a:?}");
    // b's strides as seen from a's dimensions: 0 where b is broadcast.
    let offset = a.len() - b.len();
    let mut strides = vec![0usize; a.len()];
    let mut s = 1;
    for d in (0..b.len()).rev() {
        strides[offset + d] = if b[d] == 1 { 0 } else { s };
        s *= b[d];
    }
    let n: usize = a.iter().product();
    let mut idx = vec![0usize; n];
    let mut coord = vec![0usize; a.len()];
    for slot in idx.iter_mut() {
        *slot = coord.iter().zip(&strides).map(|(c, s)| c * s).sum();
        for d in (0..a.len()).rev() {
            coord[d] += 1;
            if coord[d] < a[d] {
                break;
            }
            coord[d] = 0;
        }
    }
    Some(idx)
}

/// relu of one value: 0 for x ≤ 0 (including −0), x otherwise, which keeps
/// NaN (every comparison with NaN is false). `x.max(0.0)` would return 0 for
/// NaN.
#[inline(always)]
pub fn relu(x: f32) -> f32 {
    if x <= 0.0 {
        0.0
    } else {
        x
    }
}

/// The gradient through relu at input (or output) x, given the incoming
/// gradient d: 0 where x ≤ 0, d elsewhere. This is PyTorch's
/// `threshold_backward` (`x <= 0 ? 0 : d`): the gradient at exactly 0 is 0,
/// and at NaN it passes through.
#[inline(always)]
pub fn relu_grad(x: f32, d: f32) -> f32 {
    if x <= 0.0 {
        0.0
    } else {
        d
    }
}

impl Tensor {
    /// `a + b`; `b` may broadcast to `a`'s shape (e.g. a bias of shape (C,1,1)
    /// on (B,C,H,W), or (N,) on (M,N)).
    pub fn add(&self, b: &Tensor) -> Tensor {
        let (a, bt) = (self.clone(), b.clone());
        let map = broadcast_index("add", self.shape(), b.shape());
        let out: Vec<f32> = {
            let (ad, bd) = (self.data(), b.data());
            match &map {
                None => ad.iter().zip(bd.iter()).map(|(x, y)| x + y).collect(),
                Some(m) => ad.iter().zip(m).map(|(x, &j)| x + bd[j]).collect(),
            }
        };
        Tensor::from_op(out, self.shape(), &[self, b], move |dout, grads| {
            grads.add(&a, dout);
            grads.accumulate(&bt, |gb| match &map {
                None => gb.iter_mut().zip(dout).for_each(|(g, d)| *g += d),
                Some(m) => m.iter().zip(dout).for_each(|(&j, d)| gb[j] += d),
            });
        })
    }

    /// `a * b` elementwise; `b` may broadcast to `a`'s shape.
    pub fn mul(&self, b: &Tensor) -> Tensor {
        let (a, bt) = (self.clone(), b.clone());
        let map = broadcast_index("mul", self.shape(), b.shape());
        let bidx = move |i: usize| map.as_ref().map_or(i, |m| m[i]);
        let out: Vec<f32> = {
            let (ad, bd) = (self.data(), b.data());
            ad.iter()
                .enumerate()
                .map(|(i, x)| x * bd[bidx(i)])
                .collect()
        };
        Tensor::from_op(out, self.shape(), &[self, b], move |dout, grads| {
            // d(a*b)/da = b, d(a*b)/db = a (summed over broadcast positions).
            grads.accumulate(&a, |ga| {
                let bd = bt.data();
                ga.iter_mut()
                    .zip(dout)
                    .enumerate()
                    .for_each(|(i, (g, d))| *g += d * bd[bidx(i)]);
            });
            grads.accumulate(&bt, |gb| {
                let ad = a.data();
                dout.iter()
                    .enumerate()
                    .for_each(|(i, d)| gb[bidx(i)] += d * ad[i]);
            });
        })
    }

    /// `c · a` for a constant `c`.
    pub fn scale(&self, c: f32) -> Tensor {
        let a = self.clone();
        let out = self.data().iter().map(|x| c * x).collect();
        Tensor::from_op(out, self.shape(), &[self], move |dout, grads| {
            grads.add_owned(&a, dout.iter().map(|d| c * d).collect());
        })
    }

    /// max(x, 0), with NaN passed through as PyTorch's relu does (so that a
    /// diverging loss shows up as NaN instead of being silently clipped).
    pub fn relu(&self) -> Tensor {
        let a = self.clone();
        let mut out = crate::buffers::take(self.numel()); // overwritten whole
        let x = self.data();
        zip_map(&mut out, &x, &x, |x, _| relu(x));
        drop(x);
        Tensor::from_op(out, self.shape(), &[self], move |dout, grads| {
            let x = a.data();
            let mut g = crate::buffers::take(dout.len()); // overwritten whole
            zip_map(&mut g, &x, dout, relu_grad);
            drop(x);
            grads.add_owned(&a, g);
        })
    }

    /// 1 / (1 + e^-x).
    pub fn sigmoid(&self) -> Tensor {
        let a = self.clone();
        let out: Vec<f32> = self
            .data()
            .iter()
            .map(|&x| 1.0 / (1.0 + (-x).exp()))
            .collect();
        let saved = out.clone();
        Tensor::from_op(out, self.shape(), &[self], move |dout, grads| {
            // σ'(x) = σ(x)(1 − σ(x)), from the saved output.
            let g = dout
                .iter()
                .zip(&saved)
                .map(|(d, s)| d * s * (1.0 - s))
                .collect();
            grads.add_owned(&a, g);
        })
    }
}

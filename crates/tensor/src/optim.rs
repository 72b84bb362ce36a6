//! SGD with momentum, weight decay and optional Nesterov, with PyTorch's
//! semantics:
//!
//! ```text
//! g   = grad + weight_decay · w
//! buf = g                       on the first step
//! buf = μ · buf + (1 − dampening) · g   afterwards
//! g   = g + μ · buf  (Nesterov)   or   g = buf
//! w  −= lr · g
//! ```
//!
//! One departure: a buffer value that falls below f32's normal range
//! (subnormal, under 2⁻¹²⁶ ≈ 1.2e-38) is stored as 0, because arithmetic on
//! subnormals is very slow on x86. With lr ≤ 1 such a value cannot move a
//! weight with |w| ≥ 2⁻¹⁰² ≈ 2e-31 (its step is under half an ulp of w); a
//! smaller weight, exactly 0 included, could have moved by a subnormal
//! amount (see `sgd_momentum`).

use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub lr: f32,
    pub momentum: f32,
    pub dampening: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

impl SgdConfig {
    pub fn new(lr: f32, momentum: f32) -> SgdConfig {
        SgdConfig {
            lr,
            momentum,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }
}

pub struct Sgd {
    pub params: Vec<Tensor>,
    pub config: SgdConfig,
    /// One momentum buffer per parameter, made on the first step that sees a
    /// gradient for it.
    buffers: Vec<Option<Vec<f32>>>,
}

impl Sgd {
    pub fn new(params: Vec<Tensor>, config: SgdConfig) -> Sgd {
        assert!(
            !config.nesterov || (config.momentum > 0.0 && config.dampening == 0.0),
            "Sgd: Nesterov momentum needs momentum > 0 and zero dampening"
        );
        let buffers = vec![None; params.len()];
        Sgd {
            params,
            config,
            buffers,
        }
    }

    pub fn step(&mut self) {
        let c = self.config;
        for (p, buf) in self.params.iter().zip(self.buffers.iter_mut()) {
            let grad = p.grad_ref();
            let Some(grad) = grad.as_ref() else { continue };
            let mut w = p.data_mut();
            if c.momentum == 0.0 {
                sgd_plain(&c, &mut w, grad);
                continue;
            }
            match buf {
                // PyTorch's first step: the buffer starts as g itself,
                // undamped.
                None => {
                    let mut b = vec![0.0; w.len()];
                    if c.nesterov {
                        sgd_momentum::<true, true>(&c, &mut w, grad, &mut b);
                    } else {
                        sgd_momentum::<true, false>(&c, &mut w, grad, &mut b);
                    }
                    *buf = Some(b);
                }
                Some(b) => {
                    if c.nesterov {
                        sgd_momentum::<false, true>(&c, &mut w, grad, b);
                    } else {
                        sgd_momentum::<false, false>(&c, &mut w, grad, b);
                    }
                }
            }
        }
    }

    pub fn zero_grad(&self) {
        for p in &self.params {
            p.zero_grad();
        }
    }

    /// The momentum buffer of `param`, if it has one yet. Sparse layers use
    /// this to hold pruned connections' momentum at zero.
    pub fn momentum_buffer_mut(&mut self, param: &Tensor) -> Option<&mut Vec<f32>> {
        let i = self.params.iter().position(|p| p.same_tensor(param))?;
        self.buffers[i].as_mut()
    }

    /// All buffers, in parameter order (for checkpoints).
    pub fn buffers(&self) -> &[Option<Vec<f32>>] {
        &self.buffers
    }

    /// Restores buffers saved by [`Sgd::buffers`]; lengths must match.
    pub fn set_buffers(&mut self, buffers: Vec<Option<Vec<f32>>>) -> Result<(), String> {
        if buffers.len() != self.params.len() {
            return Err(format!(
                "Sgd: {} momentum buffers for {} parameters",
                buffers.len(),
                self.params.len()
            ));
        }
        for (i, (b, p)) in buffers.iter().zip(&self.params).enumerate() {
            if let Some(b) = b {
                if b.len() != p.numel() {
                    return Err(format!(
                        "Sgd: momentum buffer {i} has {} values, parameter has {}",
                        b.len(),
                        p.numel()
                    ));
                }
            }
        }
        self.buffers = buffers;
        Ok(())
    }
}

// One pass over each parameter: every branch is decided outside the loop (by
// the caller, or by the const parameters), so each loop body is straight-line
// arithmetic that LLVM vectorises. The expressions are exactly those of the
// formulas at the top of this file, in f32, so results do not depend on
// which loop runs.

/// w −= lr · (grad + wd · w), without momentum.
fn sgd_plain(c: &SgdConfig, w: &mut [f32], grad: &[f32]) {
    assert_eq!(w.len(), grad.len(), "Sgd: gradient length");
    for (w, &gr) in w.iter_mut().zip(grad) {
        let g = gr + c.weight_decay * *w;
        *w -= c.lr * g;
    }
}

/// Elements per task of a large parameter's momentum step (the LeNet's fc1
/// weight, 48,000, runs as 6 tasks).
const SGD_CHUNK: usize = 8192;

/// One momentum step of w and its buffer b. `FIRST`: b is being created and
/// becomes g; otherwise b = μ·b + (1 − dampening)·g. `NESTEROV`: the step is
/// g + μ·b instead of b.
fn sgd_momentum<const FIRST: bool, const NESTEROV: bool>(
    c: &SgdConfig,
    w: &mut [f32],
    grad: &[f32],
    b: &mut [f32],
) {
    assert!(
        w.len() == grad.len() && w.len() == b.len(),
        "Sgd: gradient or buffer length"
    );
    if w.len() >= 2 * SGD_CHUNK {
        // Every element is updated on its own, so chunks on the pool give
        // the same bits as one loop.
        use rayon::prelude::*;
        let chunks = w.par_chunks_mut(SGD_CHUNK).zip(grad.par_chunks(SGD_CHUNK));
        chunks
            .zip(b.par_chunks_mut(SGD_CHUNK))
            .for_each(|((w, g), b)| sgd_momentum::<FIRST, NESTEROV>(c, w, g, b));
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::isa::Isa::best().avx512() {
        // SAFETY: the CPU has AVX-512F (checked just above); the function
        // is the safe loop below compiled for it.
        unsafe { momentum_loop_avx512::<FIRST, NESTEROV>(c, w, grad, b) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::isa::Isa::best().avx2() {
        // SAFETY: the CPU has AVX2 (checked just above); as above.
        unsafe { momentum_loop_avx2::<FIRST, NESTEROV>(c, w, grad, b) };
        return;
    }
    momentum_loop::<FIRST, NESTEROV>(c, w, grad, b);
}

/// [`momentum_loop`] compiled for AVX-512: the compiler vectorises the same
/// operations 16 floats at a time instead of SSE's 4. It does not fuse a
/// multiply and an add (Rust never contracts them), so every value is
/// bitwise the portable loop's.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn momentum_loop_avx512<const FIRST: bool, const NESTEROV: bool>(
    c: &SgdConfig,
    w: &mut [f32],
    grad: &[f32],
    b: &mut [f32],
) {
    momentum_loop::<FIRST, NESTEROV>(c, w, grad, b)
}

/// [`momentum_loop`] compiled for AVX2 (8 floats at a time), bitwise the
/// same.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn momentum_loop_avx2<const FIRST: bool, const NESTEROV: bool>(
    c: &SgdConfig,
    w: &mut [f32],
    grad: &[f32],
    b: &mut [f32],
) {
    momentum_loop::<FIRST, NESTEROV>(c, w, grad, b)
}

/// The momentum step itself, element by element (see [`sgd_momentum`]).
#[inline(always)]
fn momentum_loop<const FIRST: bool, const NESTEROV: bool>(
    c: &SgdConfig,
    w: &mut [f32],
    grad: &[f32],
    b: &mut [f32],
) {
    let keep = 1.0 - c.dampening;
    for ((w, &gr), b) in w.iter_mut().zip(grad).zip(b.iter_mut()) {
        let g = gr + c.weight_decay * *w;
        let nb = if FIRST { g } else { c.momentum * *b + keep * g };
        // Where the gradient stays 0 (a dead ReLU feeding fc1, say) the
        // buffer decays by `momentum` each step into subnormal numbers,
        // and every multiply by one costs x86 a microcode assist of about
        // a hundred cycles: such buffers made this loop the slowest part
        // of a batch-4 step. A subnormal buffer (below 2⁻¹²⁶) times lr ≤ 1
        // is under half an ulp of any weight with |w| ≥ 2⁻¹⁰², so it moves
        // such a weight by nothing; it is flushed to 0.
        *b = if nb.is_subnormal() { 0.0 } else { nb };
        let step = if NESTEROV { g + c.momentum * *b } else { *b };
        *w -= c.lr * step;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dispatched momentum step (AVX-512 or AVX2 where the CPU has
    /// them) gives the portable loop's bits, subnormal flushes included,
    /// on lengths around the vector widths and the pool's chunks.
    #[test]
    fn wide_momentum_loops_equal_the_portable_one() {
        // No weight decay, so that a zero gradient leaves the buffer to
        // decay (into a subnormal, flushed).
        let c = SgdConfig {
            dampening: 0.1,
            ..SgdConfig::new(0.01, 0.9)
        };
        let mut r = crate::Rng::seed(3);
        for n in [0, 1, 7, 15, 16, 17, 100, 2 * SGD_CHUNK + 5] {
            let w0: Vec<f32> = (0..n).map(|_| r.uniform(-1.0, 1.0)).collect();
            let g: Vec<f32> = (0..n)
                .map(|i| {
                    if i % 3 == 0 {
                        0.0
                    } else {
                        r.uniform(-1.0, 1.0)
                    }
                })
                .collect();
            // Some buffers one decay away from subnormal.
            let b0: Vec<f32> = (0..n)
                .map(|i| {
                    if i % 3 == 0 {
                        1.3e-38
                    } else {
                        r.uniform(-1.0, 1.0)
                    }
                })
                .collect();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let (mut w1, mut b1) = (w0.clone(), b0.clone());
            sgd_momentum::<false, true>(&c, &mut w1, &g, &mut b1);
            let (mut w2, mut b2) = (w0.clone(), b0.clone());
            momentum_loop::<false, true>(&c, &mut w2, &g, &mut b2);
            assert_eq!(bits(&w1), bits(&w2), "n {n}: weights");
            assert_eq!(bits(&b1), bits(&b2), "n {n}: buffers");
            assert!(b1.iter().step_by(3).all(|&v| v == 0.0 || n == 0));
        }
    }
}

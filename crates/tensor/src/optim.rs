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
            // The first step with momentum starts the buffer from g itself,
            // which is what buf = μ·0 + g would give without dampening.
            let first = buf.is_none();
            let n = w.len();
            let mut b = (c.momentum != 0.0).then(|| buf.get_or_insert_with(|| vec![0.0; n]));
            for (i, (w, &grad)) in w.iter_mut().zip(grad.iter()).enumerate() {
                let mut g = grad + c.weight_decay * *w;
                if let Some(b) = b.as_mut() {
                    b[i] = if first {
                        g
                    } else {
                        c.momentum * b[i] + (1.0 - c.dampening) * g
                    };
                    g = if c.nesterov {
                        g + c.momentum * b[i]
                    } else {
                        b[i]
                    };
                }
                *w -= c.lr * g;
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

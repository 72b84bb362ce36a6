//! What an evaluation pass does to a convolution's output while it is still
//! in cache: a ResNet's batch norm, shortcut add and ReLU, applied by the
//! convolution kernels to each image's output right after they write it
//! ([`Tensor::conv2d_then`](crate::Tensor::conv2d_then),
//! [`conv2d_sparse_then`](crate::ops::sparse_conv2d::conv2d_sparse_then)),
//! instead of as separate passes over the whole batch's output:
//!
//! ```text
//! y = conv(x, w) + bias                    (B, O, OH, OW)
//! y = y·scale_o + shift_o                  batch norm, running statistics
//! y = y + residual                         if there is a shortcut
//! y = relu(y)                              if asked
//! ```
//!
//! Each value is rounded as the separate ops round it (`batch_norm2d`, then
//! `add_relu`), so the output is bitwise theirs; only the passes over
//! memory are fewer. Evaluation only: nothing is recorded for a backward
//! pass (in training the batch norm needs the batch's statistics, which
//! are known only once the whole batch's output is).

use crate::isa::Isa;
use crate::ops::batch_norm::batch_norm2d_eval_affine;
use crate::ops::batch_norm_loops::epilogue_plane;
use crate::ops::scratch::check_len;
use crate::tensor::Tensor;

/// A batch norm in evaluation mode as y = x·scale + shift per channel.
pub struct BatchNormEval {
    /// γ/√(running_var + eps), per channel.
    pub scale: Vec<f32>,
    /// β − running_mean·scale, per channel.
    pub shift: Vec<f32>,
}

impl BatchNormEval {
    /// From a batch norm's parameters and running statistics, all (C): the
    /// scale and shift `batch_norm2d` applies in evaluation mode.
    pub fn new(
        weight: &Tensor,
        bias: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f32,
    ) -> BatchNormEval {
        let c = weight.numel();
        assert!(
            [bias, running_mean, running_var]
                .iter()
                .all(|t| t.shape() == [c]),
            "BatchNormEval: weight, bias and running statistics need one shape (C)"
        );
        let (scale, shift) = batch_norm2d_eval_affine(
            &weight.data(),
            &bias.data(),
            &running_mean.data(),
            &running_var.data(),
            eps,
        );
        BatchNormEval { scale, shift }
    }
}

/// The epilogue of one convolution on slices.
pub struct Epilogue<'a> {
    pub bn: &'a BatchNormEval,
    /// The shortcut to add, (B, O, OH, OW) like the output.
    pub residual: Option<&'a [f32]>,
    pub relu: bool,
}

impl Epilogue<'_> {
    /// Panics with `op`'s name unless the epilogue fits an output of
    /// `channels` channels and `len` values.
    pub(crate) fn check(&self, op: &str, channels: usize, len: usize) {
        check_len(op, "epilogue scale", channels, self.bn.scale.len());
        check_len(op, "epilogue shift", channels, self.bn.shift.len());
        if let Some(r) = self.residual {
            check_len(op, "epilogue residual", len, r.len());
        }
    }

    /// Image b's output y_b (O, OH·OW), in place.
    pub(crate) fn apply(&self, b: usize, y_b: &mut [f32], k: Isa) {
        let p = y_b.len() / self.bn.scale.len();
        for (oc, plane) in y_b.chunks_exact_mut(p).enumerate() {
            self.apply_plane(b, oc, plane, k);
        }
    }

    /// Channel oc of image b's output, y_bo (OH·OW), in place: for a kernel
    /// that writes one output plane at a time, while it is in L1.
    pub(crate) fn apply_plane(&self, b: usize, oc: usize, y_bo: &mut [f32], k: Isa) {
        let (o, p) = (self.bn.scale.len(), y_bo.len());
        let r = self.residual.map(|r| &r[(b * o + oc) * p..][..p]);
        let (a, s) = (self.bn.scale[oc], self.bn.shift[oc]);
        epilogue_plane(y_bo, a, s, r, self.relu, k);
    }
}

/// The output of an evaluation-only convolution with an epilogue: `conv`
/// writes it whole, given the epilogue on slices. Panics if the tape is
/// recording (no gradient would reach the inputs) or the residual's shape
/// is not the output's.
pub(crate) fn eval_output(
    op: &str,
    out_shape: &[usize],
    bn: &BatchNormEval,
    residual: Option<&Tensor>,
    relu: bool,
    conv: impl FnOnce(&mut [f32], &Epilogue),
) -> Tensor {
    assert!(
        !crate::tape::is_recording(),
        "{op}: evaluation only (nothing is recorded for a backward pass); run it under no_grad"
    );
    if let Some(r) = residual {
        assert_eq!(
            r.shape(),
            out_shape,
            "{op}: the residual {:?} should have the output's shape {out_shape:?}",
            r.shape()
        );
    }
    let mut y = crate::buffers::take(out_shape.iter().product()); // overwritten whole
    let r = residual.map(|r| r.data());
    let e = Epilogue {
        bn,
        residual: r.as_deref().map(|v| &v[..]),
        relu,
    };
    conv(&mut y, &e);
    Tensor::from_vec(y, out_shape)
}

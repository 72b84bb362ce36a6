//! reshape and flatten: the same values under another shape.

use crate::tensor::{numel, Tensor};

impl Tensor {
    /// The same values, in the same order, under `shape`.
    pub fn reshape(&self, shape: &[usize]) -> Tensor {
        assert_eq!(
            numel(shape),
            self.numel(),
            "reshape: cannot view shape {:?} as {shape:?}",
            self.shape()
        );
        let a = self.clone();
        let mut out = crate::buffers::take(self.numel()); // overwritten whole
        out.copy_from_slice(&self.data());
        Tensor::from_op(out, shape, &[self], move |dout, grads| grads.add(&a, dout))
    }

    /// (B, …) → (B, rest): keeps the batch dimension.
    pub fn flatten(&self) -> Tensor {
        let b = *self
            .shape()
            .first()
            .expect("flatten: tensor has no dimensions");
        self.reshape(&[b, self.numel() / b.max(1)])
    }
}

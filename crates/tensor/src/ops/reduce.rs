//! Reductions to a scalar: sum and mean. Summed in index order, so the result
//! never depends on threads.

use crate::tensor::Tensor;

impl Tensor {
    pub fn sum(&self) -> Tensor {
        let a = self.clone();
        let s: f32 = self.data().iter().sum();
        Tensor::from_op(vec![s], &[], &[self], move |dout, grads| {
            grads.accumulate(&a, |g| g.iter_mut().for_each(|v| *v += dout[0]));
        })
    }

    pub fn mean(&self) -> Tensor {
        let n = self.numel().max(1) as f32;
        let a = self.clone();
        let s: f32 = self.data().iter().sum::<f32>() / n;
        Tensor::from_op(vec![s], &[], &[self], move |dout, grads| {
            grads.accumulate(&a, |g| g.iter_mut().for_each(|v| *v += dout[0] / n));
        })
    }
}

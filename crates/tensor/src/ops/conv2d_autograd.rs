//! The conv2d op on the tape: forward runs the im2col kernel, backward runs
//! the two backward GEMMs, skipping whichever gradient nobody needs.

use super::conv2d::{
    conv2d_backward_bias, conv2d_backward_input, conv2d_backward_weight, conv2d_forward,
    Conv2dOptions, Conv2dShape,
};
use crate::tensor::Tensor;

fn add_into(dst: &mut [f32], src: &[f32]) {
    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
}

impl Tensor {
    /// 2-D convolution (PyTorch's cross-correlation) of x (B, C, H, W) with
    /// weight (O, C/groups, KH, KW) and an optional bias (O).
    pub fn conv2d(&self, weight: &Tensor, bias: Option<&Tensor>, opts: Conv2dOptions) -> Tensor {
        let s =
            Conv2dShape::new(self.shape(), weight.shape(), opts).unwrap_or_else(|e| panic!("{e}"));
        if let Some(b) = bias {
            assert_eq!(
                b.shape(),
                [s.out_channels],
                "conv2d: bias {:?} for {} output channels",
                b.shape(),
                s.out_channels
            );
        }
        let out_shape = s.output_shape();
        let mut y = vec![0.0; out_shape.iter().product()];
        conv2d_forward(
            &s,
            &self.data(),
            &weight.data(),
            bias.map(|b| b.data()).as_deref().map(|v| &v[..]),
            &mut y,
        );
        let (x, w, b) = (self.clone(), weight.clone(), bias.cloned());
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        Tensor::from_op(y, &out_shape, &inputs, move |dy, grads| {
            if w.needs_grad() {
                let mut dw = vec![0.0; w.numel()];
                conv2d_backward_weight(&s, &x.data(), dy, &mut dw);
                grads.add_owned(&w, dw);
            }
            if x.needs_grad() {
                let mut dx = vec![0.0; x.numel()];
                conv2d_backward_input(&s, &w.data(), dy, &mut dx);
                grads.add_owned(&x, dx);
            }
            if let Some(b) = &b {
                grads.accumulate(b, |gb| {
                    let mut db = vec![0.0; s.out_channels];
                    conv2d_backward_bias(&s, dy, &mut db);
                    add_into(gb, &db);
                });
            }
        })
    }
}

//! Evaluation's convolution with its batch norm, shortcut and ReLU applied
//! by the kernels (`ops/epilogue.rs`), against the separate ops it stands
//! for: bitwise, on the paths of the dense forward these shapes take on
//! this CPU (the gathered product, the packed product, the direct kernel)
//! and on the sparse one, with and without a residual and a ReLU.

use std::rc::Rc;
use tensor::ops::batch_norm::BatchNormMode;
use tensor::ops::epilogue::BatchNormEval;
use tensor::ops::sparse_conv2d::{conv2d_sparse, conv2d_sparse_then, SparseLayout};
use tensor::{tape, Conv2dOptions, Rng, Tensor};

/// (input, weight, stride, padding): the ResNets' stem and 3×3 layers (the
/// gathered product for stride 1, the packed one for stride 2), a 5×5
/// layer without padding (the direct kernel), and a batch of 3.
const CASES: [([usize; 4], [usize; 4], usize, usize); 5] = [
    ([3, 3, 32, 32], [16, 3, 3, 3], 1, 1),
    ([3, 16, 32, 32], [16, 16, 3, 3], 1, 1),
    ([3, 16, 32, 32], [32, 16, 3, 3], 2, 1),
    ([3, 32, 8, 8], [64, 32, 3, 3], 1, 1),
    ([3, 6, 14, 14], [16, 6, 5, 5], 1, 0),
];

/// A batch norm with every statistic and parameter away from its default.
struct Bn {
    w: Tensor,
    b: Tensor,
    m: Tensor,
    v: Tensor,
}

impl Bn {
    fn new(c: usize, r: &mut Rng) -> Bn {
        Bn {
            w: Tensor::uniform(&[c], -1.5, 1.5, r),
            b: Tensor::uniform(&[c], -1.0, 1.0, r),
            m: Tensor::uniform(&[c], -0.5, 0.5, r),
            v: Tensor::uniform(&[c], 0.1, 3.0, r),
        }
    }

    fn eval(&self) -> BatchNormEval {
        BatchNormEval::new(&self.w, &self.b, &self.m, &self.v, 1e-5)
    }

    /// The separate ops: batch norm, then + residual, then relu.
    fn separate(&self, y: &Tensor, residual: Option<&Tensor>, relu: bool) -> Tensor {
        let (w, b, m, v) = (&self.w, &self.b, &self.m, &self.v);
        let y = y.batch_norm2d(w, b, m, v, BatchNormMode::Eval, 1e-5);
        match (residual, relu) {
            (Some(r), true) => y.add_relu(r),
            (Some(r), false) => y.add(r),
            (None, true) => y.relu(),
            (None, false) => y,
        }
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.data().iter().map(|v| v.to_bits()).collect()
}

#[test]
fn the_epilogue_gives_the_separate_ops_bits_on_every_path() {
    let mut r = Rng::seed(7);
    for (xs, ws, stride, pad) in CASES {
        let opts = Conv2dOptions {
            stride: (stride, stride),
            padding: (pad, pad),
            ..Conv2dOptions::default()
        };
        let x = Tensor::uniform(&xs, -1.0, 1.0, &mut r);
        let w = Tensor::uniform(&ws, -0.5, 0.5, &mut r);
        let bias = Tensor::uniform(&[ws[0]], -0.1, 0.1, &mut r);
        let mask: Vec<bool> = (0..w.numel()).map(|_| r.uniform(0.0, 1.0) < 0.3).collect();
        let layout = Rc::new(SparseLayout::new(ws, opts, &mask));
        let bn = Bn::new(ws[0], &mut r);
        tape::no_grad(|| {
            let dense = x.conv2d(&w, Some(&bias), opts);
            let sparse = conv2d_sparse(&x, &w, Some(&bias), &layout);
            let residual = Tensor::uniform(dense.shape(), -1.0, 1.0, &mut r);
            for (res, relu) in [
                (None, true),
                (None, false),
                (Some(&residual), true),
                (Some(&residual), false),
            ] {
                let what = format!(
                    "{xs:?} * {ws:?} stride {stride}, residual {}, relu {relu}",
                    res.is_some()
                );
                let want = bn.separate(&dense, res, relu);
                let got = x.conv2d_then(&w, Some(&bias), opts, &bn.eval(), res, relu);
                assert!(bits(&got) == bits(&want), "dense {what}");
                let want = bn.separate(&sparse, res, relu);
                let got = conv2d_sparse_then(&x, &w, Some(&bias), &layout, &bn.eval(), res, relu);
                assert!(bits(&got) == bits(&want), "sparse {what}");
            }
        });
    }
}

/// A 2-channel 4×4 input, a 3×3 weight and a batch norm.
fn small() -> (Tensor, Tensor, Bn) {
    let mut r = Rng::seed(1);
    let x = Tensor::uniform(&[1, 2, 4, 4], -1.0, 1.0, &mut r);
    let w = Tensor::uniform(&[2, 2, 3, 3], -1.0, 1.0, &mut r);
    (x, w, Bn::new(2, &mut r))
}

#[test]
#[should_panic(expected = "evaluation only")]
fn the_epilogue_refuses_to_run_while_the_tape_records() {
    let (x, w, bn) = small();
    x.conv2d_then(&w, None, Conv2dOptions::default(), &bn.eval(), None, true);
}

#[test]
#[should_panic(expected = "the residual")]
fn the_epilogue_refuses_a_residual_of_another_shape() {
    let (x, w, bn) = small();
    let wrong = Tensor::zeros(&[1, 2, 4, 4]); // the output is (1, 2, 2, 2)
    let opts = Conv2dOptions::default();
    tape::no_grad(|| x.conv2d_then(&w, None, opts, &bn.eval(), Some(&wrong), true));
}

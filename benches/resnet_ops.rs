//! What a ResNet-20 training step at batch 128 spends outside its
//! convolutions: batch norm (with and without the ReLU fused in), the
//! residual add + ReLU, forward and backward, at each stage's shape, each
//! weighted by how many of it a step runs. Best of several runs, ms.
//!
//! cargo bench --bench resnet_ops
//!
//! `RESNET_OPS_RUNS` sets the runs per timing (default 5). Everything runs
//! on a thread of the rayon pool with the other threads kept awake, as in
//! training.

use tensor::awake::with_pool_awake;
use tensor::ops::batch_norm::{batch_norm2d_backward, batch_norm2d_forward, BatchNormMode};
use tensor::ops::residual::{add_relu_backward, add_relu_forward};

mod common;
use common::{best, data};

fn main() {
    let runs: usize = std::env::var("RESNET_OPS_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let batch = 128;
    // (name, channels, side, batch norms followed by ReLU, plain batch
    // norms, residual adds) per step: the stem's and each block's first
    // batch norm take the ReLU; each block's second is plain, then added.
    let stages = [
        ("16 x 32x32", 16, 32, 4, 3, 3),
        ("32 x 16x16", 32, 16, 3, 3, 3),
        ("64 x 8x8", 64, 8, 3, 3, 3),
    ];
    println!(
        "batch {batch}, best of {runs}; ms per call (fwd / bwd), and per step weighted by count"
    );
    let pool = rayon::ThreadPoolBuilder::new().build().unwrap();
    pool.install(|| {
        with_pool_awake(|| {
            let mut totals = [0.0f64; 3];
            for (name, c, side, n_relu, n_plain, n_add) in stages {
                let hw = side * side;
                let n = batch * c * hw;
                let (x, dy, other) = (data(n, 1), data(n, 2), data(n, 3));
                let (gamma, beta) = (data(c, 4), data(c, 5));
                let (mut rm, mut rv) = (vec![0.0; c], vec![1.0; c]);
                let mut y = vec![0.0; n];
                let mode = BatchNormMode::Train { momentum: 0.1 };
                let mut bn = |relu: bool| {
                    let mut fwd = || {
                        let (rm, rv) = (&mut rm[..], &mut rv[..]);
                        if relu {
                            batch_norm2d_forward::<true>(&x, (c, hw), &gamma, &beta, rm, rv, mode, 1e-5, &mut y)
                        } else {
                            batch_norm2d_forward::<false>(&x, (c, hw), &gamma, &beta, rm, rv, mode, 1e-5, &mut y)
                        }
                    };
                    let f = best(runs, || {
                        fwd();
                    });
                    let saved = fwd();
                    let y_out = y.clone();
                    let relu_out = relu.then_some(&y_out[..]);
                    let b = best(runs, || {
                        let (dx, _, _) =
                            batch_norm2d_backward(&x, &dy, relu_out, (c, hw), &gamma, &saved);
                        tensor::buffers::give(dx);
                    });
                    [f, b]
                };
                let (bn_relu, bn_plain) = (bn(true), bn(false));
                let mut dx = vec![0.0; n];
                let add = [
                    best(runs, || add_relu_forward(&x, &other, &mut y)),
                    best(runs, || add_relu_backward(&x, &dy, &mut dx)),
                ];
                let weigh = |t: [f64; 2], k: usize| k as f64 * (t[0] + t[1]);
                let row = [
                    weigh(bn_relu, n_relu),
                    weigh(bn_plain, n_plain),
                    weigh(add, n_add),
                ];
                for (t, r) in totals.iter_mut().zip(row) {
                    *t += r;
                }
                println!(
                    "{name:11} bn+relu {:5.2} {:5.2} | bn {:5.2} {:5.2} | add+relu {:5.2} {:5.2}",
                    bn_relu[0], bn_relu[1], bn_plain[0], bn_plain[1], add[0], add[1]
                );
            }
            println!(
                "step total (ms): batch norm + relu {:.1} | batch norm {:.1} | add + relu {:.1} | all {:.1}",
                totals[0],
                totals[1],
                totals[2],
                totals.iter().sum::<f64>()
            );
        })
    });
}

//! The convolutions of a ResNet-20 training step at batch 128, one layer
//! shape at a time: the dense kernels against the sparse ones at the
//! densities ERK gives each layer at `--density 0.1` and `0.05`, and at
//! 100 % and 50 % for the crossover. Forward, weight gradient and input
//! gradient are timed each (best of several runs: the minimum is the number
//! least disturbed by other work on a shared machine), and each shape's line
//! is weighted by how many layers of that shape the network has.
//!
//! cargo bench --bench resnet_conv
//!
//! `RESNET_CONV_BATCH` changes the batch (default 128); `RESNET_CONV_RUNS`
//! the runs per timing (default 5). With `RESNET_CONV_CROSSOVER=1` each
//! layer's line ends with its measured break-even: the sparse kernels are
//! timed at 20 %, 30 %, … 100 %, and the density where their forward and
//! both gradients cost what the dense ones do is interpolated between the
//! two densities around it, beside what `sparse_crossover_density` says.
//! Everything runs on a thread of the rayon pool with the other threads
//! kept awake, as in training.

use tensor::awake::with_pool_awake;
use tensor::isa::Isa;
use tensor::ops::conv2d::{
    conv2d_backward_input, conv2d_backward_weight, conv2d_forward, Conv2dOptions, Conv2dShape,
};
use tensor::ops::sparse_conv2d::{
    sparse_conv2d_backward_input, sparse_conv2d_backward_weight, sparse_conv2d_forward,
    sparse_crossover_density, SparseLayout,
};

mod common;
use common::{best, data};

/// A mask of `density` of `n` taps, spread pseudo-randomly over the layer.
fn mask(n: usize, density: f64, seed: u32) -> Vec<bool> {
    let mut s = seed.max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            ((s >> 8) as f64 / (1u32 << 24) as f64) < density
        })
        .collect()
}

struct Layer {
    name: &'static str,
    cin: usize,
    cout: usize,
    hw: usize,
    stride: usize,
    count: usize,
    /// ERK's density for this shape at --density 0.1 (0.05 is half).
    erk: f64,
}

fn main() {
    let batch: usize = std::env::var("RESNET_CONV_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let runs: usize = std::env::var("RESNET_CONV_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let crossover = std::env::var("RESNET_CONV_CROSSOVER").is_ok_and(|v| v == "1");
    let layers = [
        Layer {
            name: "16->16 32x32",
            cin: 16,
            cout: 16,
            hw: 32,
            stride: 1,
            count: 6,
            erk: 0.314,
        },
        Layer {
            name: "16->32 32x32 s2",
            cin: 16,
            cout: 32,
            hw: 32,
            stride: 2,
            count: 1,
            erk: 0.223,
        },
        Layer {
            name: "32->32 16x16",
            cin: 32,
            cout: 32,
            hw: 16,
            stride: 1,
            count: 5,
            erk: 0.145,
        },
        Layer {
            name: "32->64 16x16 s2",
            cin: 32,
            cout: 64,
            hw: 16,
            stride: 2,
            count: 1,
            erk: 0.105,
        },
        Layer {
            name: "64->64 8x8",
            cin: 64,
            cout: 64,
            hw: 8,
            stride: 1,
            count: 5,
            erk: 0.069,
        },
    ];
    println!("batch {batch}, best of {runs}; ms per call (fwd / dW / dx), and per step weighted by layer count");
    let pool = rayon::ThreadPoolBuilder::new().build().unwrap();
    pool.install(|| {
        with_pool_awake(|| {
            let mut totals = [0.0f64; 5];
            for l in &layers {
                let opts = Conv2dOptions {
                    stride: (l.stride, l.stride),
                    padding: (1, 1),
                    ..Conv2dOptions::default()
                };
                let s = Conv2dShape::new(&[batch, l.cin, l.hw, l.hw], &[l.cout, l.cin, 3, 3], opts)
                    .unwrap();
                let x = data(s.input_shape().iter().product(), 1);
                let w = data(s.weight_shape().iter().product(), 2);
                let dy = data(s.output_shape().iter().product(), 3);
                let (mut y, mut dw, mut dx) =
                    (vec![0.0; dy.len()], vec![0.0; w.len()], vec![0.0; x.len()]);
                let dense = [
                    best(runs, || conv2d_forward(&s, &x, &w, None, &mut y)),
                    best(runs, || conv2d_backward_weight(&s, &x, &dy, &mut dw)),
                    best(runs, || conv2d_backward_input(&s, &w, &dy, &mut dx)),
                ];
                let mut line = format!(
                    "{:16} dense {:6.2} {:6.2} {:6.2}",
                    l.name, dense[0], dense[1], dense[2]
                );
                totals[0] += l.count as f64 * dense.iter().sum::<f64>();
                // Forward, weight gradient and input gradient at density d.
                let mut sparse = |d: f64| {
                    let m = mask(w.len(), d, 7);
                    let lay = SparseLayout::new(s.weight_shape(), opts, &m);
                    let k = Isa::best();
                    [
                        best(runs, || sparse_conv2d_forward(&s, &lay, &x, &w, None, &mut y, k)),
                        best(runs, || sparse_conv2d_backward_weight(&s, &lay, &x, &dy, &mut dw, k)),
                        best(runs, || sparse_conv2d_backward_input(&s, &lay, &w, &dy, &mut dx, k)),
                    ]
                };
                for (i, d) in [1.0, 0.5, l.erk, l.erk / 2.0].into_iter().enumerate() {
                    let t = sparse(d);
                    totals[i + 1] += l.count as f64 * t.iter().sum::<f64>();
                    line += &format!(" | {d:.3}: {:6.2} {:6.2} {:6.2}", t[0], t[1], t[2]);
                }
                if crossover {
                    let dense_total: f64 = dense.iter().sum();
                    let mut below = (0.0, 0.0); // (density, sparse total) under dense
                    let mut even = None;
                    for d in (2..=10).map(|i| i as f64 / 10.0) {
                        let total: f64 = sparse(d).iter().sum();
                        if total >= dense_total {
                            let (d0, t0) = below;
                            even = Some(d0 + (d - d0) * (dense_total - t0) / (total - t0));
                            break;
                        }
                        below = (d, total);
                    }
                    let rule = sparse_crossover_density(w.len(), l.stride > 1);
                    line += &match even {
                        Some(e) => format!(" | break-even {e:.2} (rule {rule:.2})"),
                        None => format!(" | break-even above 1.00 (rule {rule:.2})"),
                    };
                }
                println!("{line}");
            }
            println!(
                "step total (ms): dense {:.1} | sparse 100% {:.1} | 50% {:.1} | ERK 0.1 {:.1} | ERK 0.05 {:.1}",
                totals[0], totals[1], totals[2], totals[3], totals[4]
            );
        })
    });
}

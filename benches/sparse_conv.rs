//! Sparse conv2d (direct, active taps only) against the dense im2col + GEMM
//! kernels on the masked weight, on the two LeNet convolutions at batch 4
//! and 64, with a balanced mask of k taps per 5x5 kernel (k = 1, 3, 6, 9,
//! 13, 25: densities 4 % to 100 %). "fwd+bwd" is forward, weight gradient
//! and input gradient.
//!
//! cargo bench --bench sparse_conv -- --warm-up-time 1 --measurement-time 3
//!
//! With `SPARSE_SWEEP=1` it instead prints the density sweep used to find
//! the crossover: dense and sparse timed alternately, best of many runs each
//! (the minimum is the number least disturbed by other work on a shared
//! machine), for k = 1, 3, 6, 9, 13, 17, 25 taps per kernel:
//!
//! SPARSE_SWEEP=1 cargo bench --bench sparse_conv
//!
//! Everything runs on a thread of a rayon pool whose other threads are kept
//! awake, as in the CIFAR example's training steps (`tensor::awake`).
//!
//! The `sparse_fused` group times the fused conv2d_sparse → relu →
//! max_pool2d op against the three separate tape ops, on the two LeNet
//! blocks at batch 4 and 64 with 3 taps per kernel (12 %): forward alone
//! (no_grad) and forward + backward of the sum, with the weight and bias
//! gradients, and the input gradient for the second block only (the first
//! block's input is the image):
//!
//! cargo bench --bench sparse_conv -- sparse_fused --warm-up-time 1 --measurement-time 3

use criterion::{black_box, criterion_group, Criterion};
use std::time::Instant;
use tensor::awake::with_pool_awake;
use tensor::isa::Isa;
use tensor::ops::conv2d::*;
use tensor::ops::sparse_conv2d::*;
use tensor::Tensor;

mod common;
use common::data;

/// k of the 25 taps of every (o, c) kernel, chosen pseudo-randomly.
fn balanced_mask(kernels: usize, k: usize, seed: u32) -> Vec<bool> {
    let mut s = seed;
    let mut mask = vec![false; kernels * 25];
    for kernel in mask.chunks_mut(25) {
        let mut placed = 0;
        while placed < k {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let t = s as usize % 25;
            if !kernel[t] {
                kernel[t] = true;
                placed += 1;
            }
        }
    }
    mask
}

fn bench(c: &mut Criterion) {
    // (name, C, H = W, O): 5x5 kernels, stride 1, no padding.
    let convs = [("3x32x32->6 k5", 3, 32, 6), ("6x14x14->16 k5", 6, 14, 16)];
    for (name, ch, hw, o) in convs {
        for batch in [4, 64] {
            let s = Conv2dShape::new(
                &[batch, ch, hw, hw],
                &[o, ch, 5, 5],
                Conv2dOptions::default(),
            )
            .unwrap();
            let x = data(s.input_shape().iter().product(), 1);
            let w = data(s.weight_shape().iter().product(), 2);
            let bias = data(o, 3);
            let dy = data(s.output_shape().iter().product(), 4);
            let mut y = vec![0.0; dy.len()];
            let mut dw = vec![0.0; w.len()];
            let mut dx = vec![0.0; x.len()];
            let mut g = c.benchmark_group(format!("sparse_conv/{name}/b{batch}"));

            // Dense cost does not depend on the mask: time it once.
            let wm = SparseLayout::new(s.weight_shape(), s.opts, &balanced_mask(o * ch, 3, 9))
                .masked_weight(&w);
            g.bench_function("dense/forward", |b| {
                b.iter(|| conv2d_forward(&s, black_box(&x), &wm, Some(&bias), &mut y))
            });
            g.bench_function("dense/fwd+bwd", |b| {
                b.iter(|| {
                    conv2d_forward(&s, black_box(&x), &wm, Some(&bias), &mut y);
                    conv2d_backward_weight(&s, &x, &dy, &mut dw);
                    conv2d_backward_input(&s, &wm, &dy, &mut dx);
                })
            });

            g.bench_function("dense/backward_weight", |b| {
                b.iter(|| conv2d_backward_weight(&s, black_box(&x), &dy, &mut dw))
            });
            g.bench_function("dense/backward_input", |b| {
                b.iter(|| conv2d_backward_input(&s, black_box(&wm), &dy, &mut dx))
            });

            for k in [1, 3, 6, 9, 13, 25] {
                let l = SparseLayout::new(s.weight_shape(), s.opts, &balanced_mask(o * ch, k, 9));
                let tag = format!("sparse k{k} ({:.0}%)", 100.0 * l.density());
                let kinds: &[(&str, Isa)] = if k == 3 {
                    &[("", Isa::best()), (" portable", Isa::Portable)]
                } else {
                    &[("", Isa::best())]
                };
                if k == 3 {
                    let kc = Isa::best();
                    g.bench_function(format!("{tag}/backward_weight"), |b| {
                        b.iter(|| {
                            sparse_conv2d_backward_weight(&s, &l, black_box(&x), &dy, &mut dw, kc)
                        })
                    });
                    g.bench_function(format!("{tag}/backward_input"), |b| {
                        b.iter(|| {
                            sparse_conv2d_backward_input(&s, &l, black_box(&w), &dy, &mut dx, kc)
                        })
                    });
                }
                for &(suffix, kc) in kinds {
                    g.bench_function(format!("{tag}{suffix}/forward"), |b| {
                        b.iter(|| {
                            sparse_conv2d_forward(
                                &s,
                                &l,
                                black_box(&x),
                                &w,
                                Some(&bias),
                                &mut y,
                                kc,
                            )
                        })
                    });
                    g.bench_function(format!("{tag}{suffix}/fwd+bwd"), |b| {
                        b.iter(|| {
                            sparse_conv2d_forward(
                                &s,
                                &l,
                                black_box(&x),
                                &w,
                                Some(&bias),
                                &mut y,
                                kc,
                            );
                            sparse_conv2d_backward_weight(&s, &l, &x, &dy, &mut dw, kc);
                            sparse_conv2d_backward_input(&s, &l, &w, &dy, &mut dx, kc);
                        })
                    });
                }
            }
            g.finish();
        }
    }
}

/// Best of `reps` runs of `f`, in microseconds.
fn min_time(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best * 1e6
}

/// The density sweep: per conv, batch and k, the best times of dense and
/// sparse forward and forward + backward, measured in 5 alternating rounds.
fn sweep() {
    let convs = [("3x32x32->6 k5", 3, 32, 6), ("6x14x14->16 k5", 6, 14, 16)];
    println!("| conv | batch | k (density) | dense fwd µs | sparse fwd µs | ratio | dense fwd+bwd µs | sparse fwd+bwd µs | ratio |");
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|");
    for (name, ch, hw, o) in convs {
        for batch in [4usize, 64] {
            let s = Conv2dShape::new(
                &[batch, ch, hw, hw],
                &[o, ch, 5, 5],
                Conv2dOptions::default(),
            )
            .unwrap();
            let x = data(s.input_shape().iter().product(), 1);
            let w = data(s.weight_shape().iter().product(), 2);
            let bias = data(o, 3);
            let dy = data(s.output_shape().iter().product(), 4);
            let mut y = vec![0.0; dy.len()];
            let mut dw = vec![0.0; w.len()];
            let mut dx = vec![0.0; x.len()];
            let reps = if batch == 4 { 300 } else { 40 };
            let kc = Isa::best();
            for k in [1, 3, 6, 9, 13, 17, 25] {
                let l = SparseLayout::new(s.weight_shape(), s.opts, &balanced_mask(o * ch, k, 9));
                let wm = l.masked_weight(&w);
                let mut t = [f64::MAX; 4];
                for _round in 0..5 {
                    let r = [
                        min_time(reps, || conv2d_forward(&s, &x, &wm, Some(&bias), &mut y)),
                        min_time(reps, || {
                            sparse_conv2d_forward(&s, &l, &x, &w, Some(&bias), &mut y, kc)
                        }),
                        min_time(reps / 2, || {
                            conv2d_forward(&s, &x, &wm, Some(&bias), &mut y);
                            conv2d_backward_weight(&s, &x, &dy, &mut dw);
                            conv2d_backward_input(&s, &wm, &dy, &mut dx);
                        }),
                        min_time(reps / 2, || {
                            sparse_conv2d_forward(&s, &l, &x, &w, Some(&bias), &mut y, kc);
                            sparse_conv2d_backward_weight(&s, &l, &x, &dy, &mut dw, kc);
                            sparse_conv2d_backward_input(&s, &l, &w, &dy, &mut dx, kc);
                        }),
                    ];
                    for (a, b) in t.iter_mut().zip(r) {
                        *a = a.min(b);
                    }
                }
                println!(
                    "| {name} | {batch} | {k} ({:.0}%) | {:.1} | {:.1} | {:.2}× | {:.1} | {:.1} | {:.2}× |",
                    100.0 * l.density(),
                    t[0],
                    t[1],
                    t[0] / t[1],
                    t[2],
                    t[3],
                    t[2] / t[3]
                );
            }
        }
    }
}

/// Fused against separate tape ops on the LeNet blocks (see the module doc).
fn bench_fused(c: &mut Criterion) {
    // (name, C, H = W, O, input needs its gradient)
    let convs = [
        ("conv1 3x32x32->6", 3, 32, 6, false),
        ("conv2 6x14x14->16", 6, 14, 16, true),
    ];
    let pool = PoolOptions {
        kernel: (2, 2),
        stride: (2, 2),
    };
    for (name, ch, hw, o, x_grad) in convs {
        for batch in [4, 64] {
            let x = Tensor::from_vec(data(batch * ch * hw * hw, 1), &[batch, ch, hw, hw]);
            let x = if x_grad { x.requires_grad() } else { x };
            let w = Tensor::from_vec(data(o * ch * 25, 2), &[o, ch, 5, 5]).requires_grad();
            let bias = Tensor::from_vec(data(o, 3), &[o]).requires_grad();
            let mask = balanced_mask(o * ch, 3, 9);
            let l = std::rc::Rc::new(SparseLayout::new(
                [o, ch, 5, 5],
                Conv2dOptions::default(),
                &mask,
            ));
            let fused = || conv2d_sparse_relu_max_pool2d(&x, &w, Some(&bias), &l, pool);
            let separate = || {
                conv2d_sparse(&x, &w, Some(&bias), &l)
                    .relu()
                    .max_pool2d(pool.kernel, pool.stride)
            };
            let step = |y: Tensor| {
                y.sum().backward();
                for t in [&x, &w, &bias] {
                    t.zero_grad();
                }
            };
            let mut g = c.benchmark_group(format!(
                "sparse_fused/{name}/b{batch}/{:.0}%",
                100.0 * l.density()
            ));
            g.bench_function("separate/forward", |b| {
                b.iter(|| tensor::no_grad(|| black_box(separate())))
            });
            g.bench_function("fused/forward", |b| {
                b.iter(|| tensor::no_grad(|| black_box(fused())))
            });
            g.bench_function("separate/fwd+bwd", |b| b.iter(|| step(separate())));
            g.bench_function("fused/fwd+bwd", |b| b.iter(|| step(fused())));
            g.finish();
        }
    }
}

criterion_group!(benches, bench, bench_fused);

/// On a thread of a rayon pool with the pool kept awake
/// (`with_pool_awake`), as the CIFAR example runs every training epoch: each
/// parallel op, dense or sparse, finds the other threads awake.
fn main() {
    let pool = rayon::ThreadPoolBuilder::new()
        .build()
        .expect("a thread pool");
    pool.install(|| {
        with_pool_awake(|| {
            if std::env::var_os("SPARSE_SWEEP").is_some() {
                sweep();
                return;
            }
            benches();
            Criterion::default().configure_from_args().final_summary();
        })
    });
}

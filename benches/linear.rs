//! The linear layer's three products (forward, input gradient, weight
//! gradient) at the LeNet's fc1 shape (400 → 120) and fc2 shape
//! (120 → 84), for 1 to 32 rows: the unpacked small-batch loops
//! (`tensor::ops::linear_small`) against the GEMM, which packs both
//! operands. Shows the batch at which packing starts to pay, the reason for
//! `SMALL_BATCH_ROWS`.
//!
//! cargo bench --bench linear -- --warm-up-time 1 --measurement-time 2

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tensor::gemm::{gemm, Mat};
use tensor::isa::Isa;
use tensor::ops::linear_small::{
    linear_backward_input_small, linear_backward_weight_small, linear_forward_small,
};
use tensor::Rng;

fn products(c: &mut Criterion) {
    let mut group = c.benchmark_group("linear_fwd_bwd");
    let mut rng = Rng::seed(5);
    for (k, o) in [(400usize, 120usize), (120, 84)] {
        for m in [1usize, 2, 4, 8, 16, 32] {
            let mut v = |n: usize| (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect::<Vec<f32>>();
            let (x, w, b, dy) = (v(m * k), v(o * k), v(o), v(m * o));
            let (mut y, mut dx, mut dw) = (vec![0.0; m * o], vec![0.0; m * k], vec![0.0; o * k]);
            let kc = Isa::best();
            group.bench_function(format!("small/{k}x{o}/m{m}"), |bch| {
                bch.iter(|| {
                    linear_forward_small(&x, &w, Some(&b), (m, k, o), &mut y, kc);
                    linear_backward_input_small(&dy, &w, (m, k, o), &mut dx, kc);
                    linear_backward_weight_small(&dy, &x, (m, k, o), &mut dw, kc);
                    black_box((&y, &dx, &dw));
                })
            });
            group.bench_function(format!("gemm/{k}x{o}/m{m}"), |bch| {
                bch.iter(|| {
                    for r in y.chunks_mut(o) {
                        r.copy_from_slice(&b);
                    }
                    let (xm, wm, dym) = (
                        Mat::row_major(&x, m, k),
                        Mat::row_major(&w, o, k),
                        Mat::row_major(&dy, m, o),
                    );
                    gemm(1.0, xm, wm.t(), 1.0, &mut y, o);
                    gemm(1.0, dym, wm, 1.0, &mut dx, k);
                    gemm(1.0, dym.t(), xm, 1.0, &mut dw, k);
                    black_box((&y, &dx, &dw));
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, products);
criterion_main!(benches);

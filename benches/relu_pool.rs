//! The fused blocks' pooling tail on one plane: relu + 2×2 max-pool from a
//! conv kernel's wide rows (forward, with argmaxes) and its backward (the
//! pooled gradient scattered back into wide rows), for the LeNet's two
//! convolutions: conv1's 28×28 output in rows of 32 and conv2's 10×10 in
//! rows of 14.
//!
//! cargo bench --bench relu_pool -- --warm-up-time 1 --measurement-time 2

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tensor::isa::Isa;
use tensor::ops::relu_pool::{relu_max_pool_2x2_rows, relu_pool_grad_2x2_rows, WIDE_SLACK};
use tensor::Rng;

fn planes(c: &mut Criterion) {
    let mut group = c.benchmark_group("relu_pool_plane");
    let mut rng = Rng::seed(2);
    for (oh, ow, rs) in [(28usize, 28usize, 32usize), (10, 10, 14)] {
        let y: Vec<f32> = (0..oh * rs + WIDE_SLACK)
            .map(|_| rng.uniform(-1.0, 1.0))
            .collect();
        let q = (oh / 2) * (ow / 2);
        let (mut pooled, mut arg) = (vec![0.0f32; q], vec![0u32; q]);
        let dp: Vec<f32> = (0..q).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let mut rows = vec![0.0f32; oh * rs];
        for k in [Isa::best(), Isa::Portable] {
            group.bench_function(format!("forward/{oh}x{ow}/{k:?}"), |b| {
                b.iter(|| {
                    relu_max_pool_2x2_rows(&y, rs, (oh, ow), &mut pooled, Some(&mut arg), k);
                    black_box(&pooled);
                })
            });
            relu_max_pool_2x2_rows(&y, rs, (oh, ow), &mut pooled, Some(&mut arg), k);
            group.bench_function(format!("backward/{oh}x{ow}/{k:?}"), |b| {
                b.iter(|| {
                    black_box(relu_pool_grad_2x2_rows(
                        &pooled,
                        &arg,
                        &dp,
                        (oh, ow),
                        rs,
                        &mut rows,
                        k,
                    ))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, planes);
criterion_main!(benches);

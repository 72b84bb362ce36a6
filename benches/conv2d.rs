//! conv2d kernels on the two LeNet convolutions, batch 4 and 64.
//!
//! cargo bench --bench conv2d -- --warm-up-time 1 --measurement-time 3

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use tensor::ops::conv2d::*;

mod common;
use common::data;

fn bench(c: &mut Criterion) {
    // (name, C, H, W, O): 5x5 kernels, stride 1, no padding.
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
            let mut g = c.benchmark_group(format!("conv2d/{name}/b{batch}"));
            g.throughput(Throughput::Elements(s.flops() as u64)); // "elements" = flops
            g.bench_function("forward", |b| {
                b.iter(|| conv2d_forward(&s, black_box(&x), &w, Some(&bias), &mut y))
            });
            g.bench_function("backward_weight", |b| {
                b.iter(|| conv2d_backward_weight(&s, black_box(&x), &dy, &mut dw))
            });
            g.bench_function("backward_input", |b| {
                b.iter(|| conv2d_backward_input(&s, black_box(&w), &dy, &mut dx))
            });
            if batch == 4 {
                g.bench_function("forward_naive", |b| {
                    b.iter(|| conv2d_forward_naive(&s, black_box(&x), &w, Some(&bias), &mut y))
                });
            }
            g.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

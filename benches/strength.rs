//! Hebbian strength methods on the notebook's shapes and the LeNet's two
//! convolutions (batch 4 and 64), with one conv2d weight gradient of the same
//! geometry as the yardstick. Single-unit is skipped at batch 64 (seconds
//! per call).
//!
//! cargo bench --bench strength
//! cargo bench --bench strength -- 'coactivation/(fast|dW)'
//! cargo bench --bench strength -- 'b4/coactivation/(fast|bitcount|dW)'

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use sparse_conv::strength::{strength, Measure, Method, StrengthConfig};
use std::time::Duration;
use tensor::ops::conv2d::{conv2d_backward_weight, conv2d_forward, Conv2dOptions, Conv2dShape};
use tensor::Rng;

fn bench(c: &mut Criterion) {
    // (name, B, C, H, W, O, KH, KW); stride 1, no padding.
    let cases = [
        ("notebook 2x8x5x3->7 k2", 2, 8, 5, 3, 7, 2, 2),
        ("lenet1 3x32x32->6 k5 b4", 4, 3, 32, 32, 6, 5, 5),
        ("lenet2 6x14x14->16 k5 b4", 4, 6, 14, 14, 16, 5, 5),
        ("lenet1 3x32x32->6 k5 b64", 64, 3, 32, 32, 6, 5, 5),
        ("lenet2 6x14x14->16 k5 b64", 64, 6, 14, 14, 16, 5, 5),
    ];
    let mut rng = Rng::seed(1);
    for (name, b, ch, h, w, o, kh, kw) in cases {
        let s =
            Conv2dShape::new(&[b, ch, h, w], &[o, ch, kh, kw], Conv2dOptions::default()).unwrap();
        let bound = 1.0 / (s.col_rows() as f32).sqrt();
        let x: Vec<f32> = (0..s.input_shape().iter().product())
            .map(|_| rng.uniform(-1.0, 1.0))
            .collect();
        let weight: Vec<f32> = (0..s.weight_shape().iter().product())
            .map(|_| rng.uniform(-bound, bound))
            .collect();
        let mut y = vec![0.0f32; s.output_shape().iter().product()];
        conv2d_forward(&s, &x, &weight, None, &mut y);
        let mut dw = vec![0.0f32; weight.len()];

        for measure in Measure::ALL {
            let mut g = c.benchmark_group(format!("strength/{name}/{measure}"));
            g.sample_size(10)
                .warm_up_time(Duration::from_millis(300))
                .measurement_time(Duration::from_secs(1));
            g.bench_function("dW reference", |bench| {
                bench.iter(|| conv2d_backward_weight(&s, black_box(&x), &y, &mut dw))
            });
            for method in Method::ALL {
                if method == Method::SingleUnit && b == 64 {
                    continue;
                }
                // Bitcount is coactivation only (correlation runs fast).
                if method == Method::Bitcount && measure == Measure::Correlation {
                    continue;
                }
                let cfg = StrengthConfig {
                    measure,
                    method,
                    threshold: 0.0,
                };
                g.bench_function(method.name(), |bench| {
                    bench.iter(|| strength(&s, black_box(&x), &y, &cfg).unwrap())
                });
            }
            g.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

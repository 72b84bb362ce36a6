//! The notebook's DSConv2d time trial: a dense Conv2d(3, 6, 5) against a
//! DSConv2d(3, 6, 5), forward in training mode on a batch of 4 CIFAR images.
//!
//! * `dense/20_passes` and `dsconv/20_passes`: one update interval, 20 forward
//!   passes, of which the DSConv2d samples strength on one. Their ratio is the
//!   layer's average overhead.
//! * `dsconv/sampled_pass`: a single pass that samples strength (default
//!   strength method, the GEMM of `Method::Fast`).
//! * `dsconv/sampled_pass_bitcount`: the same with `Method::Bitcount`.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use hebbsparse::cifar::{load_cifar10, BatchConfig, Batches};
use hebbsparse::sparse_conv::strength::{Method, StrengthConfig};
use hebbsparse::sparse_conv::{DSConfig, DSConv2d};
use hebbsparse::tensor::nn::Conv2d;
use hebbsparse::tensor::{tape, Conv2dOptions, Rng, Tensor};

fn cifar_batch() -> Tensor {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/cifar10-sample");
    let data = load_cifar10(&dir).expect("bundled sample");
    let cfg = BatchConfig {
        batch_size: 4,
        ..BatchConfig::default()
    };
    let batch = Batches::new(&data.train, &cfg, 0).next().unwrap();
    Tensor::from_vec(batch.x, &[4, 3, 32, 32])
}

fn dsconv_overhead(c: &mut Criterion) {
    let x = cifar_batch();
    let opts = Conv2dOptions::default();
    let dense = Conv2d::new(3, 6, (5, 5), opts, true, &mut Rng::seed(1));
    let mut sparse = DSConv2d::new(
        3,
        6,
        (5, 5),
        opts,
        true,
        DSConfig::default(),
        &mut Rng::seed(1),
    )
    .unwrap();
    let mut every = DSConv2d::new(
        3,
        6,
        (5, 5),
        opts,
        true,
        DSConfig {
            update_interval: 1,
            ..DSConfig::default()
        },
        &mut Rng::seed(1),
    )
    .unwrap();
    let mut every_bitcount = DSConv2d::new(
        3,
        6,
        (5, 5),
        opts,
        true,
        DSConfig {
            update_interval: 1,
            strength: StrengthConfig {
                method: Method::Bitcount,
                ..Default::default()
            },
            ..DSConfig::default()
        },
        &mut Rng::seed(1),
    )
    .unwrap();

    let mut g = c.benchmark_group("dsconv_forward_b4");
    g.bench_function("dense/20_passes", |b| {
        b.iter(|| {
            for _ in 0..20 {
                std::hint::black_box(dense.forward(&x));
            }
            tape::clear();
        })
    });
    g.bench_function("dsconv/20_passes", |b| {
        b.iter(|| {
            for _ in 0..20 {
                std::hint::black_box(sparse.forward(&x));
            }
            tape::clear();
        })
    });
    g.bench_function("dense/one_pass", |b| {
        b.iter(|| {
            std::hint::black_box(dense.forward(&x));
            tape::clear();
        })
    });
    g.bench_function("dsconv/sampled_pass", |b| {
        b.iter(|| {
            std::hint::black_box(every.forward(&x));
            tape::clear();
        })
    });
    g.bench_function("dsconv/sampled_pass_bitcount", |b| {
        b.iter(|| {
            std::hint::black_box(every_bitcount.forward(&x));
            tape::clear();
        })
    });
    g.finish();
}

criterion_group!(benches, dsconv_overhead);
criterion_main!(benches);

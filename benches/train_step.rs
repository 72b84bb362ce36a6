//! One full training step of the notebook's LeNet (dense): forward,
//! cross-entropy, backward, SGD with momentum, at batch 4 and batch 64.
//! Throughput is reported in images per second.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hebbsparse::sparse_conv::LeNet;
use hebbsparse::tensor::optim::{Sgd, SgdConfig};
use hebbsparse::tensor::{Rng, Tensor};

fn train_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("lenet_train_step");
    for batch in [4usize, 64] {
        let mut rng = Rng::seed(1);
        let mut net = LeNet::dense(&mut rng);
        let mut opt = Sgd::new(net.parameters(), SgdConfig::new(0.001, 0.9));
        let x = Tensor::uniform(&[batch, 3, 32, 32], -1.0, 1.0, &mut rng);
        let labels: Vec<usize> = (0..batch).map(|i| i % 10).collect();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("dense/b{batch}"), |b| {
            b.iter(|| net.train_step(&mut opt, &x, &labels))
        });
    }
    group.finish();
}

criterion_group!(benches, train_step);
criterion_main!(benches);

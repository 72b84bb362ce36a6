//! The notebook's LeNet end to end, without data loading: one training step
//! (forward, cross-entropy, backward, SGD with momentum, masks held) at
//! batch 4 and 64, and one evaluation forward pass (no tape) at batch 100
//! and at the example's evaluation batch (`Model::eval_batch_size`, 250),
//! for the dense model and for a sparse one at 12 % conv density (the static
//! mask: 3 of 25 taps per kernel, drawn at construction, on the sparse
//! kernels). Throughput is reported in images per second. Everything runs
//! on a thread of the rayon pool, each step and pass inside
//! `with_pool_awake`, as in the CIFAR example.
//!
//! `cargo bench --bench train_step`

use criterion::{criterion_group, Criterion, Throughput};
use hebbsparse::sparse_conv::rules::Rule;
use hebbsparse::sparse_conv::{DSConfig, LeNet, Model};
use hebbsparse::tensor::awake::with_pool_awake;
use hebbsparse::tensor::optim::{Sgd, SgdConfig};
use hebbsparse::tensor::{no_grad, Rng, Tensor};

fn model(sparse: bool, rng: &mut Rng) -> LeNet {
    let cfg = sparse.then(|| DSConfig {
        rule: Rule::static_mask(),
        ..DSConfig::default()
    });
    let mut net = LeNet::new(cfg, rng).expect("the static rule's configuration is valid");
    // A static mask never updates, so the training loop samples no strength.
    for (_, l) in net.sparse_layers_mut() {
        l.set_sampling(false);
    }
    net
}

fn train_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("lenet_train_step");
    for batch in [4usize, 64] {
        for sparse in [false, true] {
            let mut rng = Rng::seed(1);
            let mut net = model(sparse, &mut rng);
            let mut opt = Sgd::new(net.parameters(), SgdConfig::new(0.001, 0.9));
            let x = Tensor::uniform(&[batch, 3, 32, 32], -1.0, 1.0, &mut rng);
            let labels: Vec<usize> = (0..batch).map(|i| i % 10).collect();
            let name = if sparse { "sparse12" } else { "dense" };
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_function(format!("{name}/b{batch}"), |b| {
                b.iter(|| with_pool_awake(|| net.train_step(&mut opt, &x, &labels)))
            });
        }
    }
    group.finish();
}

fn eval_forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("lenet_eval");
    for (batch, sparse) in [100, model(false, &mut Rng::seed(1)).eval_batch_size()]
        .into_iter()
        .flat_map(|b| [(b, false), (b, true)])
    {
        let mut rng = Rng::seed(1);
        let mut net = model(sparse, &mut rng);
        net.set_training(false);
        let x = Tensor::uniform(&[batch, 3, 32, 32], -1.0, 1.0, &mut rng);
        let name = if sparse { "sparse12" } else { "dense" };
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("{name}/b{batch}"), |b| {
            b.iter(|| with_pool_awake(|| no_grad(|| net.forward(&x).data()[0])))
        });
    }
    group.finish();
}

criterion_group!(benches, train_step, eval_forward);

/// `criterion_main!`, on a thread of a rayon pool, as the CIFAR example
/// runs its whole training: each parallel op then starts on an awake
/// thread of the pool instead of waking all of them from outside.
fn main() {
    rayon::ThreadPoolBuilder::new()
        .build()
        .expect("a thread pool")
        .install(|| {
            benches();
            Criterion::default().configure_from_args().final_summary();
        });
}

//! Loading CIFAR-10's training and test sets from the directory and from the
//! .tar.gz archive, and turning the training set into one epoch of shuffled,
//! normalised batches of 4 and of 64 (`cifar10_batches`: the data side of
//! every training step).
//!
//! The full dataset is looked up in `CIFAR10_DIR`, then `<workspace>/data`,
//! then `<workspace>/../data`; without it, the bundled 1,500-image sample is
//! benchmarked instead (and the numbers mean little).
//!
//! cargo bench --bench cifar_load

use std::path::{Path, PathBuf};
use std::time::Duration;

use cifar::load_cifar10;
use criterion::{criterion_group, criterion_main, Criterion};

fn full_data_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CIFAR10_DIR") {
        return Some(PathBuf::from(dir));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
    [workspace.join("data"), workspace.join("../data")]
        .into_iter()
        .find(|dir| dir.join("cifar-10-batches-bin").is_dir())
}

fn bench_load(c: &mut Criterion) {
    let (dir, label) = match full_data_dir() {
        Some(dir) => (dir, "full"),
        None => {
            eprintln!(
                "no full CIFAR-10 found (set CIFAR10_DIR, or build it into <workspace>/data \
                 or <workspace>/../data); benchmarking the bundled sample instead"
            );
            (
                Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/cifar10-sample"),
                "sample",
            )
        }
    };
    let batches_dir = dir.join("cifar-10-batches-bin");
    let archive = dir.join("cifar-10-binary.tar.gz");

    let mut group = c.benchmark_group("cifar10_load");
    // A load takes from tenths of a second to seconds: a few samples suffice.
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.warm_up_time(Duration::from_secs(2));

    group.bench_function(format!("{label}/directory"), |b| {
        b.iter(|| {
            let data = load_cifar10(&batches_dir).unwrap();
            assert!(!data.train.is_empty());
            data
        })
    });
    if archive.is_file() {
        group.bench_function(format!("{label}/tar_gz"), |b| {
            b.iter(|| {
                let data = load_cifar10(&archive).unwrap();
                assert!(!data.train.is_empty());
                data
            })
        });
    } else {
        eprintln!(
            "no {} found; skipping the archive benchmark",
            archive.display()
        );
    }
    group.finish();
}

fn bench_batches(c: &mut Criterion) {
    let dir = full_data_dir()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/cifar10-sample"));
    let data = load_cifar10(&dir.join("cifar-10-batches-bin")).unwrap();
    let mut group = c.benchmark_group("cifar10_batches");
    group.sample_size(10);
    group.throughput(criterion::Throughput::Elements(data.train.len() as u64));
    // On a thread of the pool, as in the CIFAR example.
    let pool = rayon::ThreadPoolBuilder::new().build().unwrap();
    for batch_size in [4, 64] {
        let cfg = cifar::BatchConfig {
            batch_size,
            ..cifar::BatchConfig::default()
        };
        group.bench_function(format!("epoch/b{batch_size}"), |b| {
            b.iter(|| {
                pool.install(|| {
                    cifar::Batches::new(&data.train, &cfg, 0)
                        .map(|batch| batch.x[0])
                        .sum::<f32>()
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_load, bench_batches);
criterion_main!(benches);

//! Random damage to valid inputs: each case must load or fail with an error,
//! never panic. Seeded, so a failure reproduces.

mod common;

use std::fs;

use cifar::load_cifar10;
use common::*;

const CASES: usize = 300;

/// Returns whether loading failed; panics propagate and fail the test.
fn load_outcome(path: &std::path::Path) -> bool {
    match load_cifar10(path) {
        Ok(data) => {
            // Whatever loads must be self-consistent.
            assert_eq!(data.train.images.len(), data.train.len() * 3072);
            assert_eq!(data.test.images.len(), data.test.len() * 3072);
            assert!(data.train.labels.iter().all(|&l| l < 10));
            false
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            true
        }
    }
}

fn damage(rng: &mut Rng, bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    match rng.below(3) {
        0 => out.truncate(rng.below(bytes.len())),
        1 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
        }
        _ => {
            let i = rng.below(out.len());
            out[i] = rng.next_u64() as u8;
            out.truncate(out.len() - rng.below(600).min(out.len()));
        }
    }
    out
}

#[test]
fn damaged_batch_files_never_panic() {
    let tmp = TempDir::new("fuzz-batch");
    let fx = cifar10_fixture(1, 4, 3);
    let dir = tmp.path().join("cifar-10-batches-bin");
    write_files(&dir, &fx.files);
    let mut rng = Rng(0x5eed_0001);
    let mut failures = 0;
    for _ in 0..CASES {
        let (name, original) = &fx.files[rng.below(fx.files.len())];
        fs::write(dir.join(name), damage(&mut rng, original)).unwrap();
        failures += load_outcome(&dir) as usize;
        fs::write(dir.join(name), original).unwrap();
    }
    // Sanity: the damage does cause errors, and the restored files still load.
    assert!(failures > CASES / 3, "only {failures} failures");
    assert!(!load_outcome(&dir));
}

#[test]
fn damaged_archives_never_panic() {
    let tmp = TempDir::new("fuzz-gz");
    let archive = tmp.path().join("cifar-10-binary.tar.gz");
    let good = tar_gz_of("cifar-10-batches-bin", &cifar10_fixture(1, 3, 2).files);
    let mut rng = Rng(0x5eed_0002);
    let mut failures = 0;
    for _ in 0..CASES {
        fs::write(&archive, damage(&mut rng, &good)).unwrap();
        failures += load_outcome(&archive) as usize;
    }
    assert!(failures > CASES / 2, "only {failures} failures");
}

/// Damage under a valid gzip layer, so the tar parser itself sees it.
#[test]
fn damaged_tar_streams_never_panic() {
    let tmp = TempDir::new("fuzz-tar");
    let archive = tmp.path().join("cifar-10-binary.tar.gz");
    let files = cifar10_fixture(1, 2, 2).files;
    let mut entries = vec![Entry::dir("cifar-10-batches-bin/")];
    for (name, data) in &files {
        entries.push(Entry::long_named(
            &format!("cifar-10-batches-bin/{name}"),
            data,
        ));
    }
    let tar = tar_bytes(&entries);
    let mut rng = Rng(0x5eed_0003);
    let mut failures = 0;
    for _ in 0..CASES {
        let mut bad = damage(&mut rng, &tar);
        // Aim some flips at header blocks, where the interesting parsing is.
        if rng.below(2) == 0 && bad.len() > 1024 {
            let block = rng.below(bad.len() / 512);
            let i = block * 512 + rng.below(512);
            if i < bad.len() {
                bad[i] = rng.next_u64() as u8;
            }
        }
        fs::write(&archive, gzip(&bad)).unwrap();
        failures += load_outcome(&archive) as usize;
    }
    assert!(failures > CASES / 2, "only {failures} failures");
}

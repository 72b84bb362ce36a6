//! What the integration tests share: for the command-line tests the
//! example binary, a scratch folder, the shortest real run and a metrics
//! file read back; for the training tests the two kernel paths side by
//! side ([`paths`]).

#![allow(dead_code)] // each test file uses its own part

pub mod paths;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The CIFAR example's binary. `cargo test` builds the examples before it
/// runs the tests, so it sits beside the test binaries.
pub fn example() -> PathBuf {
    example_named("cifar")
}

/// An example's binary by name (`cifar`, `sweep`), beside the test binaries.
pub fn example_named(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let bin = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} missing: run through `cargo test`",
        bin.display()
    );
    bin
}

pub fn read_metrics(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

pub fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hebbsparse-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The shortest real run: 80 images, one epoch.
pub fn short() -> Command {
    let mut c = Command::new(example());
    c.args([
        "--recipe",
        "notebook",
        "--limit-train",
        "80",
        "--limit-test",
        "50",
        "--epochs",
        "1",
        "--quiet",
    ]);
    c
}

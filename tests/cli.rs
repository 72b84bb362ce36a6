//! The CIFAR example's command line: --help, bad options (exit code 2), and a
//! short real run with a metrics file. `cargo test` builds the examples before
//! it runs the tests, so the binary sits beside the test binaries.

use std::path::PathBuf;
use std::process::Command;

fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let bin = profile_dir
        .join("examples")
        .join(format!("cifar{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} missing: run through `cargo test`",
        bin.display()
    );
    bin
}

#[test]
fn help_lists_the_options() {
    let out = Command::new(example()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--data",
        "--mode",
        "--epochs",
        "--batch-size",
        "--lr",
        "--momentum",
        "--weight-decay",
        "--progress-every",
        "--update-interval",
        "--strength",
        "--seed",
        "--threads",
        "--limit-train",
        "--limit-test",
        "--checkpoint",
        "--resume",
        "--metrics",
        "--strength-method",
    ] {
        assert!(text.contains(opt), "--help lacks {opt}");
    }
}

#[test]
fn bad_options_exit_with_code_2_and_a_message() {
    for args in [
        &["--mode", "sparse"][..],
        &["--batch-size", "0"],
        &["--epochs", "many"],
        &["--strength", "magic"],
        &["--no-such-option"],
        &["--lr", "0"],
        &["--momentum", "1.5"],
        &["--limit-train", "0"],
    ] {
        let out = Command::new(example()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("error"), "{args:?}: {err}");
    }
}

#[test]
fn a_missing_data_path_is_a_clear_error() {
    let out = Command::new(example())
        .args(["--data", "/no/such/cifar"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/cifar"));
}

#[test]
fn a_short_run_prints_the_notebook_report_and_writes_metrics() {
    let metrics = std::env::temp_dir().join(format!("hebbsparse-cli-{}.jsonl", std::process::id()));
    let out = Command::new(example())
        .args([
            "--limit-train",
            "80",
            "--limit-test",
            "50",
            "--epochs",
            "1",
            "--log-every",
            "10",
            "--quiet",
        ])
        .arg("--metrics")
        .arg(&metrics)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("[1,    10] loss: "), "{stdout}");
    assert!(stdout.contains("Accuracy of plane : "), "{stdout}");
    assert!(stdout.contains("conv density: 0.120, 0.120"), "{stdout}");
    let json = std::fs::read_to_string(&metrics).unwrap();
    let lines: Vec<&str> = json.lines().collect();
    assert_eq!(lines.len(), 3, "two loss lines and a summary: {json}");
    assert!(lines[2].contains("\"mode\": \"hebbian\"") && lines[2].contains("\"test_accuracy\""));
}

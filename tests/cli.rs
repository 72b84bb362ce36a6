//! The CIFAR example's command line: --help, bad options (exit code 2), and a
//! short real run with a metrics file. `cargo test` builds the examples before
//! it runs the tests, so the binary sits beside the test binaries.

mod common;

use std::path::Path;
use std::process::Command;

use common::{example, read_metrics, short, tmp};
use hebbsparse::tensor::npy::read_npy;

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
            "--recipe",
            "notebook",
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
    assert!(
        stdout.contains("density: 0.1200 (per layer: 0.120, 0.120)"),
        "{stdout}"
    );
    let lines = read_metrics(&metrics);
    let types: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    // 20 batches: mask updates every 5 (a quarter epoch), two layers each,
    // and a loss line every 10.
    let mut want = vec!["config"];
    want.extend(["progress", "progress", "progress", "progress", "log"]);
    want.extend(["progress", "progress", "progress", "progress", "log"]);
    want.extend(["epoch", "summary"]);
    assert_eq!(types, want);
    let summary = lines.last().unwrap();
    assert_eq!(summary["mode"], "hebbian");
    assert!(summary["test_accuracy"].as_f64().is_some());
    assert!(summary["eval_images_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(lines[0]["batch_size"], 4);
    assert_eq!(lines[0]["prune"], "strength");
}

#[test]
fn every_preset_runs_and_reports_its_density() {
    for (mode, density) in [
        ("dense", None),
        ("hebbian", Some("0.120, 0.120")),
        ("random", Some("0.120, 0.120")),
        ("static", Some("0.120, 0.120")),
        ("hebbian-grow", Some("0.120, 0.120")),
        ("set", Some("0.120, 0.120")),
        ("rigl", Some("0.120, 0.120")),
        ("hebbian-grow-fresh", Some("0.120, 0.120")),
        ("hebbian-rigl", Some("0.120, 0.120")),
    ] {
        let out = short().args(["--mode", mode]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        match density {
            Some(d) => assert!(
                stdout.contains(&format!("(per layer: {d})")),
                "{mode}: {stdout}"
            ),
            None => assert!(!stdout.contains("density"), "{stdout}"),
        }
    }
}

#[test]
fn nonsense_combinations_exit_with_code_2_naming_the_option() {
    for (args, names) in [
        (&["--mode", "dense", "--prune", "magnitude"][..], "--prune"),
        (
            &["--mode", "set", "--strength", "correlation"],
            "--strength",
        ),
        (&["--mode", "static", "--grow", "random"], "--grow"),
        (&["--allocation", "erk"], "--prune-dims layer"),
        (&["--stop-updates-at", "1.5"], "--stop-updates-at"),
        (&["--drop-fraction", "2"], "drop fraction"),
        (
            &["--mode", "set", "--prune", "strength"],
            "--drop-fraction notebook",
        ),
        (
            &["--keep-fraction", "0.5", "--total-fraction", "0.2"],
            "--keep-fraction",
        ),
        (
            &["--strength", "correlation", "--threshold", "0.5"],
            "--threshold",
        ),
        (&["--export-every-update"], "--export"),
        (&["--grow", "sideways"], "gradient"),
    ] {
        let out = Command::new(example()).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(names), "{args:?}: {err}");
    }
}

#[test]
fn bad_paths_are_refused_before_any_data_is_loaded() {
    // The data path does not exist either: the path checks must come first.
    let dir = tmp("a-folder");
    std::fs::create_dir_all(&dir).unwrap();
    for (args, expect) in [
        (
            vec!["--checkpoint".to_string(), dir.display().to_string()],
            "directory",
        ),
        (
            vec!["--checkpoint".into(), "/no/such/folder/x.ckpt".into()],
            "does not exist",
        ),
        (
            vec!["--metrics".into(), dir.display().to_string()],
            "directory",
        ),
        (
            vec!["--metrics".into(), "/no/such/folder/m.jsonl".into()],
            "--metrics",
        ),
        (
            vec!["--resume".into(), "/no/such/x.ckpt".into()],
            "--resume",
        ),
        (vec!["--export".into(), "/proc/version".into()], "--export"),
    ] {
        let out = Command::new(example())
            .args(["--data", "/no/such/cifar"])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(
            !err.contains("/no/such/cifar"),
            "{args:?} loaded data first: {err}"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "stray temporary files: {leftovers:?}");
}

#[cfg(unix)]
#[test]
fn sigterm_keeps_the_metrics_and_saves_a_checkpoint_that_resumes() {
    let (ckpt, metrics) = (tmp("term.ckpt"), tmp("term.jsonl"));
    let _ = std::fs::remove_file(&ckpt);
    let args = ["--limit-test", "20", "--checkpoint", ckpt.to_str().unwrap()];
    let out = signal_during_training(&args, &metrics, libc::SIGTERM);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("checkpoint saved"), "{err}");
    let lines = read_metrics(&metrics);
    assert!(lines.len() >= 2 && lines[0]["type"] == "config");
    assert!(!tmp("term.ckpt.tmp").exists());
    // The checkpoint resumes and finishes the first epoch (--epochs may
    // differ on resume; every other setting is the same).
    let out = Command::new(example())
        .args([
            "--epochs",
            "1",
            "--log-every",
            "5",
            "--quiet",
            "--limit-test",
            "20",
        ])
        .arg("--resume")
        .arg(&ckpt)
        .arg("--metrics")
        .arg(&metrics)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("resumed from"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = read_metrics(&metrics);
    assert!(after.len() > lines.len(), "a resumed run appends");
    assert_eq!(after[..lines.len()], lines[..], "earlier lines are kept");
}

#[test]
fn an_export_round_trips_through_the_npy_reader() {
    let dir = tmp("export");
    let _ = std::fs::remove_dir_all(&dir);
    let out = short()
        .args([
            "--mode",
            "set",
            "--export-every-update",
            "--label",
            "set run",
        ])
        .arg("--export")
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["settings"]["mode"], "set");
    assert_eq!(index["label"], "set run");
    let mut densities = Vec::new();
    for layer in index["layers"].as_array().unwrap() {
        let shape: Vec<usize> = layer["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        for key in ["weight", "mask", "strength"] {
            let t = read_npy(dir.join(layer[key].as_str().unwrap())).unwrap();
            assert_eq!(t.shape(), &shape[..], "{key}");
        }
        let mask = read_npy(dir.join(layer["mask"].as_str().unwrap()))
            .unwrap()
            .to_vec();
        let w = read_npy(dir.join(layer["weight"].as_str().unwrap()))
            .unwrap()
            .to_vec();
        assert!(mask.iter().zip(&w).all(|(m, w)| *m == 1.0 || *w == 0.0));
        densities.push(format!(
            "{:.3}",
            mask.iter().sum::<f32>() as f64 / mask.len() as f64
        ));
    }
    assert!(
        stdout.contains(&format!("(per layer: {})", densities.join(", "))),
        "{stdout} vs {densities:?}"
    );
    // One step folder per mask update: 20 batches, every 5, and SET stops
    // updating after 75% of training: steps 5, 10 and 15.
    let steps = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("step-")
        })
        .count();
    assert_eq!(steps, 3);
    assert!(dir.join("step-000000005/conv2.mask.npy").exists());
    let step: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("step-000000005/index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(step["label"], "set run");
}

#[test]
fn the_first_run_on_the_sample_learns_well_above_chance() {
    // The README's command exactly: no options at all.
    let out = Command::new(example()).arg("--quiet").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("sample recipe"), "{stdout}");
    let acc: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Accuracy of the network on the 500 test images: "))
        .and_then(|v| v.trim_end_matches(" %").parse().ok())
        .expect("an accuracy line");
    assert!(acc >= 20.0, "{acc}% is too close to chance (10%): {stdout}");
}

#[cfg(unix)]
#[test]
fn an_interrupt_without_checkpoint_says_how_to_keep_the_run() {
    let out = signal_during_training(&[], &tmp("int.jsonl"), libc::SIGINT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("run with --checkpoint FILE"), "{err}");
}

/// Starts a long run with `--metrics metrics` and `args`, waits until it is
/// training (a loss line is in the metrics), sends `signal`, and waits for
/// it to end.
#[cfg(unix)]
fn signal_during_training(args: &[&str], metrics: &Path, signal: i32) -> std::process::Output {
    use std::time::{Duration, Instant};
    let _ = std::fs::remove_file(metrics);
    let child = Command::new(example())
        .args(["--epochs", "50", "--log-every", "5", "--quiet"])
        .args(args)
        .arg("--metrics")
        .arg(metrics)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !std::fs::read_to_string(metrics).is_ok_and(|m| m.contains("\"log\"")) {
        assert!(start.elapsed() < Duration::from_secs(120), "no loss line");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: sending a signal to our own child process by its pid.
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
    child.wait_with_output().unwrap()
}

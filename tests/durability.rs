//! What a run records, and what it keeps when something goes wrong, through
//! the CIFAR example's command line: metrics appended, exports that hold the
//! strength that decided each update and refuse another run's folder, masks
//! loaded from files, a diverging run recorded, and bad values refused.

mod common;

use std::process::{Command, Output};

use common::{example, read_metrics, short, tmp};
use hebbsparse::tensor::npy::read_npy;

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn metrics_are_appended_not_overwritten() {
    let metrics = tmp("append.jsonl");
    let _ = std::fs::remove_file(&metrics);
    for seed in ["1", "2"] {
        ok(&short()
            .args(["--mode", "static", "--seed", seed, "--metrics"])
            .arg(&metrics)
            .output()
            .unwrap());
    }
    let lines = read_metrics(&metrics);
    let of = |t: &str| lines.iter().filter(|l| l["type"] == t).count();
    assert_eq!((of("config"), of("summary")), (2, 2));
    let seeds: Vec<i64> = lines
        .iter()
        .filter(|l| l["type"] == "summary")
        .map(|l| l["seed"].as_i64().unwrap())
        .collect();
    assert_eq!(seeds, [1, 2]);
    // Settings keep their JSON types; every accuracy says how long after a
    // mask update it was measured (a static mask never updates: null).
    assert_eq!(lines[0]["batch_size"], 4);
    assert_eq!(lines[0]["augment"], false);
    assert_eq!(lines[0]["normalize"], "half");
    let epoch = lines.iter().find(|l| l["type"] == "epoch").unwrap();
    assert!(epoch["steps_since_update"].is_null(), "{epoch}");
}

#[test]
fn an_export_at_an_update_holds_the_strength_that_decided_it() {
    let dir = tmp("strength-export");
    let _ = std::fs::remove_dir_all(&dir);
    // 20 batches of 4, a mask update every 5 until 75 %: steps 5, 10, 15;
    // the run ends after the window closed.
    ok(&short()
        .args(["--mode", "hebbian-grow", "--update-interval", "1"])
        .args(["--export-every-update", "--export"])
        .arg(&dir)
        .output()
        .unwrap());
    for folder in [dir.join("step-000000010"), dir.clone()] {
        let index: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(folder.join("index.json")).unwrap())
                .unwrap();
        for layer in index["layers"].as_array().unwrap() {
            assert_eq!(layer["strength_of"], "last update", "{layer}");
            assert_eq!(layer["strength_samples"], 5, "{layer}");
            let s = read_npy(folder.join(layer["strength"].as_str().unwrap())).unwrap();
            assert!(
                s.data().iter().any(|&v| v > 0.0),
                "{}: all zeros",
                folder.display()
            );
        }
        // Settings keep their JSON types in the index too.
        assert_eq!(index["settings"]["batch_size"], 4);
        assert_eq!(index["settings"]["density"], 0.15);
        assert!(!folder.join(".export.tmp").exists());
    }
}

#[test]
fn an_export_folder_of_another_run_is_refused_unless_cleared() {
    let dir = tmp("owned-export");
    let _ = std::fs::remove_dir_all(&dir);
    let run = |mode: &str, extra: &[&str]| {
        short()
            .args(["--mode", mode, "--export-every-update"])
            .args(extra)
            .arg("--export")
            .arg(&dir)
            .output()
            .unwrap()
    };
    ok(&run("set", &[]));
    // The same run again may write there; another may not.
    ok(&run("set", &[]));
    let out = run("rigl", &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--export-clear"), "{}", stderr(&out));
    ok(&run("rigl", &["--export-clear"]));
    let index = std::fs::read_to_string(dir.join("step-000000005/index.json")).unwrap();
    assert!(index.contains("\"mode\": \"rigl\""), "{index}");
}

#[test]
fn a_mask_from_files_is_the_mask_a_static_run_keeps() {
    let (from, to) = (tmp("mask-from"), tmp("mask-to"));
    for d in [&from, &to] {
        let _ = std::fs::remove_dir_all(d);
    }
    ok(&short()
        .args(["--mode", "set", "--seed", "3", "--export"])
        .arg(&from)
        .output()
        .unwrap());
    ok(&short()
        .args(["--mode", "static", "--mask"])
        .arg(&from)
        .arg("--export")
        .arg(&to)
        .output()
        .unwrap());
    for layer in ["conv1", "conv2"] {
        let mask = |d: &std::path::Path| {
            read_npy(d.join(format!("{layer}.mask.npy")))
                .unwrap()
                .to_vec()
        };
        assert_eq!(mask(&from), mask(&to), "{layer}");
        let w = read_npy(to.join(format!("{layer}.weight.npy")))
            .unwrap()
            .to_vec();
        assert!(w.iter().zip(mask(&to)).all(|(w, m)| m == 1.0 || *w == 0.0));
    }
    // A folder without masks is named in the error.
    let out = short()
        .args(["--mode", "static", "--mask"])
        .arg(tmp("no-masks-here"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("conv1.mask.npy"), "{}", stderr(&out));
}

#[test]
fn a_diverging_run_is_recorded_and_says_what_it_kept() {
    let metrics = tmp("nan.jsonl");
    let _ = std::fs::remove_file(&metrics);
    let out = short()
        .args(["--mode", "dense", "--lr", "1e30", "--checkpoint"])
        .arg(tmp("nan.ckpt"))
        .arg("--metrics")
        .arg(&metrics)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("No checkpoint was saved by this run"), "{err}");
    assert!(!err.contains("is kept"), "{err}");
    let last = read_metrics(&metrics).pop().unwrap();
    assert_eq!(last["type"], "stopped", "{last}");
    assert_eq!(last["reason"], "non-finite loss");
}

#[test]
fn a_resume_with_fewer_epochs_than_done_is_refused() {
    let ckpt = tmp("fewer.ckpt");
    let args = |epochs: &str| {
        let mut c = Command::new(example());
        c.args([
            "--recipe",
            "notebook",
            "--limit-train",
            "40",
            "--limit-test",
            "20",
        ])
        .args(["--mode", "static", "--quiet", "--epochs", epochs]);
        c
    };
    ok(&args("2").arg("--checkpoint").arg(&ckpt).output().unwrap());
    let out = args("1").arg("--resume").arg(&ckpt).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("2 epochs done"), "{}", stderr(&out));
}

#[test]
fn rounding_and_absurd_values_are_said() {
    // 1 % of a 25-tap kernel rounds to its minimum of 1 tap: 4 %.
    let out = short()
        .args(["--mode", "static", "--density", "0.01"])
        .output()
        .unwrap();
    ok(&out);
    assert!(stderr(&out).contains("became 0.0400"), "{}", stderr(&out));
    let out = short().args(["--threads", "1000"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--threads 1000"), "{}", stderr(&out));
}

//! The sweep example: grid expansion and run names, refusals, a real sweep
//! on the bundled sample that skips its finished runs when run again, one
//! interrupted and restarted, a failed run, a Slurm task, and the Slurm
//! script. `cargo test` builds the examples first, so the sweep and cifar
//! binaries sit beside the test binaries.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{example_named, read_metrics, tmp};

fn sweep() -> Command {
    Command::new(example_named("sweep"))
}

/// A fresh, empty place for a sweep's folder.
fn fresh(name: &str) -> PathBuf {
    let out = tmp(name);
    let _ = std::fs::remove_dir_all(&out);
    out
}

/// The shortest real run, for every run of a sweep.
const SHORT: [&str; 7] = [
    "--recipe",
    "notebook",
    "--limit-train",
    "80",
    "--limit-test",
    "50",
    "--epochs",
];

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The types of a run's metrics lines.
fn types(out: &Path, run: &str) -> Vec<String> {
    read_metrics(&out.join("runs").join(run).join("metrics.jsonl"))
        .iter()
        .map(|l| l["type"].as_str().unwrap().to_string())
        .collect()
}

fn summaries(out: &Path, run: &str) -> usize {
    types(out, run).iter().filter(|t| *t == "summary").count()
}

#[test]
fn help_describes_the_grid_and_the_modes() {
    let out = sweep().arg("--help").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    for want in [
        "--grid",
        "--out",
        "--jobs",
        "--cifar",
        "--emit",
        "--task",
        "--status",
        "--list",
        "--partition",
        "--time",
        "--cpus-per-task",
        "--mem",
        "the last fastest",
    ] {
        assert!(help.contains(want), "--help lacks {want}:\n{help}");
    }
}

#[test]
fn the_grid_expands_in_a_fixed_order_with_names_labels_and_options() {
    let out_dir = fresh("sweep-list");
    let out = sweep()
        .args([
            "--grid",
            "mode=static,set seed=0,1",
            "--grid",
            "sparse-stem=true,false",
        ])
        .arg("--out")
        .arg(&out_dir)
        .args(["--list", "--", "--model", "resnet20", "--augment", "false"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let names: Vec<&str> = lines
        .iter()
        .step_by(2)
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    let mut want = Vec::new();
    for mode in ["static", "set"] {
        for seed in [0, 1] {
            for stem in [true, false] {
                want.push(format!("mode-{mode}_seed-{seed}_sparse-stem-{stem}"));
            }
        }
    }
    assert_eq!(names, want);
    // The label leaves out the seed, so the report puts seeds together.
    assert!(
        lines[0].ends_with("[label: mode=static sparse-stem=true]"),
        "{}",
        lines[0]
    );
    // A switch is given when true and left out when false; the options for
    // every run follow, then the sweep's own.
    let (on, off) = (lines[1], lines[3]);
    assert!(
        on.contains("--mode static --seed 0 --sparse-stem --model resnet20 --augment false"),
        "{on}"
    );
    assert!(
        off.contains("--mode static --seed 0 --model resnet20"),
        "{off}"
    );
    assert!(!off.contains("--sparse-stem"), "{off}");
    let run_dir = out_dir.join("runs/mode-static_seed-0_sparse-stem-true");
    for want in [
        format!("--metrics {}", run_dir.join("metrics.jsonl").display()),
        format!("--checkpoint {}", run_dir.join("checkpoint.ckpt").display()),
        "--label 'mode=static sparse-stem=true' --quiet --threads".to_string(),
    ] {
        assert!(on.contains(&want), "{on} lacks {want}");
    }
    assert!(!out_dir.exists(), "--list wrote {}", out_dir.display());
}

#[test]
fn threads_are_left_to_the_options_that_set_them() {
    let out = sweep()
        .args(["--grid", "seed=0", "--out"])
        .arg(fresh("sweep-threads"))
        .args(["--list", "--", "--threads", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("--threads").count(), 1, "{stdout}");
    // Only the seed varies: no label, so the cifar example's own (the mode).
    assert!(!stdout.contains("--label"), "{stdout}");
}

#[test]
fn bad_grids_and_owned_options_are_refused_with_a_message() {
    let cases: [(&[&str], &str); 11] = [
        (&["--grid", "mode=static,,set"], "empty value"),
        (&["--", "--epochs", "1"], "options after -- need"),
        (&["--grid", "mode=set mode=static"], "given twice"),
        (&["--grid", "mode"], "is not KEY=V1,V2"),
        (
            &["--grid", "no-such-option=1"],
            "no option --no-such-option",
        ),
        (&["--grid", "sparse-stem=yes"], "is a switch"),
        (&["--grid", "metrics=a.jsonl"], "set by the sweep"),
        (
            &["--grid", "seed=0", "--", "--metrics", "m.jsonl"],
            "--metrics is set by the sweep",
        ),
        (
            &["--grid", "seed=0", "--", "--checkpoint", "c"],
            "--checkpoint is set by the sweep",
        ),
        (
            &["--grid", "seed=0", "--", "--resume=c"],
            "--resume is set by the sweep",
        ),
        (
            &["--grid", "seed=0", "--", "--label", "x"],
            "--label is set by the sweep",
        ),
    ];
    let out_dir = fresh("sweep-bad");
    for (args, want) in cases {
        let out = sweep()
            .arg("--out")
            .arg(&out_dir)
            .arg("--list")
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let out = sweep().arg("--out").arg(&out_dir).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no sweep.json"));
}

#[test]
fn a_sweep_finishes_every_run_then_skips_them_all() {
    let out_dir = fresh("sweep-real");
    let run = || {
        sweep()
            .args(["--grid", "mode=static,set seed=0,1", "--jobs", "2", "--out"])
            .arg(&out_dir)
            .arg("--")
            .args(SHORT)
            .arg("1")
            .output()
            .unwrap()
    };
    let out = run();
    assert!(out.status.success(), "{}", text(&out));
    let names = [
        "mode-static_seed-0",
        "mode-static_seed-1",
        "mode-set_seed-0",
        "mode-set_seed-1",
    ];
    for name in names {
        let dir = out_dir.join("runs").join(name);
        assert!(dir.join("checkpoint.ckpt").is_file(), "{name}");
        assert!(dir.join("log.txt").is_file(), "{name}");
        let lines = read_metrics(&dir.join("metrics.jsonl"));
        assert_eq!(summaries(&out_dir, name), 1, "{name}");
        let mode = name.split('_').next().unwrap().replace('-', "=");
        assert_eq!(lines[0]["label"], mode.as_str(), "{name}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("done   [4/4] mode-set_seed-1: test accuracy"),
        "{stdout}"
    );
    assert!(out_dir.join("sweep.json").is_file());
    // The report script runs from any folder and draws the runs.
    let report = Command::new("sh")
        .arg(out_dir.join("report.sh"))
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(report.status.success(), "{}", text(&report));
    assert!(out_dir.join("report.html").is_file());

    // Again: everything is finished, nothing runs, nothing is appended.
    let before = std::fs::read(out_dir.join("runs/mode-set_seed-0/metrics.jsonl")).unwrap();
    let out = run();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("4 finished (skipped), 0 to resume, 0 to start"),
        "{stdout}"
    );
    assert!(!stdout.contains("start "), "{stdout}");
    let after = std::fs::read(out_dir.join("runs/mode-set_seed-0/metrics.jsonl")).unwrap();
    assert_eq!(before, after);
    let status = sweep()
        .arg("--out")
        .arg(&out_dir)
        .arg("--status")
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", text(&status));
}

#[test]
fn an_interrupted_sweep_resumes_and_each_run_has_one_summary() {
    let out_dir = fresh("sweep-interrupt");
    // Long enough (a few seconds) to be stopped in the middle.
    let start = || {
        sweep()
            .args(["--grid", "seed=0,1,2", "--jobs", "2", "--out"])
            .arg(&out_dir)
            .args([
                "--",
                "--recipe",
                "notebook",
                "--limit-test",
                "50",
                "--limit-train",
                "400",
            ])
            .args(["--epochs", "30", "--mode", "static"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let child = start();
    // Stop it once the first run has finished an epoch.
    let first = out_dir.join("runs/seed-0/metrics.jsonl");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&first).is_ok_and(|t| t.contains("\"epoch\"")) {
        assert!(
            Instant::now() < deadline,
            "the first run never finished an epoch"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on the child we spawned and have not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("stopped [1/3] seed-0 (it resumes from its checkpoint)"),
        "{stdout}"
    );
    assert_eq!(summaries(&out_dir, "seed-0"), 0);
    // --status says how far the stopped run got.
    let status = sweep()
        .arg("--out")
        .arg(&out_dir)
        .arg("--status")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(
        said.contains("0 seed-0: resumable from its checkpoint; epoch ")
            && said.contains(" done, test accuracy "),
        "{said}"
    );

    let out = start().wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("resume [1/3] seed-0"), "{stdout}");
    for name in ["seed-0", "seed-1", "seed-2"] {
        assert_eq!(summaries(&out_dir, name), 1, "{name}");
    }
    // The resumed part is marked so, and the report reads it as one run.
    let lines = read_metrics(&out_dir.join("runs/seed-0/metrics.jsonl"));
    let resumed: Vec<bool> = lines
        .iter()
        .filter(|l| l["type"] == "config")
        .map(|l| l["resumed"].as_bool().unwrap())
        .collect();
    assert_eq!(resumed, [false, true]);
}

#[test]
fn a_failed_run_is_reported_and_the_others_go_on() {
    let out_dir = fresh("sweep-fail");
    let out = sweep()
        .args(["--grid", "mode=no-such-mode,static", "--out"])
        .arg(&out_dir)
        .arg("--")
        .args(SHORT)
        .arg("1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let log = out_dir.join("runs/mode-no-such-mode/log.txt");
    assert!(
        err.contains(&format!("its log is {}", log.display())),
        "{err}"
    );
    assert!(err.contains("no-such-mode"), "{err}");
    assert_eq!(summaries(&out_dir, "mode-static"), 1);
}

/// Writes the Slurm script for `grid` into `out_dir`, every run the
/// shortest.
fn emit(out_dir: &Path, grid: &str) -> Output {
    sweep()
        .args(["--grid", grid, "--emit", "slurm", "--partition", "short"])
        .args(["--time", "1:00:00", "--out"])
        .arg(out_dir)
        .arg("--")
        .args(SHORT)
        .arg("1")
        .output()
        .unwrap()
}

#[test]
fn emit_slurm_writes_an_array_job_and_the_report_command() {
    let out_dir = fresh("sweep-slurm");
    let out = emit(&out_dir, "mode=static,set seed=0,1,2");
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("sbatch "));
    let script = std::fs::read_to_string(out_dir.join("sweep.sbatch")).unwrap();
    for want in [
        "#SBATCH --array=0-5\n",
        "#SBATCH --requeue\n",
        "#SBATCH --signal=B:USR1@120\n",
        "#SBATCH --partition=short\n",
        "#SBATCH --time=1:00:00\n",
        "#SBATCH --cpus-per-task=2\n",
        "--task \"$SLURM_ARRAY_TASK_ID\"",
        "scontrol requeue",
    ] {
        assert!(script.contains(want), "the script lacks {want}:\n{script}");
    }
    let report = std::fs::read_to_string(out_dir.join("report.sh")).unwrap();
    assert!(
        report.contains(" runs/*/metrics.jsonl -o report.html"),
        "{report}"
    );
    // Relative paths only: the folder can be committed or moved.
    assert!(!report.contains(&*out_dir.to_string_lossy()), "{report}");
    for (shell, file) in [("bash", "sweep.sbatch"), ("sh", "report.sh")] {
        let ok = Command::new(shell)
            .arg("-n")
            .arg(out_dir.join(file))
            .status();
        assert!(ok.is_ok_and(|s| s.success()), "{file} is not valid {shell}");
    }
    // Nothing ran.
    assert!(!out_dir.join("runs").exists());
}

#[test]
fn a_slurm_task_runs_its_one_run_and_nothing_once_finished() {
    let out_dir = fresh("sweep-task");
    let out = emit(&out_dir, "mode=static,set seed=0,1,2");
    assert!(out.status.success(), "{}", text(&out));
    let task = |i: &str| {
        sweep()
            .arg("--out")
            .arg(&out_dir)
            .args(["--task", i])
            .output()
            .unwrap()
    };
    let out = task("4");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(summaries(&out_dir, "mode-set_seed-1"), 1);
    assert!(!out_dir.join("runs/mode-set_seed-0").exists());
    let out = task("4");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing to do"),
        "{}",
        text(&out)
    );
    assert_eq!(summaries(&out_dir, "mode-set_seed-1"), 1);
    assert_eq!(task("6").status.code(), Some(2));
    let status = sweep()
        .arg("--out")
        .arg(&out_dir)
        .arg("--status")
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(1), "{}", text(&status));
}

#[test]
fn another_grid_or_other_options_for_the_same_folder_are_refused() {
    let out_dir = fresh("sweep-changed");
    let out = emit(&out_dir, "mode=static,set seed=0,1,2");
    assert!(out.status.success(), "{}", text(&out));
    // The same command again is the same sweep.
    let out = emit(&out_dir, "mode=static,set seed=0,1,2");
    assert!(out.status.success(), "{}", text(&out));
    let out = emit(&out_dir, "mode=static,set seed=0,1");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "grid: recorded 'mode=static,set seed=0,1,2', given 'mode=static,set seed=0,1'"
        ),
        "{err}"
    );
    let out = sweep()
        .args(["--grid", "mode=static,set seed=0,1,2", "--out"])
        .arg(&out_dir)
        .args(["--list", "--", "--epochs", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("options for every run: recorded '--recipe notebook"),
        "{err}"
    );
}

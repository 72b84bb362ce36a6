//! One run's folder, `DIR/runs/NAME/`: its files, what they say about the
//! run (finished, resumable, or not started), and the cifar command that
//! starts or resumes it.
//!
//! A run is finished when its metrics file has a summary line (the cifar
//! example writes it last). It is resumable when it has a checkpoint and no
//! summary: the cifar example saves one after each epoch and when it is
//! stopped by Ctrl-C or SIGTERM, and `--resume` continues it bit for bit,
//! appending to the same metrics file (the report reads the resumed part as
//! the same run).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::manifest::Run;

/// Where a run stands, read from its files.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum State {
    /// The metrics have a summary; the test accuracy it gives, if any.
    Finished(Option<f64>),
    /// A checkpoint and no summary: continue with `--resume`.
    Resumable,
    /// Nothing to continue from.
    New,
}

/// The files of one run.
pub struct RunDir {
    pub dir: PathBuf,
}

impl RunDir {
    pub fn new(out: &Path, run: &Run) -> RunDir {
        RunDir {
            dir: out.join("runs").join(&run.name),
        }
    }

    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.jsonl")
    }

    pub fn checkpoint(&self) -> PathBuf {
        self.dir.join("checkpoint.ckpt")
    }

    /// The run's stdout and stderr, each attempt appended.
    pub fn log(&self) -> PathBuf {
        self.dir.join("log.txt")
    }

    pub fn state(&self) -> State {
        if let Some(acc) = summary(&self.metrics()) {
            State::Finished(acc)
        } else if self.checkpoint().is_file() {
            State::Resumable
        } else {
            State::New
        }
    }

    /// Makes the folder ready for an attempt and opens its log. A run that
    /// starts anew (no checkpoint) first empties a metrics file left by an
    /// attempt that saved nothing, so that the report does not read that
    /// attempt as a run of its own.
    pub fn prepare(&self, state: State, command: &[String]) -> Result<File, String> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot make {}: {e}", self.dir.display()))?;
        if state == State::New && self.metrics().exists() {
            File::create(self.metrics())
                .map_err(|e| format!("cannot empty {}: {e}", self.metrics().display()))?;
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .map_err(|e| format!("cannot open {}: {e}", self.log().display()))?;
        let what = if state == State::Resumable {
            "resumes"
        } else {
            "starts"
        };
        writeln!(log, "== sweep: the run {what}: cifar {}", command.join(" "))
            .map_err(|e| format!("cannot write {}: {e}", self.log().display()))?;
        Ok(log)
    }

    /// The cifar options of one attempt: the run's grid options, those for
    /// every run, then the sweep's own. `threads` is `None` when the run's
    /// options already set it.
    pub fn command(
        &self,
        run: &Run,
        base: &[String],
        state: State,
        threads: Option<usize>,
    ) -> Vec<String> {
        let mut args: Vec<String> = run.args.iter().chain(base).cloned().collect();
        let path = |p: PathBuf| p.display().to_string();
        args.extend(["--metrics".into(), path(self.metrics())]);
        args.extend(["--checkpoint".into(), path(self.checkpoint())]);
        if state == State::Resumable {
            args.extend(["--resume".into(), path(self.checkpoint())]);
        }
        if let Some(label) = &run.label {
            args.extend(["--label".into(), label.clone()]);
        }
        if !sets(&args, "quiet") {
            args.push("--quiet".into());
        }
        if let Some(n) = threads.filter(|_| !sets(&args, "threads")) {
            args.extend(["--threads".into(), n.to_string()]);
        }
        args
    }

    /// The last lines of the log, for a failure's message.
    pub fn log_tail(&self, lines: usize) -> Vec<String> {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let from = all.len().saturating_sub(lines);
        all[from..].iter().map(|l| l.to_string()).collect()
    }
}

/// Whether the options set `--name` (alone or as `--name=value`).
pub fn sets(args: &[String], name: &str) -> bool {
    let flag = format!("--{name}");
    args.iter()
        .any(|a| *a == flag || a.strip_prefix(&flag).is_some_and(|r| r.starts_with('=')))
}

/// The test accuracy of the summary line of a metrics file: `None` when
/// there is no summary, `Some(None)` when the summary gives no accuracy.
/// Lines that are not whole JSON (a write cut short) are skipped.
fn summary(metrics: &Path) -> Option<Option<f64>> {
    let text = std::fs::read_to_string(metrics).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "summary")
        .map(|v| v["test_accuracy"].as_f64())
}

/// The last epoch a metrics file reports and its test accuracy, if any
/// (lines that are not whole JSON are skipped).
fn last_epoch(metrics: &Path) -> Option<(u64, Option<f64>)> {
    let text = std::fs::read_to_string(metrics).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "epoch")
        .and_then(|v| Some((v["epoch"].as_u64()?, v["test_accuracy"].as_f64())))
}

impl RunDir {
    /// How far a run that has not finished got, in a few words ("epoch 7
    /// done, test accuracy 72.00 %"), from its metrics; empty when they
    /// report no epoch yet.
    pub fn progress(&self) -> String {
        match last_epoch(&self.metrics()) {
            Some((e, Some(acc))) => format!("epoch {e} done, test accuracy {:.2} %", 100.0 * acc),
            Some((e, None)) => format!("epoch {e} done"),
            None => String::new(),
        }
    }
}

/// A state in a few words, for the sweep's lines.
pub fn describe(state: State) -> String {
    match state {
        State::Finished(Some(acc)) => format!("finished, test accuracy {:.2} %", 100.0 * acc),
        State::Finished(None) => "finished".into(),
        State::Resumable => "resumable from its checkpoint".into(),
        State::New => "not started".into(),
    }
}

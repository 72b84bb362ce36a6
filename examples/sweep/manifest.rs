//! `DIR/sweep.json`: what a sweep is (its grid and the options every run
//! gets) and the runs it makes, written when a sweep starts and read back by
//! every later command on the same folder, a Slurm task's included.
//!
//! The grid and the base options are the sweep's identity: a command that
//! gives others for the same folder is refused, saying what differs, so that
//! one folder never mixes runs of two studies. The runs (name, label, and
//! the cifar options their grid values make) are derived, and stored so that
//! a Slurm task need not derive them again.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::grid::{Axis, Grid};

/// The format's version, checked on reading.
const VERSION: u64 = 1;

/// One run of the sweep, as the manifest lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    /// Names the run's folder, `DIR/runs/NAME`.
    pub name: String,
    /// Passed as `--label`; `None` leaves the cifar example's own.
    pub label: Option<String>,
    /// The cifar options the run's grid values make.
    pub args: Vec<String>,
}

/// A sweep: its grid, the options given to every run, and its runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    pub grid: Grid,
    pub base: Vec<String>,
    pub runs: Vec<Run>,
}

/// The manifest's path in the sweep's folder.
pub fn path(out: &Path) -> PathBuf {
    out.join("sweep.json")
}

impl Manifest {
    /// The manifest as JSON text.
    fn to_json(&self) -> String {
        let grid: Vec<Value> = self
            .grid
            .axes
            .iter()
            .map(|a| json!({"key": a.key, "values": a.values}))
            .collect();
        let runs: Vec<Value> = self
            .runs
            .iter()
            .enumerate()
            .map(|(i, r)| json!({"index": i, "name": r.name, "label": r.label, "args": r.args}))
            .collect();
        let v = json!({
            "sweep": VERSION,
            "grid": grid,
            "base": self.base,
            "runs": runs,
        });
        // Pretty, so that a person can read which run is which array task.
        serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string()) + "\n"
    }

    /// Reads `DIR/sweep.json`; `Ok(None)` when there is none.
    pub fn read(out: &Path) -> Result<Option<Manifest>, String> {
        let p = path(out);
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", p.display())),
        };
        let bad = |what: &str| format!("{}: {what}; it is not a sweep manifest", p.display());
        let v: Value = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
        if v["sweep"].as_u64() != Some(VERSION) {
            return Err(bad("no \"sweep\": 1"));
        }
        let axes = v["grid"]
            .as_array()
            .ok_or_else(|| bad("no \"grid\" list"))?
            .iter()
            .map(|a| {
                Some(Axis {
                    key: a["key"].as_str()?.to_string(),
                    values: strings(&a["values"])?,
                })
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("a grid key without a name or values"))?;
        let base = strings(&v["base"]).ok_or_else(|| bad("no \"base\" list of strings"))?;
        let runs = v["runs"]
            .as_array()
            .ok_or_else(|| bad("no \"runs\" list"))?
            .iter()
            .map(|r| {
                Some(Run {
                    name: r["name"].as_str()?.to_string(),
                    label: r["label"].as_str().map(str::to_string),
                    args: strings(&r["args"])?,
                })
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("a run without a name or options"))?;
        Ok(Some(Manifest {
            grid: Grid { axes },
            base,
            runs,
        }))
    }

    /// Writes `DIR/sweep.json` whole or not at all: into a temporary file
    /// first, then renamed over the old one.
    pub fn write(&self, out: &Path) -> Result<(), String> {
        let p = path(out);
        let tmp = out.join("sweep.json.tmp");
        std::fs::write(&tmp, self.to_json())
            .and_then(|_| std::fs::rename(&tmp, &p))
            .map_err(|e| format!("cannot write {}: {e}", p.display()))
    }

    /// Why `given` (from this command) is not the sweep recorded in `self`,
    /// or `None` when it is the same sweep.
    pub fn differs(&self, given: &Manifest, out: &Path) -> Option<String> {
        let mut lines = Vec::new();
        if self.grid != given.grid {
            lines.push(format!(
                "  grid: recorded '{}', given '{}'",
                self.grid.spec(),
                given.grid.spec()
            ));
        }
        if self.base != given.base {
            lines.push(format!(
                "  options for every run: recorded '{}', given '{}'",
                self.base.join(" "),
                given.base.join(" ")
            ));
        }
        if lines.is_empty() && self.runs != given.runs {
            // Same words, other runs: the cifar binary reads a value
            // differently (a switch that became an option, say).
            lines.push("  the runs these make (their options) differ".into());
        }
        (!lines.is_empty()).then(|| {
            format!(
                "{} holds another sweep:\n{}\nUse another --out for a new sweep, or give the \
                 recorded grid and options (or neither: `sweep --out {}` continues the \
                 recorded sweep)",
                path(out).display(),
                lines.join("\n"),
                out.display()
            )
        })
    }
}

/// A JSON list of strings.
fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|s| s.as_str().map(str::to_string))
        .collect()
}

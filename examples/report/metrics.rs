//! Metrics files: the JSON lines the cifar example writes with `--metrics`,
//! read into one [`Run`] per training run; runs grouped by mode (or by a
//! config "label") with statistics across seeds.
//!
//! A file may hold several runs in sequence (config … summary). A resumed run
//! appends a config line with `"resumed": true` and continues the run before
//! it, repeating some steps; the later value of a step wins. Unknown line
//! types and unknown keys are skipped, so newer files still load. A last
//! line that is not JSON at all is a write cut short (a killed run, a full
//! disk): it is skipped with a warning; anywhere else it is an error.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

/// One layer's mask update at one progress step.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub revived: f64,
    pub regrown: f64,
    pub dropped: f64,
    /// Active connections kept from before the update, when the line says.
    pub kept: Option<f64>,
    /// Regrown connections that were active before (dropped and grown back
    /// by the same update), when the line says.
    pub reset: Option<f64>,
    pub active: f64,
}

impl Progress {
    /// Connections active just before the update: those it kept and those
    /// it dropped (revived and regrown ones were inactive). Without `kept`,
    /// the active count after it, which equals it when the rule keeps the
    /// density constant.
    pub fn active_before(&self) -> f64 {
        self.kept.map_or(self.active, |k| k + self.dropped)
    }
}

/// The last line of a finished run.
#[derive(Debug)]
pub struct Summary {
    pub test_accuracy: Option<f64>,
    /// Active fraction of each sparse conv layer; empty for a dense run.
    pub conv_density: Vec<f64>,
    pub train_seconds: Option<f64>,
    pub images_per_second: Option<f64>,
    /// Number of classes, from the length of `per_class_accuracy`.
    pub classes: Option<usize>,
}

/// One training run: everything from its config line to its summary.
#[derive(Debug)]
pub struct Run {
    pub mode: Option<String>,
    pub label: Option<String>,
    pub seed: Option<u64>,
    /// step → mean training loss since the previous log line.
    pub loss: BTreeMap<u64, f64>,
    /// epoch → test accuracy (a fraction) at the end of that epoch.
    pub accuracy: BTreeMap<u64, f64>,
    /// epoch → the step it ended at, to place steps on an epoch axis.
    pub epoch_steps: BTreeMap<u64, u64>,
    /// Per sparse layer, in the order first seen: step → mask update.
    pub progress: Vec<(String, BTreeMap<u64, Progress>)>,
    pub summary: Option<Summary>,
}

impl Run {
    fn new(mode: Option<String>, label: Option<String>, seed: Option<u64>) -> Run {
        Run {
            mode,
            label,
            seed,
            loss: BTreeMap::new(),
            accuracy: BTreeMap::new(),
            epoch_steps: BTreeMap::new(),
            progress: Vec::new(),
            summary: None,
        }
    }

    /// The name runs are grouped under: the config's label, else the mode.
    pub fn group(&self) -> &str {
        self.label
            .as_deref()
            .or(self.mode.as_deref())
            .unwrap_or("unknown mode")
    }

    pub fn seed_name(&self) -> String {
        match self.seed {
            Some(s) => format!("seed {s}"),
            None => "seed ?".to_string(),
        }
    }

    /// Test accuracy at the end: the summary's, else the last epoch's.
    pub fn final_accuracy(&self) -> Option<f64> {
        self.summary
            .as_ref()
            .and_then(|s| s.test_accuracy)
            .or_else(|| self.accuracy.values().next_back().copied())
    }

    /// The steps at which the masks were updated (any layer).
    pub fn update_steps(&self) -> impl Iterator<Item = u64> + '_ {
        self.progress
            .iter()
            .flat_map(|(_, steps)| steps.keys().copied())
    }

    /// Training steps per epoch, from the epoch lines' steps.
    pub fn steps_per_epoch(&self) -> Option<f64> {
        let (&epoch, &step) = self.epoch_steps.iter().next()?;
        (epoch > 0 && step > 0).then(|| step as f64 / epoch as f64)
    }

    pub fn layer(&self, name: &str) -> Option<&BTreeMap<u64, Progress>> {
        self.progress
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, steps)| steps)
    }

    fn layer_mut(&mut self, name: &str) -> &mut BTreeMap<u64, Progress> {
        let i = match self.progress.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                self.progress.push((name.to_string(), BTreeMap::new()));
                self.progress.len() - 1
            }
        };
        &mut self.progress[i].1
    }

    fn is_empty(&self) -> bool {
        self.loss.is_empty()
            && self.accuracy.is_empty()
            && self.progress.is_empty()
            && self.summary.is_none()
    }
}

/// A field that must be there and be a number; `null` (how JSON writers
/// spell NaN) reads as None.
fn number(obj: &Map<String, Value>, key: &str, at: &str) -> Result<Option<f64>, String> {
    match obj.get(key) {
        Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("{at}: \"{key}\" is not a number")),
        None => Err(format!("{at}: no \"{key}\"")),
    }
}

/// A field that must be a whole number ≥ 0 (steps, epochs).
fn count(obj: &Map<String, Value>, key: &str, at: &str) -> Result<u64, String> {
    match obj.get(key) {
        Some(v) => v
            .as_u64()
            .ok_or_else(|| format!("{at}: \"{key}\" is not a whole number")),
        None => Err(format!("{at}: no \"{key}\"")),
    }
}

fn text(obj: &Map<String, Value>, key: &str) -> Option<String> {
    obj.get(key).and_then(Value::as_str).map(str::to_string)
}

/// Reads every run of one metrics file. Errors name the file and line.
pub fn read_metrics(path: &Path) -> Result<Vec<Run>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let content = String::from_utf8(bytes)
        .map_err(|_| format!("{}: not UTF-8 text (expected JSON lines)", path.display()))?;
    let mut runs = Vec::new();
    let mut current: Option<Run> = None;
    let lines: Vec<&str> = content.lines().collect();
    let last = lines.iter().rposition(|l| !l.trim().is_empty());
    for (i, line) in lines.into_iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let value: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            // The writer appends whole lines, so only the last can be cut
            // short (the run was killed mid-write, or the disk filled up):
            // the lines before it are still good.
            Err(e) if Some(i) == last => {
                eprintln!("warning: {at}: skipped the last line, which is not whole JSON ({e}); the run that wrote it was probably cut short");
                continue;
            }
            Err(e) => return Err(format!("{at}: malformed JSON: {e}")),
        };
        let obj = value
            .as_object()
            .ok_or_else(|| format!("{at}: expected a JSON object, found {line:.40}"))?;
        let kind = obj
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{at}: no \"type\" string"))?;
        match kind {
            "config" => {
                let mode = text(obj, "mode");
                let label = text(obj, "label").filter(|l| !l.is_empty());
                let seed = obj.get("seed").and_then(Value::as_u64);
                let resumed = obj.get("resumed").and_then(Value::as_bool) == Some(true);
                // A resumed run continues the unfinished run before it.
                let continues = resumed
                    && current
                        .as_ref()
                        .is_some_and(|r| r.mode == mode && r.seed == seed);
                if !continues {
                    runs.extend(current.take());
                    current = Some(Run::new(mode, label, seed));
                }
            }
            "log" => {
                let step = count(obj, "step", &at)?;
                if let Some(loss) = number(obj, "loss", &at)? {
                    open(&mut current).loss.insert(step, loss);
                }
            }
            "progress" => {
                let step = count(obj, "step", &at)?;
                let layer =
                    text(obj, "layer").ok_or_else(|| format!("{at}: no \"layer\" string"))?;
                let field = |key| number(obj, key, &at).map(|v| v.unwrap_or(f64::NAN));
                let update = Progress {
                    revived: field("revived")?,
                    regrown: field("regrown")?,
                    dropped: field("dropped")?,
                    kept: obj.get("kept").and_then(Value::as_f64),
                    reset: obj.get("reset").and_then(Value::as_f64),
                    active: field("active")?,
                };
                open(&mut current).layer_mut(&layer).insert(step, update);
            }
            "epoch" => {
                let epoch = count(obj, "epoch", &at)?;
                let run = open(&mut current);
                // The PyTorch reference scripts write epoch lines only,
                // each naming its framework and seed.
                if run.mode.is_none() && run.label.is_none() {
                    run.label = text(obj, "framework");
                }
                if run.seed.is_none() {
                    run.seed = obj.get("seed").and_then(Value::as_u64);
                }
                if let Some(step) = obj.get("step").and_then(Value::as_u64) {
                    run.epoch_steps.insert(epoch, step);
                }
                if let Some(acc) = number(obj, "test_accuracy", &at)? {
                    run.accuracy.insert(epoch, acc);
                }
            }
            "summary" => {
                let conv_density = match obj.get("conv_density") {
                    None => Vec::new(),
                    Some(Value::Array(v)) => v.iter().filter_map(Value::as_f64).collect(),
                    Some(_) => return Err(format!("{at}: \"conv_density\" is not a list")),
                };
                let summary = Summary {
                    test_accuracy: number(obj, "test_accuracy", &at)?,
                    conv_density,
                    train_seconds: obj.get("train_seconds").and_then(Value::as_f64),
                    images_per_second: obj.get("train_images_per_second").and_then(Value::as_f64),
                    classes: obj
                        .get("per_class_accuracy")
                        .and_then(Value::as_array)
                        .map(Vec::len)
                        .filter(|&n| n > 0),
                };
                let mut run = current.take().unwrap_or_else(|| Run::new(None, None, None));
                // A file without a config line still says what ran here.
                if run.mode.is_none() {
                    run.mode = text(obj, "mode");
                }
                if run.label.is_none() {
                    run.label = text(obj, "label").filter(|l| !l.is_empty());
                }
                if run.seed.is_none() {
                    run.seed = obj.get("seed").and_then(Value::as_u64);
                }
                run.summary = Some(summary);
                runs.push(run);
            }
            _ => {} // a newer writer's line type: not ours to judge
        }
    }
    runs.extend(current);
    runs.retain(|r| !r.is_empty());
    Ok(runs)
}

/// The run lines go into: the open one, or a new one if the file starts
/// without a config line.
fn open(current: &mut Option<Run>) -> &mut Run {
    current.get_or_insert_with(|| Run::new(None, None, None))
}

/// Runs sharing a mode (or label), in the order first seen.
pub struct Group<'a> {
    pub name: String,
    pub runs: Vec<&'a Run>,
}

impl Group<'_> {
    /// Mask update steps of any of the group's runs, in order.
    pub fn update_steps(&self) -> std::collections::BTreeSet<u64> {
        self.runs.iter().flat_map(|r| r.update_steps()).collect()
    }

    /// Sparse layer names across the group's runs, in the order first seen.
    pub fn layers(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for run in &self.runs {
            for (name, _) in &run.progress {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        names
    }
}

pub fn group_runs(runs: &[Run]) -> Vec<Group<'_>> {
    let mut groups: Vec<Group> = Vec::new();
    for run in runs {
        match groups.iter_mut().find(|g| g.name == run.group()) {
            Some(g) => g.runs.push(run),
            None => groups.push(Group {
                name: run.group().to_string(),
                runs: vec![run],
            }),
        }
    }
    groups
}

/// Mean, min and max across runs at one x.
pub struct Stat {
    pub x: f64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

/// Statistics across series at every x any of them has (a run that stopped
/// early simply stops contributing).
pub fn across<'a>(series: impl IntoIterator<Item = &'a BTreeMap<u64, f64>>) -> Vec<Stat> {
    let mut at: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for s in series {
        for (&x, &v) in s {
            if v.is_finite() {
                at.entry(x).or_default().push(v);
            }
        }
    }
    at.into_iter()
        .map(|(x, vs)| Stat {
            x: x as f64,
            mean: vs.iter().sum::<f64>() / vs.len() as f64,
            min: vs.iter().copied().fold(f64::INFINITY, f64::min),
            max: vs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
        .collect()
}

/// Mean and sample standard deviation (0 for a single value).
pub fn mean_std(values: &[f64]) -> Option<(f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    Some((mean, var.sqrt()))
}

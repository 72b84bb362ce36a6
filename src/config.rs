//! A run's settings: the network, the mode (dense, or a preset prune/grow
//! rule), the recipe's numbers and every part of the rule, with their
//! checks, and the list of settings a checkpoint must match.
//!
//! [`crate::recipe`] fills in a recipe's values; the CIFAR example then
//! applies the options given on its command line.

use std::str::FromStr;

use cifar::{BatchConfig, Normalize};
use sparse_conv::model::{Arch, ModelSpec, Sparsity};
use sparse_conv::rules::Allocation;
use sparse_conv::strength::{Measure, Method, StrengthConfig};
use sparse_conv::{ConvPath, DSConfig, PruneDims, Rule};

/// The settings entry for the size of the training set, which `--data` and
/// `--limit-train` decide.
pub const TRAIN_IMAGES_KEY: &str = "training images (--data, --limit-train)";

/// A setting's key for JSON: the option without its dashes, `-` as `_`
/// (`--batch-size` is `batch_size`); the training set size is `train_images`.
pub fn json_key(key: &str) -> String {
    if key == TRAIN_IMAGES_KEY {
        return "train_images".into();
    }
    key.trim_start_matches("--").replace('-', "_")
}

/// The notebook's logging and progress interval, in batches.
pub const NOTEBOOK_INTERVAL: usize = 2000;

/// The network and rule a run trains: dense, or a preset prune/grow rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Plain Conv2d layers.
    Dense,
    /// The notebook's rule: all taps ranked by Hebbian strength.
    Hebbian,
    /// The notebook's schedule and counts, random prune and growth.
    Random,
    /// A random mask fixed at the start.
    Static,
    /// Magnitude prune, Hebbian growth, zero init.
    HebbianGrow,
    /// Magnitude prune, random growth (SET).
    Set,
    /// Magnitude prune, gradient growth, cosine drop fraction (RigL).
    Rigl,
    /// Hebbian growth that never grows back the taps the same update
    /// dropped.
    HebbianGrowFresh,
    /// RigL whose growth ranks by strength × |gradient|.
    HebbianRigl,
}

impl Mode {
    pub const ALL: [Mode; 9] = [
        Mode::Dense,
        Mode::Hebbian,
        Mode::Random,
        Mode::Static,
        Mode::HebbianGrow,
        Mode::Set,
        Mode::Rigl,
        Mode::HebbianGrowFresh,
        Mode::HebbianRigl,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Dense => "dense",
            Mode::Hebbian => "hebbian",
            Mode::Random => "random",
            Mode::Static => "static",
            Mode::HebbianGrow => "hebbian-grow",
            Mode::Set => "set",
            Mode::Rigl => "rigl",
            Mode::HebbianGrowFresh => "hebbian-grow-fresh",
            Mode::HebbianRigl => "hebbian-rigl",
        }
    }

    /// The preset's rule; `None` for dense.
    pub fn rule(self) -> Option<Rule> {
        Some(match self {
            Mode::Dense => return None,
            Mode::Hebbian => Rule::notebook(),
            Mode::Random => Rule::random(),
            Mode::Static => Rule::static_mask(),
            Mode::HebbianGrow => Rule::hebbian_grow(),
            Mode::Set => Rule::set(),
            Mode::Rigl => Rule::rigl(),
            Mode::HebbianGrowFresh => Rule::hebbian_grow_fresh(),
            Mode::HebbianRigl => Rule::hebbian_rigl(),
        })
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
                format!("unknown mode {s:?}: expected {}", names.join(", "))
            })
    }
}

/// How the learning rate moves over training.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LrSchedule {
    Constant,
    /// lr · ½(1 + cos(π · step / total steps)).
    Cosine,
}

impl FromStr for LrSchedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "constant" => Ok(LrSchedule::Constant),
            "cosine" => Ok(LrSchedule::Cosine),
            _ => Err(format!(
                "unknown lr schedule {s:?}: expected constant or cosine"
            )),
        }
    }
}

impl LrSchedule {
    pub fn name(self) -> &'static str {
        match self {
            LrSchedule::Constant => "constant",
            LrSchedule::Cosine => "cosine",
        }
    }
}

/// The input normalisation, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Normalization {
    /// (x/255 − 0.5)/0.5 per channel: the notebook's.
    Half,
    /// The CIFAR-10 training set's channel means and deviations: the
    /// ResNets'.
    Cifar10,
}

impl Normalization {
    pub fn name(self) -> &'static str {
        match self {
            Normalization::Half => "half",
            Normalization::Cifar10 => "cifar10",
        }
    }

    pub fn values(self) -> Normalize {
        match self {
            Normalization::Half => Normalize::HALF,
            Normalization::Cifar10 => Normalize::CIFAR10,
        }
    }
}

impl FromStr for Normalization {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "half" => Ok(Normalization::Half),
            "cifar10" => Ok(Normalization::Cifar10),
            _ => Err(format!(
                "unknown normalisation {s:?}: expected half or cifar10"
            )),
        }
    }
}

/// Everything that decides a run's numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// The network (and for the ResNets, its shortcut and extra sparse
    /// layers).
    pub model: ModelSpec,
    pub mode: Mode,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f32,
    pub lr_schedule: LrSchedule,
    pub momentum: f32,
    /// L2 weight decay, on every parameter, batch norm's γ and β included
    /// (as `torch.optim.SGD(model.parameters(), weight_decay=…)` does in the
    /// usual CIFAR ResNet recipes).
    pub weight_decay: f32,
    /// Batches between mask updates; `None` is the notebook's 2,000, or a
    /// quarter epoch when an epoch is shorter than that.
    pub progress_every: Option<usize>,
    /// Batches between loss lines; `None` as for `progress_every`.
    pub log_every: Option<usize>,
    /// The prune/grow rule of the sparse modes (ignored by dense).
    pub rule: Rule,
    pub keep_fraction: f64,
    /// The target fraction of active weights: of each group (uniform
    /// allocation), or over all the sparse layers (ERK). `--density`.
    pub total_fraction: f64,
    pub prune_dims: PruneDims,
    pub allocation: Allocation,
    pub update_interval: u64,
    pub strength: Measure,
    /// How strength is computed; every method gives the same coactivation
    /// counts, so this only changes the speed (bitcount is fastest on CIFAR).
    pub strength_method: Method,
    /// A unit is active when its value is above this (coactivation only).
    pub threshold: f32,
    /// Sparse or dense kernels for the sparse layers.
    pub conv_path: ConvPath,
    pub seed: u64,
    pub normalize: Normalization,
    pub augment: bool,
    /// A folder of masks to start from (`LAYER.mask.npy`, as an export
    /// writes them); `None` starts from the rule's own.
    pub mask: Option<std::path::PathBuf>,
}

impl Default for TrainConfig {
    /// The notebook's LeNet, recipe and rule.
    fn default() -> Self {
        TrainConfig::for_mode(Mode::Hebbian)
    }
}

impl TrainConfig {
    /// The notebook's LeNet and recipe with `mode`'s preset rule.
    pub fn for_mode(mode: Mode) -> TrainConfig {
        let ds = DSConfig::default();
        TrainConfig {
            model: ModelSpec::new(Arch::LeNet),
            mode,
            epochs: 2,
            batch_size: 4,
            lr: 0.001,
            lr_schedule: LrSchedule::Constant,
            momentum: 0.9,
            weight_decay: 0.0,
            progress_every: None,
            log_every: None,
            rule: mode.rule().unwrap_or_default(),
            keep_fraction: ds.keep_fraction,
            total_fraction: ds.total_fraction,
            prune_dims: ds.prune_dims,
            allocation: Allocation::Uniform,
            update_interval: ds.update_interval,
            strength: Measure::Coactivation,
            strength_method: Method::Bitcount,
            threshold: 0.0,
            conv_path: ConvPath::Auto,
            seed: 0,
            normalize: Normalization::Half,
            augment: false,
            mask: None,
        }
    }

    pub(crate) fn batch_config(&self) -> BatchConfig {
        BatchConfig {
            batch_size: self.batch_size,
            shuffle: true,
            seed: self.seed,
            normalize: self.normalize.values(),
            augment: self.augment,
            drop_last: false,
        }
    }

    /// The sparse layers' settings; `None` for dense.
    pub fn sparsity(&self) -> Option<Sparsity> {
        self.mode.rule()?;
        Some(Sparsity {
            config: DSConfig {
                keep_fraction: self.keep_fraction,
                total_fraction: self.total_fraction,
                prune_dims: self.prune_dims,
                update_interval: self.update_interval,
                strength: StrengthConfig {
                    measure: self.strength,
                    method: self.strength_method,
                    threshold: self.threshold,
                },
                rule: self.rule,
                path: self.conv_path,
            },
            allocation: self.allocation,
        })
    }

    /// Checks the settings a run cannot start with; the message names the
    /// command-line option.
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_size == 0 || self.epochs == 0 || self.update_interval == 0 {
            return Err("--batch-size, --epochs and --update-interval must be at least 1".into());
        }
        if self.progress_every == Some(0) || self.log_every == Some(0) {
            return Err("--progress-every and --log-every must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!("--lr must be a positive number, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(format!(
                "--momentum must be in [0, 1), got {}",
                self.momentum
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(format!(
                "--weight-decay must be ≥ 0, got {}",
                self.weight_decay
            ));
        }
        let m = &self.model;
        if !m.arch.is_resnet() && (m.sparse_stem || m.sparse_projection || m.sparse_classifier) {
            return Err(
                "--sparse-stem, --sparse-projection and --sparse-classifier are for the ResNets; \
                 the LeNet's two convolutions are its sparse layers"
                    .into(),
            );
        }
        if m.sparse_projection && m.shortcut != sparse_conv::Shortcut::B {
            return Err("--sparse-projection needs projection shortcuts (--shortcut b)".into());
        }
        if self.mode == Mode::Dense {
            return Ok(());
        }
        if !(self.keep_fraction > 0.0
            && self.keep_fraction <= self.total_fraction
            && self.total_fraction <= 1.0)
        {
            return Err(format!(
                "want 0 < --keep-fraction ≤ --density ≤ 1, got {} and {}",
                self.keep_fraction, self.total_fraction
            ));
        }
        self.rule.validate()?;
        if self.allocation == Allocation::Erk && self.prune_dims != PruneDims::Layer {
            return Err(
                "--allocation erk spreads density across whole layers: use it with --prune-dims layer"
                    .into(),
            );
        }
        if self.threshold.is_nan() {
            return Err("--threshold must be a number".into());
        }
        Ok(())
    }

    /// The interval actually used, given how many batches an epoch has.
    pub fn interval(explicit: Option<usize>, batches_per_epoch: usize) -> usize {
        explicit.unwrap_or_else(|| NOTEBOOK_INTERVAL.min((batches_per_epoch / 4).max(1)))
    }

    /// Batches in an epoch of `train_len` images.
    pub fn batches_per_epoch(&self, train_len: usize) -> usize {
        train_len.div_ceil(self.batch_size.max(1))
    }

    /// Every setting that decides the run's numbers, as (option name as the
    /// command line spells it, value). Defaults are resolved, so an option
    /// given at its default value reads the same as one left out. `--epochs`
    /// is not here: a resumed run may train for longer.
    pub fn settings(&self, train_len: usize) -> Vec<(&'static str, Setting)> {
        use Setting::{Bool, Float, Int, Text};
        let per_epoch = self.batches_per_epoch(train_len);
        let m = &self.model;
        let mut v: Vec<(&'static str, Setting)> = vec![("--model", Text(m.arch.name()))];
        if m.arch.is_resnet() {
            v.push(("--shortcut", Text(m.shortcut.name().into())));
        }
        v.extend([
            ("--mode", Text(self.mode.name().into())),
            ("--batch-size", Int(self.batch_size as u64)),
            ("--lr", float32(self.lr)),
            ("--lr-schedule", Text(self.lr_schedule.name().into())),
            ("--momentum", float32(self.momentum)),
            ("--weight-decay", float32(self.weight_decay)),
            ("--seed", Int(self.seed)),
            ("--augment", Bool(self.augment)),
            ("--normalize", Text(self.normalize.name().into())),
            (TRAIN_IMAGES_KEY, Int(train_len as u64)),
        ]);
        if self.mode == Mode::Dense {
            return v;
        }
        if m.arch.is_resnet() {
            v.extend([
                ("--sparse-stem", Bool(m.sparse_stem)),
                ("--sparse-projection", Bool(m.sparse_projection)),
                ("--sparse-classifier", Bool(m.sparse_classifier)),
            ]);
        }
        let r = &self.rule;
        let interval = TrainConfig::interval(self.progress_every, per_epoch);
        v.extend([
            ("--progress-every", Int(interval as u64)),
            ("--prune", Text(r.prune.name().into())),
            ("--grow", Text(r.grow.name().into())),
            ("--grow-init", Text(r.grow_init.name().into())),
            ("--drop-fraction", Text(r.drop_fraction.to_string())),
            ("--drop-schedule", Text(r.drop_schedule.name().into())),
            ("--stop-updates-at", Float(r.stop_updates_at)),
            ("--start", Text(r.start.name().into())),
            ("--regrow-dropped", Bool(r.regrow_dropped)),
            ("--keep-fraction", Float(self.keep_fraction)),
            ("--density", Float(self.total_fraction)),
            ("--prune-dims", Text(self.prune_dims.name().into())),
            ("--allocation", Text(self.allocation.name().into())),
            ("--update-interval", Int(self.update_interval)),
            ("--strength", Text(self.strength.name().into())),
            (
                "--strength-method",
                Text(self.strength_method.name().into()),
            ),
            ("--threshold", float32(self.threshold)),
            // The kernels sum in different orders: the same run, not the
            // same bits.
            ("--conv-path", Text(self.conv_path.name().into())),
        ]);
        if let Some(dir) = &self.mask {
            v.push(("--mask", Text(dir.display().to_string())));
        }
        v
    }

    /// The settings a checkpoint records, one `option=value` per line.
    pub fn fingerprint(&self, train_len: usize) -> String {
        self.settings(train_len)
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect()
    }
}

/// An f32 setting as the f64 that prints as the f32 does (0.001, not
/// 0.0010000000474974513).
fn float32(v: f32) -> Setting {
    Setting::Float(v.to_string().parse().unwrap_or(v as f64))
}

/// A setting's value, typed as JSON will type it.
#[derive(Clone, Debug, PartialEq)]
pub enum Setting {
    Int(u64),
    Float(f64),
    Bool(bool),
    Text(String),
}

impl std::fmt::Display for Setting {
    /// As the command line spells it (a float in Rust's shortest form
    /// that reads back exactly).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Setting::Int(v) => write!(f, "{v}"),
            Setting::Float(v) => write!(f, "{v}"),
            Setting::Bool(v) => write!(f, "{v}"),
            Setting::Text(v) => f.write_str(v),
        }
    }
}

impl Setting {
    /// As a JSON value: a number, a boolean or a string.
    pub fn json(&self) -> String {
        match self {
            Setting::Int(v) => v.to_string(),
            Setting::Float(v) if v.is_finite() => format!("{v}"),
            Setting::Float(v) => crate::export::json_str(&v.to_string()),
            Setting::Bool(v) => v.to_string(),
            Setting::Text(v) => crate::export::json_str(v),
        }
    }
}

/// The options whose values differ between two fingerprints, as
/// "--option (checkpoint: a, this run: b)".
pub fn fingerprint_diff(saved: &str, ours: &str) -> Vec<String> {
    let parse = |s: &str| -> Vec<(String, String)> {
        s.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let (a, b) = (parse(saved), parse(ours));
    let get = |m: &[(String, String)], k: &str| {
        m.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "(not set)".into())
    };
    let mut seen: Vec<&String> = Vec::new();
    let mut out = Vec::new();
    for k in a.iter().chain(&b).map(|(k, _)| k) {
        if seen.contains(&k) {
            continue;
        }
        seen.push(k);
        let (x, y) = (get(&a, k), get(&b, k));
        if x != y {
            out.push(format!("{k} (checkpoint: {x}, this run: {y})"));
        }
    }
    out
}

//! The CIFAR training loop behind `examples/cifar.rs`: the notebook's recipe,
//! dense or sparse, with checkpoints that resume bit for bit.
//!
//! A run is a [`TrainConfig`]; a [`Trainer`] holds the model, the optimiser
//! and the position in the data. The data order and augmentation are pure
//! functions of (seed, epoch, position), so the position is all a checkpoint
//! needs to continue exactly where a run stopped.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Instant;

use cifar::{BatchConfig, Batches, Normalize, Split};
use sparse_conv::rules::Allocation;
use sparse_conv::strength::{Measure, Method, StrengthConfig};
use sparse_conv::{ConvPath, DSConfig, DSConv2d, LeNet, ProgressStats, PruneDims, Rule};
use tensor::awake::with_pool_awake;
use tensor::optim::{Sgd, SgdConfig};
use tensor::{no_grad, Rng, Tensor};

use crate::checkpoint::{read_checked, write_atomic, Reader, Writer};

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

/// Images per batch in evaluation. Each image's logits do not depend on the
/// batch (see [`Trainer::logits`]), so this is chosen for speed alone:
/// batches of 250 amortise each op's fork/join and the packing of the
/// first linear layer's weight over more images than batches of 100, and
/// still fit the caches (docs/benchmarks.md measures both).
pub const EVAL_BATCH_SIZE: usize = 250;

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
}

impl Mode {
    pub const ALL: [Mode; 7] = [
        Mode::Dense,
        Mode::Hebbian,
        Mode::Random,
        Mode::Static,
        Mode::HebbianGrow,
        Mode::Set,
        Mode::Rigl,
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

/// Everything that decides a run's numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub mode: Mode,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f32,
    pub lr_schedule: LrSchedule,
    pub momentum: f32,
    pub weight_decay: f32,
    /// Batches between mask updates; `None` is the notebook's 2,000, or a
    /// quarter epoch when an epoch is shorter than that.
    pub progress_every: Option<usize>,
    /// Batches between loss lines; `None` as for `progress_every`.
    pub log_every: Option<usize>,
    /// The prune/grow rule of the sparse modes (ignored by dense).
    pub rule: Rule,
    pub keep_fraction: f64,
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
    pub normalize: Normalize,
    pub augment: bool,
}

impl Default for TrainConfig {
    /// The notebook's recipe and rule.
    fn default() -> Self {
        TrainConfig::for_mode(Mode::Hebbian)
    }
}

impl TrainConfig {
    /// The notebook's recipe with `mode`'s preset rule.
    pub fn for_mode(mode: Mode) -> TrainConfig {
        let ds = DSConfig::default();
        TrainConfig {
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
            normalize: Normalize::HALF,
            augment: false,
        }
    }

    fn batch_config(&self) -> BatchConfig {
        BatchConfig {
            batch_size: self.batch_size,
            shuffle: true,
            seed: self.seed,
            normalize: self.normalize,
            augment: self.augment,
            drop_last: false,
        }
    }

    fn sparse_config(&self) -> Option<DSConfig> {
        self.mode.rule()?;
        Some(DSConfig {
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
        if self.mode == Mode::Dense {
            return Ok(());
        }
        if !(self.keep_fraction > 0.0
            && self.keep_fraction <= self.total_fraction
            && self.total_fraction <= 1.0)
        {
            return Err(format!(
                "want 0 < --keep-fraction ≤ --total-fraction ≤ 1, got {} and {}",
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
    pub fn settings(&self, train_len: usize) -> Vec<(&'static str, String)> {
        let per_epoch = self.batches_per_epoch(train_len);
        let mut v: Vec<(&'static str, String)> = vec![
            ("--mode", self.mode.name().into()),
            ("--batch-size", self.batch_size.to_string()),
            ("--lr", self.lr.to_string()),
            ("--lr-schedule", self.lr_schedule.name().into()),
            ("--momentum", self.momentum.to_string()),
            ("--weight-decay", self.weight_decay.to_string()),
            ("--seed", self.seed.to_string()),
            ("--augment", self.augment.to_string()),
            ("--normalize", format!("{:?}", self.normalize)),
            (TRAIN_IMAGES_KEY, train_len.to_string()),
        ];
        if self.mode == Mode::Dense {
            return v;
        }
        let r = &self.rule;
        v.extend([
            (
                "--progress-every",
                TrainConfig::interval(self.progress_every, per_epoch).to_string(),
            ),
            ("--prune", r.prune.name().into()),
            ("--grow", r.grow.name().into()),
            ("--grow-init", r.grow_init.name().into()),
            ("--drop-fraction", r.drop_fraction.to_string()),
            ("--drop-schedule", r.drop_schedule.name().into()),
            ("--stop-updates-at", r.stop_updates_at.to_string()),
            ("--start", r.start.name().into()),
            ("--keep-fraction", self.keep_fraction.to_string()),
            ("--total-fraction", self.total_fraction.to_string()),
            ("--prune-dims", self.prune_dims.name().into()),
            ("--allocation", self.allocation.name().into()),
            ("--update-interval", self.update_interval.to_string()),
            ("--strength", self.strength.name().into()),
            ("--strength-method", self.strength_method.name().into()),
            ("--threshold", self.threshold.to_string()),
            // The kernels sum in different orders: the same run, not the
            // same bits.
            ("--conv-path", self.conv_path.name().into()),
        ]);
        v
    }

    /// The settings a checkpoint records, one `option=value` per line.
    fn fingerprint(&self, train_len: usize) -> String {
        self.settings(train_len)
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect()
    }
}

/// The options whose values differ between two fingerprints, as
/// "--option (checkpoint: a, this run: b)".
fn fingerprint_diff(saved: &str, ours: &str) -> Vec<String> {
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
    let mut keys: Vec<&String> = a.iter().chain(&b).map(|(k, _)| k).collect();
    keys.dedup();
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for k in keys {
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

#[derive(Debug)]
pub enum TrainError {
    Config(String),
    /// The loss became NaN or infinite at this (epoch, batch), 1-based.
    NonFinite {
        epoch: usize,
        batch: usize,
        loss: f32,
    },
    Checkpoint(String),
}

impl fmt::Display for TrainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrainError::Config(m) => write!(f, "{m}"),
            TrainError::NonFinite { epoch, batch, loss } => write!(
                f,
                "the loss became {loss} at epoch {epoch}, batch {batch}; stopping (try a smaller --lr)"
            ),
            TrainError::Checkpoint(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for TrainError {}

/// What the loop reports as it goes.
pub enum Event<'a> {
    /// A finished batch: batches done in this epoch, and the epoch's total.
    Batch { done: usize, total: usize },
    /// The notebook's `[epoch, batch] loss:` line: mean loss since the last.
    Log {
        epoch: usize,
        batch: usize,
        step: u64,
        loss: f64,
    },
    /// A mask update: one entry per sparse layer, named as [`LAYER_NAMES`].
    Progress {
        step: u64,
        epoch: usize,
        stats: &'a [ProgressStats],
        layers: &'a [&'a DSConv2d],
    },
}

/// The names of the LeNet's sparse layers, in `sparse_layers` order.
pub const LAYER_NAMES: [&str; 2] = ["conv1", "conv2"];

/// The LeNet has 10 outputs: a split must be CIFAR-10-shaped.
fn check_split(split: &Split) -> Result<(), TrainError> {
    if split.num_classes() != 10 || split.labels.iter().any(|&l| l >= 10) {
        return Err(TrainError::Config(format!(
            "the network has 10 outputs, but the data has {} classes (labels up to {})",
            split.num_classes(),
            split.labels.iter().max().copied().unwrap_or(0)
        )));
    }
    Ok(())
}

/// How an epoch ended.
#[derive(Debug, PartialEq, Eq)]
pub enum EpochEnd {
    Finished,
    /// `should_stop` said so (e.g. Ctrl-C); the position is kept.
    Interrupted,
}

pub struct Evaluation {
    pub correct: Vec<usize>,
    pub total: Vec<usize>,
}

impl Evaluation {
    pub fn accuracy(&self) -> f64 {
        self.correct.iter().sum::<usize>() as f64 / self.total.iter().sum::<usize>().max(1) as f64
    }
    pub fn per_class(&self) -> Vec<f64> {
        self.correct
            .iter()
            .zip(&self.total)
            .map(|(&c, &t)| c as f64 / t.max(1) as f64)
            .collect()
    }
}

pub struct Trainer {
    pub config: TrainConfig,
    pub net: LeNet,
    pub opt: Sgd,
    /// Epochs finished.
    pub epoch: usize,
    /// Batches finished in the current epoch.
    pub batch_in_epoch: usize,
    /// Batches finished in the whole run.
    pub global_step: u64,
    running_loss: f64,
    running_count: usize,
    /// Seconds and images spent in training steps (not evaluation).
    pub train_seconds: f64,
    pub train_images: u64,
    /// Seconds and images spent in evaluation.
    pub eval_seconds: f64,
    pub eval_images: u64,
}

impl Trainer {
    pub fn new(config: TrainConfig) -> Result<Trainer, TrainError> {
        config.validate().map_err(TrainError::Config)?;
        let mut rng = Rng::seed(config.seed);
        let net = LeNet::with_allocation(config.sparse_config(), config.allocation, &mut rng)
            .map_err(|e| TrainError::Config(e.to_string()))?;
        let opt = Sgd::new(
            net.parameters(),
            SgdConfig {
                weight_decay: config.weight_decay,
                ..SgdConfig::new(config.lr, config.momentum)
            },
        );
        Ok(Trainer {
            config,
            net,
            opt,
            epoch: 0,
            batch_in_epoch: 0,
            global_step: 0,
            running_loss: 0.0,
            running_count: 0,
            train_seconds: 0.0,
            train_images: 0,
            eval_seconds: 0.0,
            eval_images: 0,
        })
    }

    pub fn finished(&self) -> bool {
        self.epoch >= self.config.epochs
    }

    /// The learning rate of step `step` (0-based) of `total` steps.
    pub fn lr_at(&self, step: u64, total: u64) -> f32 {
        match self.config.lr_schedule {
            LrSchedule::Constant => self.config.lr,
            LrSchedule::Cosine => {
                let t = step as f64 / total.max(1) as f64;
                (self.config.lr as f64 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
            }
        }
    }

    /// Whether a mask update follows step `step` (1-based) of `total`.
    pub fn update_due(&self, step: u64, total: u64, progress_every: u64) -> bool {
        self.config.mode.rule().is_some()
            && step.is_multiple_of(progress_every)
            && self.config.rule.in_window(step, total)
    }

    /// Trains the rest of the current epoch. Checks `should_stop` after each
    /// batch. On a non-finite loss, stops with an error before the step that
    /// would spread it to the weights. That batch's forward pass has still
    /// counted (and may have sampled strength), so after this error the run
    /// should end, as the example does, rather than go on. On a rayon pool
    /// of several threads, the other threads are kept busy-waiting for work
    /// until the epoch returns (`tensor::awake`), `on_event` included.
    pub fn run_epoch(
        &mut self,
        train: &Split,
        should_stop: &dyn Fn() -> bool,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<EpochEnd, TrainError> {
        // The steps' many small parallel ops, and the batches' conversion,
        // find the pool's threads awake (see tensor::awake). The other
        // threads spin meanwhile, through `on_event` too.
        with_pool_awake(|| self.epoch_steps(train, should_stop, on_event))
    }

    fn epoch_steps(
        &mut self,
        train: &Split,
        should_stop: &dyn Fn() -> bool,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<EpochEnd, TrainError> {
        check_split(train)?;
        let mut batches = Batches::new(train, &self.config.batch_config(), self.epoch as u64);
        let total = batches.num_batches();
        let total_steps = (total * self.config.epochs) as u64;
        let log_every = TrainConfig::interval(self.config.log_every, total);
        let progress_every = TrainConfig::interval(self.config.progress_every, total) as u64;
        batches.skip_to(self.batch_in_epoch);
        self.net.set_training(true);
        for batch in batches {
            let start = Instant::now();
            let n = batch.labels.len();
            let step = self.global_step + 1;
            let due = self.update_due(step, total_steps, progress_every);
            // Strength is sampled only while an update may still read it.
            let window_open = self.config.rule.in_window(step, total_steps);
            for l in self.net.sparse_layers_mut() {
                l.set_sampling(window_open);
                // Gradient growth ranks inactive taps by the dense weight
                // gradient of this step; only this step computes it.
                if due && l.needs_dense_grad() {
                    l.set_dense_grad(true);
                }
            }
            self.opt.config.lr = self.lr_at(self.global_step, total_steps);
            let x = Tensor::from_vec(batch.x, &[n, 3, 32, 32]);
            let value = self.net.train_step(&mut self.opt, &x, &batch.labels);
            if !value.is_finite() {
                return Err(TrainError::NonFinite {
                    epoch: self.epoch + 1,
                    batch: self.batch_in_epoch + 1,
                    loss: value,
                });
            }
            self.batch_in_epoch += 1;
            self.global_step = step;
            if due {
                let opt = &mut self.opt;
                let stats: Vec<ProgressStats> = self
                    .net
                    .sparse_layers_mut()
                    .into_iter()
                    .map(|l| l.update(Some(opt), step, total_steps))
                    .collect();
                self.train_seconds += start.elapsed().as_secs_f64();
                on_event(Event::Progress {
                    step,
                    epoch: self.epoch + 1,
                    stats: &stats,
                    layers: &self.net.sparse_layers(),
                });
            } else {
                self.train_seconds += start.elapsed().as_secs_f64();
            }
            self.train_images += n as u64;
            self.running_loss += value as f64;
            self.running_count += 1;
            if self.batch_in_epoch.is_multiple_of(log_every) {
                on_event(Event::Log {
                    epoch: self.epoch + 1,
                    batch: self.batch_in_epoch,
                    step,
                    loss: self.running_loss / self.running_count as f64,
                });
                self.running_loss = 0.0;
                self.running_count = 0;
            }
            on_event(Event::Batch {
                done: self.batch_in_epoch,
                total,
            });
            if should_stop() && self.batch_in_epoch < total {
                return Ok(EpochEnd::Interrupted);
            }
        }
        self.epoch += 1;
        self.batch_in_epoch = 0;
        self.running_loss = 0.0;
        self.running_count = 0;
        Ok(EpochEnd::Finished)
    }

    /// Accuracy on `test`, per class, in inference mode (no tape, no
    /// strength), in batches of [`EVAL_BATCH_SIZE`].
    pub fn evaluate(&mut self, test: &Split) -> Result<Evaluation, TrainError> {
        let start = Instant::now();
        let logits = self.logits(test, EVAL_BATCH_SIZE)?;
        self.eval_seconds += start.elapsed().as_secs_f64();
        self.eval_images += test.len() as u64;
        let mut eval = Evaluation {
            correct: vec![0; 10],
            total: vec![0; 10],
        };
        for (row, &label) in logits.chunks(10).zip(&test.labels) {
            let label = label as usize;
            // First maximum wins, like torch.max.
            let pred = (0..10).fold(0, |best, j| if row[j] > row[best] { j } else { best });
            eval.total[label] += 1;
            eval.correct[label] += (pred == label) as usize;
        }
        Ok(eval)
    }

    /// The network's 10 logits for each image of `split`, in order, in
    /// inference mode, computed in batches of `batch_size` (≥ 1). Each
    /// image's logits are the same bits whatever the batch size (every op
    /// computes an image's values on their own), but for batches of at most
    /// `SMALL_BATCH_ROWS` images: the linear layers' small-batch loops sum
    /// in another order, so those agree with the rest to rounding.
    pub fn logits(&mut self, split: &Split, batch_size: usize) -> Result<Vec<f32>, TrainError> {
        check_split(split)?;
        let cfg = BatchConfig {
            batch_size: batch_size.max(1),
            shuffle: false,
            augment: false,
            ..self.config.batch_config()
        };
        self.net.set_training(false);
        let mut logits = Vec::with_capacity(split.len() * 10);
        let net = &mut self.net;
        with_pool_awake(|| {
            no_grad(|| {
                for batch in Batches::new(split, &cfg, 0) {
                    let n = batch.labels.len();
                    let y = net.forward(&Tensor::from_vec(batch.x, &[n, 3, 32, 32]));
                    logits.extend_from_slice(&y.data());
                }
            })
        });
        self.net.set_training(true);
        Ok(logits)
    }

    pub fn conv_density(&self) -> Vec<f64> {
        self.net
            .sparse_layers()
            .iter()
            .map(|l| l.density())
            .collect()
    }

    /// Writes a checkpoint atomically (see [`crate::checkpoint`]).
    pub fn save(&self, path: &Path, train_len: usize) -> Result<(), TrainError> {
        let mut w = Writer::default();
        w.str(&self.config.fingerprint(train_len));
        for v in [
            self.epoch as u64,
            self.batch_in_epoch as u64,
            self.global_step,
            self.running_count as u64,
            self.train_images,
        ] {
            w.u64(v);
        }
        w.f64(self.running_loss);
        w.f64(self.train_seconds);
        w.u64(self.eval_images);
        w.f64(self.eval_seconds);
        let params = self.net.parameters();
        w.u64(params.len() as u64);
        for p in &params {
            w.f32s(&p.data());
        }
        for b in self.opt.buffers() {
            w.u64(b.is_some() as u64);
            w.f32s(b.as_deref().unwrap_or(&[]));
        }
        let layers = self.net.sparse_layers();
        w.u64(layers.len() as u64);
        for l in layers {
            let s = l.state();
            w.bools(&s.mask);
            w.f64s(&s.strength);
            w.u64(s.strength_samples);
            w.u64(s.passes);
            for r in s.rng {
                w.u64(r);
            }
        }
        write_atomic(path, &w.buf).map_err(|e| {
            TrainError::Checkpoint(format!("cannot write checkpoint {}: {e}", path.display()))
        })
    }

    /// A trainer for `config`, restored from the checkpoint at `path`. The
    /// checkpoint must come from the same settings (the number of epochs may
    /// grow) and the same training set size.
    pub fn resume(
        config: TrainConfig,
        path: &Path,
        train_len: usize,
    ) -> Result<Trainer, TrainError> {
        let mut t = Trainer::new(config)?;
        let payload = read_checked(path).map_err(TrainError::Checkpoint)?;
        let bad = |m: String| TrainError::Checkpoint(format!("{}: {m}", path.display()));
        let mut r = Reader::new(&payload);
        let saved = r.str("settings").map_err(bad)?;
        let ours = t.config.fingerprint(train_len);
        if saved != ours {
            let diff = fingerprint_diff(&saved, &ours);
            return Err(bad(format!(
                "it was made with different settings; these differ:\n  {}",
                diff.join("\n  ")
            )));
        }
        t.epoch = r.u64("epoch").map_err(bad)? as usize;
        t.batch_in_epoch = r.u64("batch").map_err(bad)? as usize;
        t.global_step = r.u64("step").map_err(bad)?;
        t.running_count = r.u64("running count").map_err(bad)? as usize;
        t.train_images = r.u64("images").map_err(bad)?;
        t.running_loss = r.f64("running loss").map_err(bad)?;
        t.train_seconds = r.f64("seconds").map_err(bad)?;
        t.eval_images = r.u64("evaluated images").map_err(bad)?;
        t.eval_seconds = r.f64("evaluation seconds").map_err(bad)?;
        let params = t.net.parameters();
        if r.u64("parameter count").map_err(bad)? as usize != params.len() {
            return Err(bad("it holds a different number of parameters".into()));
        }
        for (i, p) in params.iter().enumerate() {
            let v = r.f32s("parameters").map_err(bad)?;
            if v.len() != p.numel() {
                return Err(bad(format!(
                    "parameter {i} has {} values, the model wants {}",
                    v.len(),
                    p.numel()
                )));
            }
            *p.data_mut() = v;
        }
        let mut buffers = Vec::with_capacity(params.len());
        for _ in 0..params.len() {
            let present = r.u64("momentum").map_err(bad)? != 0;
            let v = r.f32s("momentum").map_err(bad)?;
            buffers.push(present.then_some(v));
        }
        t.opt.set_buffers(buffers).map_err(bad)?;
        let n_layers = r.u64("layer count").map_err(bad)? as usize;
        if n_layers != t.net.sparse_layers().len() {
            return Err(bad("it holds a different number of sparse layers".into()));
        }
        for layer in t.net.sparse_layers_mut() {
            let mask = r.bools("mask").map_err(bad)?;
            let strength = r.f64s("strength").map_err(bad)?;
            let strength_samples = r.u64("samples").map_err(bad)?;
            let passes = r.u64("passes").map_err(bad)?;
            let mut rng = [0u64; 4];
            for v in &mut rng {
                *v = r.u64("rng").map_err(bad)?;
            }
            let state = sparse_conv::dsconv::DSConvState {
                mask,
                strength,
                strength_samples,
                passes,
                rng,
            };
            layer.restore(state).map_err(|e| bad(e.to_string()))?;
        }
        r.finish().map_err(bad)?;
        Ok(t)
    }

    /// The run's summary as one JSON object (the metrics file's last line).
    pub fn summary_json(&self, eval: &Evaluation) -> String {
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.6}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "{{\"type\": \"summary\", \"mode\": \"{}\", \"seed\": {}, \"epochs\": {}, \"batch_size\": {}, \"steps\": {}, \"test_accuracy\": {:.6}, \"per_class_accuracy\": [{}], \"conv_density\": [{}], \"train_images_per_second\": {:.2}, \"eval_images_per_second\": {:.2}, \"train_seconds\": {:.3}}}",
            self.config.mode.name(),
            self.config.seed,
            self.epoch,
            self.config.batch_size,
            self.global_step,
            eval.accuracy(),
            list(&eval.per_class()),
            list(&self.conv_density()),
            self.train_images as f64 / self.train_seconds.max(1e-9),
            self.eval_images as f64 / self.eval_seconds.max(1e-9),
            self.train_seconds
        )
    }
}

//! The CIFAR training loop behind `examples/cifar`: any network of the
//! model API, dense or sparse, with checkpoints that resume bit for bit.
//!
//! A run is a [`TrainConfig`]; a [`Trainer`] holds the model, the optimiser
//! and the position in the data. The data order and augmentation are pure
//! functions of (seed, epoch, position), so the position is all a checkpoint
//! needs to continue exactly where a run stopped.

use std::fmt;
use std::path::Path;
use std::time::Instant;

use cifar::{BatchConfig, Batches, Split};
use sparse_conv::rules::GrowInit;
use sparse_conv::{DSConv2d, Model, ProgressStats};
use tensor::awake::with_pool_awake;
use tensor::optim::{Sgd, SgdConfig};
use tensor::{no_grad, Rng, Tensor};

use crate::checkpoint::{read_checked, write_atomic, Reader, Tensors, Writer};
use crate::config::{fingerprint_diff, LrSchedule, TrainConfig};
use crate::export::{json_str, load_masks};
use crate::state::{read_state, write_state};

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
    /// A mask update: per sparse layer, its name, what the update did and
    /// the layer after it.
    Progress {
        step: u64,
        epoch: usize,
        names: &'a [String],
        stats: &'a [ProgressStats],
        layers: &'a [&'a DSConv2d],
    },
}

/// How an epoch ended.
#[derive(Debug, PartialEq, Eq)]
pub enum EpochEnd {
    Finished,
    /// `should_stop` said so (e.g. Ctrl-C); the position is kept.
    Interrupted,
}

/// Correct and total test images per class.
pub struct Evaluation {
    pub correct: Vec<usize>,
    pub total: Vec<usize>,
}

impl Evaluation {
    pub fn accuracy(&self) -> f64 {
        self.correct.iter().sum::<usize>() as f64 / self.total.iter().sum::<usize>().max(1) as f64
    }

    /// Each class's accuracy; `None` for a class with no test images.
    pub fn per_class(&self) -> Vec<Option<f64>> {
        self.correct
            .iter()
            .zip(&self.total)
            .map(|(&c, &t)| (t > 0).then(|| c as f64 / t as f64))
            .collect()
    }
}

/// The last mask update: its step, and how many taps it gave fresh random
/// values (grown or revived with `GrowInit::Kaiming`), which the network
/// needs steps to recover from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastUpdate {
    pub step: u64,
    pub reinitialised: u64,
}

pub struct Trainer {
    pub config: TrainConfig,
    pub net: Box<dyn Model>,
    pub opt: Sgd,
    /// Epochs finished.
    pub epoch: usize,
    /// Batches finished in the current epoch.
    pub batch_in_epoch: usize,
    /// Batches finished in the whole run.
    pub global_step: u64,
    pub last_update: Option<LastUpdate>,
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
    /// A new run: the network built from the seed, with the masks of
    /// `config.mask` if it names a folder.
    pub fn new(config: TrainConfig) -> Result<Trainer, TrainError> {
        let mut t = Trainer::build(config)?;
        if let Some(dir) = t.config.mask.clone() {
            load_masks(&dir, t.net.as_mut(), &mut t.opt).map_err(TrainError::Config)?;
        }
        Ok(t)
    }

    /// The network and optimiser of `config`, as the seed draws them.
    fn build(config: TrainConfig) -> Result<Trainer, TrainError> {
        config.validate().map_err(TrainError::Config)?;
        let mut rng = Rng::seed(config.seed);
        let net = config
            .model
            .build(config.sparsity(), &mut rng)
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
            last_update: None,
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

    /// The network's input shape for a batch of `n` images.
    fn batch_shape(&self, n: usize) -> [usize; 4] {
        let [c, h, w] = self.net.input_shape();
        [n, c, h, w]
    }

    /// The data must fit the network: its images its input shape, its
    /// labels its outputs.
    fn check_split(&self, split: &Split) -> Result<(), TrainError> {
        let classes = self.net.num_classes();
        if split.labels.iter().any(|&l| l as usize >= classes) {
            return Err(TrainError::Config(format!(
                "the network has {classes} outputs, but the data has {} classes (labels up to {})",
                split.num_classes(),
                split.labels.iter().max().copied().unwrap_or(0)
            )));
        }
        let [c, h, w] = self.net.input_shape();
        if c * h * w != cifar::IMAGE_BYTES {
            return Err(TrainError::Config(format!(
                "the network takes {c}×{h}×{w} images, the data has 3×32×32"
            )));
        }
        Ok(())
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
        self.check_split(train)?;
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
            for (_, l) in self.net.sparse_layers_mut() {
                l.set_sampling(window_open);
                // Gradient growth ranks inactive taps by the dense weight
                // gradient of this step; only this step computes it.
                if due && l.needs_dense_grad() {
                    l.set_dense_grad(true);
                }
            }
            self.opt.config.lr = self.lr_at(self.global_step, total_steps);
            let x = Tensor::from_vec(batch.x, &self.batch_shape(n));
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
                self.mask_update(step, total_steps, start, on_event);
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

    /// Every sparse layer's mask update after step `step`, reported as one
    /// event; its time counts as training time from `start`.
    fn mask_update(
        &mut self,
        step: u64,
        total_steps: u64,
        start: Instant,
        on_event: &mut dyn FnMut(Event),
    ) {
        let opt = &mut self.opt;
        let (names, stats): (Vec<String>, Vec<ProgressStats>) = self
            .net
            .sparse_layers_mut()
            .into_iter()
            .map(|(name, l)| (name, l.update(Some(opt), step, total_steps)))
            .unzip();
        self.train_seconds += start.elapsed().as_secs_f64();
        let fresh = self.config.rule.grow_init == GrowInit::Kaiming;
        let reinitialised = if fresh {
            stats.iter().map(|s| (s.regrown + s.revived) as u64).sum()
        } else {
            0
        };
        self.last_update = Some(LastUpdate {
            step,
            reinitialised,
        });
        let layers: Vec<&DSConv2d> = self
            .net
            .sparse_layers()
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        on_event(Event::Progress {
            step,
            epoch: self.epoch + 1,
            names: &names,
            stats: &stats,
            layers: &layers,
        });
    }

    /// Steps since the last mask update, if there was one.
    pub fn steps_since_update(&self) -> Option<u64> {
        self.last_update.map(|u| self.global_step - u.step)
    }

    /// Accuracy on `test`, per class, in evaluation mode (no tape, no
    /// strength, batch norm by its running statistics), in batches of
    /// the network's [`Model::eval_batch_size`].
    pub fn evaluate(&mut self, test: &Split) -> Result<Evaluation, TrainError> {
        let start = Instant::now();
        let logits = self.logits(test, self.net.eval_batch_size())?;
        self.eval_seconds += start.elapsed().as_secs_f64();
        self.eval_images += test.len() as u64;
        let classes = self.net.num_classes();
        let mut eval = Evaluation {
            correct: vec![0; classes],
            total: vec![0; classes],
        };
        for (row, &label) in logits.chunks(classes).zip(&test.labels) {
            let label = label as usize;
            // First maximum wins, like torch.max.
            let pred = (0..classes).fold(0, |best, j| if row[j] > row[best] { j } else { best });
            eval.total[label] += 1;
            eval.correct[label] += (pred == label) as usize;
        }
        Ok(eval)
    }

    /// The network's logits for each image of `split`, in order, in
    /// evaluation mode, computed in batches of `batch_size` (≥ 1). Each
    /// image's logits are the same bits whatever the batch size (every op
    /// computes an image's values on their own), but for batches of at most
    /// `SMALL_BATCH_ROWS` images: the linear layers' small-batch loops sum
    /// in another order, so those agree with the rest to rounding.
    pub fn logits(&mut self, split: &Split, batch_size: usize) -> Result<Vec<f32>, TrainError> {
        self.check_split(split)?;
        let cfg = BatchConfig {
            batch_size: batch_size.max(1),
            shuffle: false,
            augment: false,
            ..self.config.batch_config()
        };
        let mut logits = Vec::with_capacity(split.len() * self.net.num_classes());
        let [c, h, w] = self.net.input_shape();
        let net = &mut self.net;
        net.set_training(false);
        with_pool_awake(|| {
            no_grad(|| {
                for batch in Batches::new(split, &cfg, 0) {
                    let n = batch.labels.len();
                    let y = net.forward(&Tensor::from_vec(batch.x, &[n, c, h, w]));
                    logits.extend_from_slice(&y.data());
                }
            })
        });
        self.net.set_training(true);
        Ok(logits)
    }

    /// Each sparse layer's fraction of active weights.
    pub fn conv_density(&self) -> Vec<f64> {
        self.net
            .sparse_layers()
            .iter()
            .map(|(_, l)| l.density())
            .collect()
    }

    /// The fraction of active weights over all the sparse layers together;
    /// `None` for a dense network.
    pub fn density(&self) -> Option<f64> {
        let layers = self.net.sparse_layers();
        let total: usize = layers.iter().map(|(_, l)| l.mask().len()).sum();
        let active: usize = layers.iter().map(|(_, l)| l.active()).sum();
        (total > 0).then(|| active as f64 / total as f64)
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
        match self.last_update {
            None => w.u64(0),
            Some(u) => {
                w.u64(1 + u.step);
                w.u64(u.reinitialised);
            }
        }
        write_state(&mut w, self.net.as_ref(), &self.opt);
        write_atomic(path, &w.buf).map_err(|e| {
            TrainError::Checkpoint(format!("cannot write checkpoint {}: {e}", path.display()))
        })
    }

    /// A trainer for `config`, restored from the checkpoint at `path`. The
    /// checkpoint must come from the same settings (the number of epochs may
    /// grow, but not below the epochs done) and the same training set size.
    pub fn resume(
        config: TrainConfig,
        path: &Path,
        train_len: usize,
    ) -> Result<Trainer, TrainError> {
        // The checkpoint holds the masks, so `config.mask` is not read again.
        let mut t = Trainer::build(config)?;
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
        let last = r.u64("last update").map_err(bad)?;
        if last > 0 {
            t.last_update = Some(LastUpdate {
                step: last - 1,
                reinitialised: r.u64("last update").map_err(bad)?,
            });
        }
        let mut tensors = Tensors::read(&mut r).map_err(bad)?;
        read_state(&mut tensors, t.net.as_mut(), &mut t.opt).map_err(bad)?;
        tensors.finish().map_err(bad)?;
        r.finish().map_err(bad)?;
        if t.epoch > t.config.epochs || (t.epoch == t.config.epochs && t.batch_in_epoch > 0) {
            return Err(TrainError::Config(format!(
                "{} has {} epochs done; --epochs {} would train backwards (give at least {})",
                path.display(),
                t.epoch,
                t.config.epochs,
                t.epoch + (t.batch_in_epoch > 0) as usize
            )));
        }
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
        let per_class: Vec<String> = eval
            .per_class()
            .iter()
            .map(|a| a.map_or("null".into(), |a| format!("{a:.6}")))
            .collect();
        let names: Vec<String> = self
            .net
            .sparse_layers()
            .iter()
            .map(|(n, _)| json_str(n))
            .collect();
        let density = self.density().map_or("null".into(), |d| format!("{d:.6}"));
        format!(
            "{{\"type\": \"summary\", \"model\": {}, \"mode\": \"{}\", \"seed\": {}, \"epochs\": {}, \"batch_size\": {}, \"steps\": {}, \"test_accuracy\": {:.6}, \"per_class_accuracy\": [{}], \"density\": {density}, \"layers\": [{}], \"conv_density\": [{}], \"train_images_per_second\": {:.2}, \"eval_images_per_second\": {:.2}, \"train_seconds\": {:.3}}}",
            json_str(&self.net.name()),
            self.config.mode.name(),
            self.config.seed,
            self.epoch,
            self.config.batch_size,
            self.global_step,
            eval.accuracy(),
            per_class.join(", "),
            names.join(", "),
            list(&self.conv_density()),
            self.train_images as f64 / self.train_seconds.max(1e-9),
            self.eval_images as f64 / self.eval_seconds.max(1e-9),
            self.train_seconds
        )
    }
}

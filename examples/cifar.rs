//! Train the notebook's LeNet on CIFAR-10: dense, or sparse with one of the
//! prune/grow rules (the notebook's Hebbian rule, Hebbian growth, SET, RigL,
//! random and static masks), every part of the rule an option.
//!
//! `cargo run --release --example cifar -- --help` lists the options. With no
//! `--data`, it trains on the small real sample bundled in
//! `datasets/cifar10-sample`, with a recipe that learns there in seconds.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::{CommandFactory, Parser};
use hebbsparse::checkpoint::{check_writable, read_checked};
use hebbsparse::cifar::{load_cifar10, Cifar};
use hebbsparse::export::{check_export_dir, export_layers, step_dir};
use hebbsparse::sparse_conv::rules::{
    Allocation, DropFraction, DropSchedule, Grow, GrowInit, Prune, Start,
};
use hebbsparse::sparse_conv::strength::{Measure, Method};
use hebbsparse::sparse_conv::{ConvPath, PruneDims};
use hebbsparse::train::{
    json_key, EpochEnd, Event, LrSchedule, Mode, TrainConfig, TrainError, Trainer, LAYER_NAMES,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Map, Value};

const PRESETS: &str = "\
Presets (--mode) and the rule parts they set:
  mode          prune      grow      grow-init  drop-fraction     stop-updates-at  start
  dense         (plain Conv2d layers, no mask)
  hebbian       strength   strength  kaiming    notebook          1                dense
  random        random     random    kaiming    notebook          1                dense
  static        (a random mask of k2 taps per group, never updated)
  hebbian-grow  magnitude  strength  zero       0.3, cosine       0.75             random
  set           magnitude  random    zero       0.3, constant     0.75             random
  rigl          magnitude  gradient  zero       0.3, cosine       0.75             random
Every part can be overridden by its own option. 'notebook' drops (k2 - k1)/k2 of each
group, with k1 = --keep-fraction and k2 = --total-fraction of its taps.

With no --data, the run uses the bundled 1,000-image sample and, unless the recipe
options are given, a sample recipe (40 epochs, batch 16, lr 0.02 with cosine decay,
augmentation, a mask update every 2 epochs) so that it learns within seconds.";

/// Train the notebook's LeNet on CIFAR-10, dense or with a sparse prune/grow rule.
#[derive(Parser, Debug)]
#[command(name = "cifar", version, after_help = PRESETS)]
struct Args {
    /// CIFAR-10 binary data: cifar-10-binary.tar.gz, the cifar-10-batches-bin
    /// directory, or a directory holding either [default: the bundled sample]
    #[arg(long)]
    data: Option<PathBuf>,
    /// dense, hebbian, random, static, hebbian-grow, set or rigl (see below)
    #[arg(long, default_value = "hebbian")]
    mode: Mode,

    // The recipe. `None` means the notebook's value, or the sample recipe's.
    /// Passes over the training set [default: 2, the notebook's; 40 on the sample]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Recipe")]
    epochs: Option<u32>,
    /// Images per SGD step [default: 4; 16 on the sample]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Recipe")]
    batch_size: Option<u32>,
    /// SGD learning rate [default: 0.001; 0.02 on the sample]
    #[arg(long, help_heading = "Recipe")]
    lr: Option<f32>,
    /// constant or cosine (decays to 0 at the end) [default: constant; cosine on the sample]
    #[arg(long, help_heading = "Recipe")]
    lr_schedule: Option<LrSchedule>,
    /// SGD momentum, in [0, 1)
    #[arg(long, default_value_t = 0.9, help_heading = "Recipe")]
    momentum: f32,
    /// L2 weight decay added to every gradient
    #[arg(long, default_value_t = 0.0, help_heading = "Recipe")]
    weight_decay: f32,
    /// Random crops (4-pixel padding) and horizontal flips [default: off; on for the sample]
    #[arg(long, help_heading = "Recipe")]
    augment: bool,
    /// Batches between mask updates [default: 2000, or a quarter epoch if an
    /// epoch is shorter; 2 epochs on the sample]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Recipe")]
    progress_every: Option<u32>,
    /// Batches between loss lines [default: 2000, or a quarter epoch if an
    /// epoch is shorter]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Recipe")]
    log_every: Option<u32>,
    /// Seed for the weights, the data order and the masks
    #[arg(long, default_value_t = 0, help_heading = "Recipe")]
    seed: u64,

    // The rule. `None` means the preset's value.
    /// Which taps a group keeps: strength (all taps ranked, the notebook's),
    /// magnitude or random (among the active taps) [default: from --mode]
    #[arg(long, help_heading = "Prune/grow rule")]
    prune: Option<Prune>,
    /// Which taps not kept are grown: strength, random, gradient or none
    /// [default: from --mode]
    #[arg(long, help_heading = "Prune/grow rule")]
    grow: Option<Grow>,
    /// What grown and revived taps start from: kaiming or zero [default: from --mode]
    #[arg(long, help_heading = "Prune/grow rule")]
    grow_init: Option<GrowInit>,
    /// Fraction of k2 replaced per update: notebook ((k2 - k1)/k2) or a
    /// number in [0, 1] [default: from --mode]
    #[arg(long, help_heading = "Prune/grow rule")]
    drop_fraction: Option<DropFraction>,
    /// constant or cosine (decays to 0 at --stop-updates-at) [default: from --mode]
    #[arg(long, help_heading = "Prune/grow rule")]
    drop_schedule: Option<DropSchedule>,
    /// Fraction of training after which the mask stays fixed, in [0, 1]
    /// [default: from --mode]
    #[arg(long, help_heading = "Prune/grow rule")]
    stop_updates_at: Option<f64>,
    /// dense (all taps active until the first update) or random (k2 random
    /// taps per group) [default: from --mode]
    #[arg(long, help_heading = "Prune/grow rule")]
    start: Option<Start>,
    /// k1 = this fraction of a group's taps: the notebook's kept count
    #[arg(long, default_value_t = 0.10, help_heading = "Prune/grow rule")]
    keep_fraction: f64,
    /// k2 = this fraction of a group's taps are active
    #[arg(long, default_value_t = 0.15, help_heading = "Prune/grow rule")]
    total_fraction: f64,
    /// The groups taps are ranked in: kernel (each (out, in) kernel), filter or layer
    #[arg(long, default_value = "kernel", help_heading = "Prune/grow rule")]
    prune_dims: PruneDims,
    /// How density is spread over layers: uniform, or erk (with --prune-dims layer)
    #[arg(long, default_value = "uniform", help_heading = "Prune/grow rule")]
    allocation: Allocation,
    /// Sample Hebbian strength on every N-th training forward pass [default: 20]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Hebbian strength")]
    update_interval: Option<u64>,
    /// coactivation or correlation [default: coactivation]
    #[arg(long, help_heading = "Hebbian strength")]
    strength: Option<Measure>,
    /// How strength is computed: bitcount (AND + popcount, the fastest),
    /// fast (a GEMM), or the notebook's single-unit, grouped,
    /// reduced-redundancy, brute-force. All give the same coactivation
    /// counts [default: bitcount]
    #[arg(long, help_heading = "Hebbian strength")]
    strength_method: Option<Method>,
    /// A unit is active when its value is above this (coactivation only) [default: 0]
    #[arg(long, help_heading = "Hebbian strength")]
    threshold: Option<f32>,

    /// Kernels of the sparse layers: auto (sparse where measured faster:
    /// below the crossover density, or at any density for layers with at
    /// most 8 output channels), sparse or dense
    #[arg(long, default_value = "auto", help_heading = "Running")]
    conv_path: ConvPath,
    /// Worker threads [default: all cores]. Results do not depend on it.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Running")]
    threads: Option<u32>,
    /// Use only the first N training images
    #[arg(long, help_heading = "Running")]
    limit_train: Option<usize>,
    /// Use only the first N test images
    #[arg(long, help_heading = "Running")]
    limit_test: Option<usize>,
    /// Save a checkpoint here after each epoch and when interrupted (Ctrl-C, SIGTERM)
    #[arg(long, help_heading = "Running")]
    checkpoint: Option<PathBuf>,
    /// Continue from this checkpoint (same settings; --epochs may be larger)
    #[arg(long, help_heading = "Running")]
    resume: Option<PathBuf>,
    /// Append JSON lines here, written as they happen: the settings, loss
    /// lines, mask updates, per-epoch test accuracy, and a summary
    #[arg(long, help_heading = "Running")]
    metrics: Option<PathBuf>,
    /// Write each sparse layer's weights, mask and strength (.npy) and an
    /// index.json to this folder at the end
    #[arg(long, help_heading = "Running")]
    export: Option<PathBuf>,
    /// With --export, also write them at every mask update, to DIR/step-NNNNNNNNN
    #[arg(long, requires = "export", help_heading = "Running")]
    export_every_update: bool,
    /// A name for this run in the metrics file (the report groups runs by it)
    /// [default: the mode]
    #[arg(long, help_heading = "Running")]
    label: Option<String>,
    /// Hide the progress bar
    #[arg(long, help_heading = "Running")]
    quiet: bool,
}

const CLASSES: [&str; 10] = [
    "plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
];

fn bundled_sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/cifar10-sample")
}

/// The sample recipe applies when there is no --data and no recipe option.
fn sample_recipe(args: &Args) -> bool {
    args.data.is_none()
        && args.epochs.is_none()
        && args.batch_size.is_none()
        && args.lr.is_none()
        && args.lr_schedule.is_none()
        && args.progress_every.is_none()
}

/// The run's settings from the options: the recipe (the notebook's, or the
/// sample's), the preset rule of --mode, then each part given explicitly.
fn config_from(args: &Args) -> TrainConfig {
    let mut c = TrainConfig::for_mode(args.mode);
    if sample_recipe(args) {
        c.epochs = 40;
        c.batch_size = 16;
        c.lr = 0.02;
        c.lr_schedule = LrSchedule::Cosine;
        c.augment = true;
        // 1,000 images in batches of 16: 63 batches an epoch.
        c.progress_every = Some(126);
    }
    c.epochs = args.epochs.map_or(c.epochs, |v| v as usize);
    c.batch_size = args.batch_size.map_or(c.batch_size, |v| v as usize);
    c.lr = args.lr.unwrap_or(c.lr);
    c.lr_schedule = args.lr_schedule.unwrap_or(c.lr_schedule);
    c.augment |= args.augment;
    c.momentum = args.momentum;
    c.weight_decay = args.weight_decay;
    c.progress_every = args.progress_every.map(|v| v as usize).or(c.progress_every);
    c.log_every = args.log_every.map(|v| v as usize);
    c.seed = args.seed;
    let r = &mut c.rule;
    r.prune = args.prune.unwrap_or(r.prune);
    r.grow = args.grow.unwrap_or(r.grow);
    r.grow_init = args.grow_init.unwrap_or(r.grow_init);
    r.drop_fraction = args.drop_fraction.unwrap_or(r.drop_fraction);
    r.drop_schedule = args.drop_schedule.unwrap_or(r.drop_schedule);
    r.stop_updates_at = args.stop_updates_at.unwrap_or(r.stop_updates_at);
    r.start = args.start.unwrap_or(r.start);
    c.keep_fraction = args.keep_fraction;
    c.total_fraction = args.total_fraction;
    c.prune_dims = args.prune_dims;
    c.allocation = args.allocation;
    c.update_interval = args.update_interval.unwrap_or(c.update_interval);
    c.strength = args.strength.unwrap_or(c.strength);
    c.strength_method = args.strength_method.unwrap_or(c.strength_method);
    c.threshold = args.threshold.unwrap_or(c.threshold);
    c.conv_path = args.conv_path;
    c
}

/// Combinations of options that cannot mean anything.
fn nonsense(args: &Args, c: &TrainConfig) -> Option<String> {
    let rule_parts = [
        ("--prune", args.prune.is_some()),
        ("--grow", args.grow.is_some()),
        ("--grow-init", args.grow_init.is_some()),
        ("--drop-fraction", args.drop_fraction.is_some()),
        ("--drop-schedule", args.drop_schedule.is_some()),
        ("--stop-updates-at", args.stop_updates_at.is_some()),
        ("--start", args.start.is_some()),
        ("--update-interval", args.update_interval.is_some()),
        ("--strength", args.strength.is_some()),
        ("--strength-method", args.strength_method.is_some()),
        ("--threshold", args.threshold.is_some()),
        ("--export", args.export.is_some()),
    ];
    let given: Vec<&str> = rule_parts
        .iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| *name)
        .collect();
    if c.mode == Mode::Dense {
        return (!given.is_empty()).then(|| {
            format!(
                "--mode dense has no mask, so {} means nothing; choose a sparse --mode",
                given.join(", ")
            )
        });
    }
    if c.mode == Mode::Static && !c.rule.updates() {
        let moving: Vec<&str> = given
            .iter()
            .copied()
            .filter(|g| !matches!(*g, "--start" | "--stop-updates-at" | "--export"))
            .collect();
        if !moving.is_empty() {
            return Some(format!(
                "--mode static never updates its mask, so {} means nothing \
                 (give --stop-updates-at to let it move, or use --mode set)",
                moving.join(", ")
            ));
        }
    }
    let strength_opts: Vec<&str> = given
        .iter()
        .copied()
        .filter(|g| {
            matches!(
                *g,
                "--update-interval" | "--strength" | "--strength-method" | "--threshold"
            )
        })
        .collect();
    if !c.rule.uses_strength() && !strength_opts.is_empty() {
        return Some(format!(
            "this rule (prune {}, grow {}) reads no Hebbian strength, so {} means nothing",
            c.rule.prune.name(),
            c.rule.grow.name(),
            strength_opts.join(", ")
        ));
    }
    if args.threshold.is_some() && c.strength == Measure::Correlation {
        return Some("--threshold applies to coactivation, not to --strength correlation".into());
    }
    if c.rule.grow == Grow::None && args.drop_schedule.is_some() && !c.rule.updates() {
        return Some("--drop-schedule needs mask updates (--stop-updates-at > 0)".into());
    }
    None
}

/// Checks what clap's parsers cannot, before any data is loaded, and exits
/// as clap does (a usage message and exit code 2) on a bad value.
fn validate(args: &Args) {
    let config = config_from(args);
    let problem = config
        .validate()
        .err()
        .or_else(|| nonsense(args, &config))
        .or_else(|| {
            (args.limit_train == Some(0) || args.limit_test == Some(0))
                .then(|| "--limit-train and --limit-test must be at least 1".to_string())
        });
    if let Some(msg) = problem {
        Args::command()
            .error(clap::error::ErrorKind::ValueValidation, msg)
            .exit();
    }
}

/// The metrics file: one JSON object per line, each written and flushed as
/// it happens, so an interrupted or killed run keeps every line so far.
struct Metrics {
    file: Option<File>,
    path: PathBuf,
}

impl Metrics {
    fn line(&mut self, v: Value) -> Result<(), String> {
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        writeln!(f, "{v}")
            .and_then(|_| f.flush())
            .map_err(|e| format!("cannot write metrics to {}: {e}", self.path.display()))
    }
}

/// Opens --metrics (appending when resuming) and checks the other paths, all
/// before the data is loaded, so a bad path costs nothing.
fn check_paths(args: &Args) -> Result<Metrics, String> {
    if let Some(p) = &args.resume {
        read_checked(p).map_err(|e| format!("--resume: {e}"))?;
    }
    if let Some(p) = &args.checkpoint {
        check_writable(p).map_err(|e| format!("--checkpoint: {e}"))?;
    }
    if let Some(dir) = &args.export {
        check_export_dir(dir)?;
    }
    let file = match &args.metrics {
        Some(p) if p.is_dir() => {
            return Err(format!(
                "--metrics: {} is a directory, not a file",
                p.display()
            ))
        }
        Some(p) => Some(
            OpenOptions::new()
                .create(true)
                .append(args.resume.is_some())
                .write(true)
                .truncate(args.resume.is_none())
                .open(p)
                .map_err(|e| format!("--metrics: cannot open {}: {e}", p.display()))?,
        ),
        None => None,
    };
    Ok(Metrics {
        file,
        path: args.metrics.clone().unwrap_or_default(),
    })
}

fn main() -> ExitCode {
    // Die quietly when the reader of our output goes away (`cifar | head`),
    // as Unix tools do, instead of panicking on the broken pipe.
    #[cfg(unix)]
    // SAFETY: restoring the default action of a signal, before any thread
    // starts, has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = Args::parse();
    validate(&args);
    // The whole run goes on one of the pool's threads, so that each parallel
    // op starts on a thread that is already awake and takes part, rather
    // than waking every worker and waiting for them on a thread outside the
    // pool (with 2 cores, about 10 % of a sparse step).
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads.map_or(0, |n| n as usize))
        .build();
    let result = match pool {
        Ok(pool) => pool.install(|| run(args)),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// A number stays a number in JSON; everything else is a string.
fn settings_json(trainer: &Trainer, train_len: usize) -> Map<String, Value> {
    trainer
        .config
        .settings(train_len)
        .into_iter()
        .map(|(k, v)| {
            let value = match (v.parse::<i64>(), v.parse::<f64>(), v.as_str()) {
                (Ok(i), _, _) => json!(i),
                (_, Ok(x), _) if x.is_finite() => json!(x),
                (_, _, "true") => json!(true),
                (_, _, "false") => json!(false),
                _ => json!(v),
            };
            (json_key(k), value)
        })
        .collect()
}

fn run(args: Args) -> Result<ExitCode, String> {
    let mut metrics = check_paths(&args)?;
    let config = config_from(&args);
    if sample_recipe(&args) {
        println!(
            "note: no --data, so this trains on the bundled 1,000-image sample with a sample \
             recipe: {} epochs, batch {}, lr {} with cosine decay, augmentation, a mask update \
             every {} batches. The notebook's recipe (2 epochs, batch 4, lr 0.001) is only 500 \
             steps here, too short to learn; it is the default with --data.",
            config.epochs,
            config.batch_size,
            config.lr,
            config.progress_every.unwrap_or(0)
        );
    }
    let data_path = args.data.clone().unwrap_or_else(bundled_sample);
    let Cifar {
        mut train,
        mut test,
    } = load_cifar10(&data_path).map_err(|e| e.to_string())?;
    if let Some(n) = args.limit_train {
        train = train.take(n);
    }
    if let Some(n) = args.limit_test {
        test = test.take(n);
    }
    if train.is_empty() || test.is_empty() {
        return Err("no training or test images left after --limit-train/--limit-test".into());
    }
    println!(
        "data: {} ({} train, {} test images)",
        data_path.display(),
        train.len(),
        test.len()
    );

    let mut trainer = match &args.resume {
        Some(path) => {
            let t = Trainer::resume(config, path, train.len()).map_err(|e| e.to_string())?;
            println!(
                "resumed from {} at epoch {}, batch {}",
                path.display(),
                t.epoch + 1,
                t.batch_in_epoch
            );
            t
        }
        None => Trainer::new(config).map_err(|e| e.to_string())?,
    };
    let settings = trainer.config.settings(train.len());
    let mut config_line = settings_json(&trainer, train.len());
    config_line.insert("type".into(), json!("config"));
    config_line.insert("epochs".into(), json!(trainer.config.epochs));
    config_line.insert("test_images".into(), json!(test.len()));
    config_line.insert("resumed".into(), json!(args.resume.is_some()));
    let label = args
        .label
        .clone()
        .unwrap_or_else(|| trainer.config.mode.name().to_string());
    config_line.insert("label".into(), json!(label));
    metrics.line(Value::Object(config_line))?;

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // Ctrl-C and SIGTERM (what `timeout` and job schedulers send) both
        // ask the loop to stop after the current batch; a second one while
        // the first is being handled ends the process at once.
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    }

    let started = Instant::now();
    while !trainer.finished() {
        let bar = if args.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(0)
        };
        bar.set_style(
            ProgressStyle::with_template(
                "epoch {msg} [{bar:30}] {pos}/{len} batches, {per_sec}, eta {eta}",
            )
            .unwrap()
            .progress_chars("=> "),
        );
        bar.set_message(format!("{}/{}", trainer.epoch + 1, trainer.config.epochs));
        let mut side_err: Option<String> = None;
        let export_every = args.export.as_ref().filter(|_| args.export_every_update);
        let outcome = trainer.run_epoch(&train, &|| stop.load(Ordering::SeqCst), &mut |event| {
            let result = match event {
                Event::Batch { done, total } => {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                    Ok(())
                }
                Event::Log { epoch, batch, step, loss } => {
                    bar.suspend(|| println!("[{epoch}, {batch:5}] loss: {loss:.3}"));
                    metrics.line(json!({"type": "log", "epoch": epoch, "batch": batch, "step": step, "loss": loss}))
                }
                Event::Progress { step, epoch, stats, layers } => {
                    let parts: Vec<String> = stats
                        .iter()
                        .map(|s| format!("kept {} revived {} regrown {} dropped {}", s.kept, s.revived, s.regrown, s.dropped))
                        .collect();
                    bar.suspend(|| println!("mask update at step {step}: {}", parts.join(" | ")));
                    let mut r = Ok(());
                    for (name, s) in LAYER_NAMES.iter().zip(stats) {
                        r = r.and(metrics.line(json!({
                            "type": "progress", "step": step, "epoch": epoch, "layer": name,
                            "kept": s.kept, "revived": s.revived, "regrown": s.regrown,
                            "dropped": s.dropped, "reset": s.reset, "active": s.active, "total": s.total
                        })));
                    }
                    if let Some(dir) = export_every {
                        let dir = step_dir(dir, step);
                        r = r.and(
                            export_layers(&dir, &LAYER_NAMES, layers, &settings, step, epoch)
                                .map_err(|e| format!("cannot export to {}: {e}", dir.display())),
                        );
                    }
                    r
                }
            };
            if let Err(e) = result {
                side_err.get_or_insert(e);
            }
        });
        bar.finish_and_clear();
        if let Some(e) = side_err {
            return Err(e);
        }
        match outcome {
            Ok(EpochEnd::Finished) => {
                if let Some(p) = &args.checkpoint {
                    trainer.save(p, train.len()).map_err(|e| e.to_string())?;
                }
                let eval = trainer.evaluate(&test).map_err(|e| e.to_string())?;
                println!(
                    "epoch {}: test accuracy {:.2} %",
                    trainer.epoch,
                    100.0 * eval.accuracy()
                );
                metrics.line(json!({"type": "epoch", "epoch": trainer.epoch, "step": trainer.global_step, "test_accuracy": eval.accuracy()}))?;
            }
            Ok(EpochEnd::Interrupted) => {
                eprintln!(
                    "interrupted at epoch {}, batch {}",
                    trainer.epoch + 1,
                    trainer.batch_in_epoch
                );
                match &args.checkpoint {
                    Some(p) => {
                        trainer.save(p, train.len()).map_err(|e| e.to_string())?;
                        eprintln!(
                            "checkpoint saved to {}; continue with the same options and --resume {}",
                            p.display(),
                            p.display()
                        );
                    }
                    None => eprintln!(
                        "nothing was saved: run with --checkpoint FILE to be able to continue \
                         an interrupted run with --resume FILE"
                    ),
                }
                return Ok(ExitCode::from(130));
            }
            Err(e @ TrainError::NonFinite { .. }) => {
                // Only an earlier checkpoint can exist: this one is not saved.
                let kept = args
                    .checkpoint
                    .as_ref()
                    .filter(|p| p.exists())
                    .map(|p| format!(" The last checkpoint, {}, is kept.", p.display()));
                return Err(format!("{e}.{}", kept.unwrap_or_default()));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    println!(
        "Finished Training in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let eval = trainer.evaluate(&test).map_err(|e| e.to_string())?;
    // The notebook's report: whole percents, truncated as Python's % 2d does.
    for (i, name) in CLASSES.iter().enumerate() {
        let pct = 100 * eval.correct[i] / eval.total[i].max(1);
        println!("Accuracy of {name:5} : {pct:2} %");
    }
    println!(
        "Accuracy of the network on the {} test images: {:.2} %",
        test.len(),
        100.0 * eval.accuracy()
    );
    let density = trainer.conv_density();
    if !density.is_empty() {
        let d: Vec<String> = density.iter().map(|d| format!("{:.3}", d)).collect();
        println!("conv density: {}", d.join(", "));
    }
    println!(
        "training: {:.0} images/s ({} images in {:.1} s); evaluation: {:.0} images/s",
        trainer.train_images as f64 / trainer.train_seconds.max(1e-9),
        trainer.train_images,
        trainer.train_seconds,
        trainer.eval_images as f64 / trainer.eval_seconds.max(1e-9),
    );
    if let Some(dir) = &args.export {
        let layers = trainer.net.sparse_layers();
        export_layers(
            dir,
            &LAYER_NAMES,
            &layers,
            &settings,
            trainer.global_step,
            trainer.epoch,
        )
        .map_err(|e| format!("cannot export to {}: {e}", dir.display()))?;
        println!("exported the sparse layers to {}", dir.display());
    }
    let mut summary: Value =
        serde_json::from_str(&trainer.summary_json(&eval)).map_err(|e| e.to_string())?;
    summary["label"] = json!(label);
    metrics.line(summary)?;
    if sample_recipe(&args) {
        println!(
            "next: compare rules (--mode static, set, rigl, hebbian-grow; docs/rules.md), train \
             on the full CIFAR-10 with --data (see README.md), and draw a run's --metrics file \
             with: cargo run --release --example report -- METRICS.jsonl"
        );
    }
    Ok(ExitCode::SUCCESS)
}

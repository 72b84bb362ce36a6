//! Train the notebook's LeNet on CIFAR-10: dense, Hebbian-sparse,
//! random-sparse or static-sparse.
//!
//! `cargo run --release --example cifar -- --help` lists the options. With no
//! `--data`, it trains on the small real sample bundled in
//! `datasets/cifar10-sample`.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::{CommandFactory, Parser};
use hebbsparse::cifar::{load_cifar10, Cifar};
use hebbsparse::sparse_conv::strength::{Measure, Method};
use hebbsparse::train::{EpochEnd, Event, Mode, TrainConfig, TrainError, Trainer};
use indicatif::{ProgressBar, ProgressStyle};

/// Train the notebook's LeNet on CIFAR-10 with dense, Hebbian-sparse,
/// random-sparse or static-sparse convolutions.
#[derive(Parser, Debug)]
#[command(name = "cifar", version)]
struct Args {
    /// CIFAR-10 binary data: cifar-10-binary.tar.gz, the cifar-10-batches-bin
    /// directory, or a directory holding either [default: the bundled sample]
    #[arg(long)]
    data: Option<PathBuf>,
    /// dense, hebbian, random or static
    #[arg(long, default_value = "hebbian")]
    mode: Mode,
    /// Passes over the training set
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    epochs: u32,
    /// Images per SGD step
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// SGD learning rate
    #[arg(long, default_value_t = 0.001)]
    lr: f32,
    /// SGD momentum, in [0, 1)
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    /// L2 weight decay added to every gradient
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// Batches between progress_connections [default: 2000, or a quarter
    /// epoch if an epoch is shorter]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    progress_every: Option<u32>,
    /// Batches between loss lines [default: 2000, or a quarter epoch if an
    /// epoch is shorter]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    log_every: Option<u32>,
    /// Sample Hebbian strength on every N-th training forward pass
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    update_interval: u64,
    /// coactivation or correlation
    #[arg(long, default_value = "coactivation")]
    strength: Measure,
    /// How strength is computed: fast (a GEMM), bitcount (AND + popcount,
    /// about 3× faster on CIFAR's shapes), or the notebook's single-unit,
    /// grouped, reduced-redundancy, brute-force. All give the same
    /// coactivation counts.
    #[arg(long, default_value = "fast")]
    strength_method: Method,
    /// Seed for the weights, the data order and the masks
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Worker threads [default: all cores]. Results do not depend on it.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    threads: Option<u32>,
    /// Use only the first N training images
    #[arg(long)]
    limit_train: Option<usize>,
    /// Use only the first N test images
    #[arg(long)]
    limit_test: Option<usize>,
    /// Save a checkpoint here after each epoch and on Ctrl-C
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Continue from this checkpoint (same settings; --epochs may be larger)
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Write JSON metrics here: one object per log line, then a summary
    #[arg(long)]
    metrics: Option<PathBuf>,
    /// Random crops (4-pixel padding) and horizontal flips
    #[arg(long)]
    augment: bool,
    /// Hide the progress bar
    #[arg(long)]
    quiet: bool,
}

const CLASSES: [&str; 10] = [
    "plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
];

fn bundled_sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/cifar10-sample")
}

/// The run's settings from the options.
fn config_from(args: &Args) -> TrainConfig {
    TrainConfig {
        mode: args.mode,
        epochs: args.epochs as usize,
        batch_size: args.batch_size as usize,
        lr: args.lr,
        momentum: args.momentum,
        weight_decay: args.weight_decay,
        progress_every: args.progress_every.map(|v| v as usize),
        log_every: args.log_every.map(|v| v as usize),
        update_interval: args.update_interval,
        strength: args.strength,
        strength_method: args.strength_method,
        seed: args.seed,
        augment: args.augment,
        ..TrainConfig::default()
    }
}

/// Checks what clap's parsers cannot, before any data is loaded, and exits
/// as clap does (a usage message and exit code 2) on a bad value.
fn validate(args: &Args) {
    let problem = config_from(args).validate().err().or_else(|| {
        (args.limit_train == Some(0) || args.limit_test == Some(0))
            .then(|| "--limit-train and --limit-test must be at least 1".to_string())
    });
    if let Some(msg) = problem {
        Args::command()
            .error(clap::error::ErrorKind::ValueValidation, msg)
            .exit();
    }
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
    match run(args) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<ExitCode, String> {
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n as usize)
            .build_global()
            .map_err(|e| e.to_string())?;
    }
    if args.data.is_none() {
        println!(
            "note: no --data given, so this trains on the bundled 1,000-image sample. The \
             notebook's 2-epoch recipe is too short to learn much there (expect about 10%); \
             try --epochs 20 --lr 0.005, or --data for the full CIFAR-10 (see README.md)."
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

    let config = config_from(&args);
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

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // A second Ctrl-C while the first is being handled ends the process.
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    }
    let mut metrics = match &args.metrics {
        Some(p) => {
            // A resumed run adds to the metrics of the run it continues.
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .append(args.resume.is_some())
                .truncate(args.resume.is_none())
                .open(p);
            Some(BufWriter::new(file.map_err(|e| {
                format!("cannot create {}: {e}", p.display())
            })?))
        }
        None => None,
    };

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
        let mut metric_err = None;
        let outcome = trainer.run_epoch(&train, &|| stop.load(Ordering::SeqCst), &mut |event| match event {
            Event::Batch { done, total } => {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            }
            Event::Log { epoch, batch, loss } => {
                bar.suspend(|| println!("[{epoch}, {batch:5}] loss: {loss:.3}"));
                if let Some(m) = metrics.as_mut() {
                    let line = format!("{{\"type\": \"log\", \"epoch\": {epoch}, \"batch\": {batch}, \"loss\": {loss:.6}}}");
                    if let Err(e) = writeln!(m, "{line}") {
                        metric_err = Some(e);
                    }
                }
            }
            Event::Progress { step, stats } => {
                let parts: Vec<String> = stats
                    .iter()
                    .map(|s| format!("kept {} revived {} regrown {} dropped {}", s.kept, s.revived, s.regrown, s.dropped))
                    .collect();
                bar.suspend(|| println!("progress_connections at step {step}: {}", parts.join(" | ")));
            }
        });
        bar.finish_and_clear();
        if let Some(e) = metric_err {
            return Err(format!("cannot write metrics: {e}"));
        }
        match outcome {
            Ok(EpochEnd::Finished) => {
                if let Some(p) = &args.checkpoint {
                    trainer.save(p, train.len()).map_err(|e| e.to_string())?;
                }
            }
            Ok(EpochEnd::Interrupted) => {
                eprintln!(
                    "interrupted at epoch {}, batch {}",
                    trainer.epoch + 1,
                    trainer.batch_in_epoch
                );
                if let Some(p) = &args.checkpoint {
                    trainer.save(p, train.len()).map_err(|e| e.to_string())?;
                    eprintln!(
                        "checkpoint saved to {}; continue with --resume {}",
                        p.display(),
                        p.display()
                    );
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
        "training: {:.0} images/s ({} images in {:.1} s)",
        trainer.train_images as f64 / trainer.train_seconds.max(1e-9),
        trainer.train_images,
        trainer.train_seconds
    );
    if let Some(m) = metrics.as_mut() {
        writeln!(m, "{}", trainer.summary_json(&eval))
            .and_then(|_| m.flush())
            .map_err(|e| format!("cannot write metrics: {e}"))?;
    }
    Ok(ExitCode::SUCCESS)
}

//! Train a CNN on CIFAR-10: the notebook's LeNet or a CIFAR ResNet
//! (`--model resnet20`), dense or sparse with one of the prune/grow rules
//! (the notebook's Hebbian rule, Hebbian growth, SET, RigL, random and
//! static masks), every part of the rule an option.
//!
//! `cargo run --release --example cifar -- --help` lists the options. With no
//! `--data`, it trains on the small real sample bundled in
//! `datasets/cifar10-sample`, with a recipe that learns there in seconds.
//!
//! Files: `args.rs` (the options and how they make a run's settings),
//! `metrics.rs` (the JSON-lines metrics file), this file (the run).

mod args;
mod metrics;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use args::{config_from, validate, Args};
use clap::Parser;
use hebbsparse::checkpoint::{check_writable, read_checked};
use hebbsparse::cifar::{load_cifar10_with_warnings, Cifar, Split};
use hebbsparse::config::{Setting, TrainConfig};
use hebbsparse::export::{check_export_dir, claim_export_dir, export_layers, step_dir};
use hebbsparse::recipe::Recipe;
use hebbsparse::train::{EpochEnd, Event, TrainError, Trainer};
use indicatif::{ProgressBar, ProgressStyle};
use metrics::{settings_json, Metrics};
use serde_json::{json, Value};

const CLASSES: [&str; 10] = [
    "plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
];

fn bundled_sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/cifar10-sample")
}

/// Opens --metrics and checks the other paths, all before the data is
/// loaded, so a bad path costs nothing.
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
    Metrics::open(args.metrics.as_deref())
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

/// Says which recipe a run without --data uses, and why.
fn sample_note(args: &Args, trainer: &Trainer) {
    if args.data.is_some() || args.recipe() != Recipe::Sample {
        return;
    }
    let c = &trainer.config;
    println!(
        "note: no --data, so this trains {} on the bundled 1,000-image sample with the sample \
         recipe: {} epochs, batch {}, lr {} with cosine decay, augmentation, a mask update \
         every {} batches. The notebook's recipe (2 epochs, batch 4, lr 0.001) is only 500 \
         steps here, too short to learn; with --data a network's own recipe is the default.",
        c.model.arch,
        c.epochs,
        c.batch_size,
        c.lr,
        c.progress_every.unwrap_or(0)
    );
}

/// Warns when the density the sparse layers aim for is far from the one
/// asked for: a group keeps at least one tap, and ⌊fraction · taps⌋ rounds
/// down.
fn density_note(trainer: &Trainer) {
    let asked = trainer.config.total_fraction;
    let layers = trainer.net.sparse_layers();
    let (mut target, mut total) = (0.0, 0usize);
    for (_, l) in &layers {
        let (n, _, k2) = l.group_sizes();
        target += l.mask().len() as f64 * k2 as f64 / n as f64;
        total += l.mask().len();
    }
    if total > 0 {
        let got = target / total as f64;
        // The notebook's 3 of 25 taps (12 % for 0.15) is its design; a
        // density far off is a surprise worth a word.
        if (got - asked).abs() > 0.25 * asked {
            eprintln!(
                "warning: --density {asked} became {got:.4} over the sparse layers: each {} \
                 group keeps a whole number of taps, at least one (see docs/rules.md)",
                trainer.config.prune_dims.name()
            );
        }
    }
}

/// Ctrl-C and SIGTERM (what `timeout` and job schedulers send) both ask the
/// loop to stop after the current batch (one that comes while the data
/// loads stops the run after its first batch, with a checkpoint to resume
/// from); a second one while the first is being handled ends the process
/// at once.
fn stop_on_signals() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
    stop
}

/// The training and test splits of --data (or the bundled sample), cut by
/// --limit-train and --limit-test.
fn load_data(args: &Args) -> Result<(Split, Split), String> {
    let data_path = args.data.clone().unwrap_or_else(bundled_sample);
    let loaded = load_cifar10_with_warnings(&data_path).map_err(|e| e.to_string())?;
    // The bundled sample is one training batch by design; with --data a
    // missing batch is worth saying.
    if args.data.is_some() {
        for w in &loaded.warnings {
            eprintln!("warning: {w}");
        }
    }
    let Cifar {
        mut train,
        mut test,
    } = loaded.data;
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
    Ok((train, test))
}

/// A new run, or the one --resume names.
fn start(args: &Args, train_len: usize) -> Result<Trainer, String> {
    let config = config_from(args);
    let trainer = match &args.resume {
        Some(path) => {
            let t = Trainer::resume(config, path, train_len).map_err(|e| e.to_string())?;
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
    sample_note(args, &trainer);
    density_note(&trainer);
    Ok(trainer)
}

/// The metrics file's first line for this run: its settings, and what is
/// not a setting (epochs, test images, resumed, label).
fn config_line(
    args: &Args,
    trainer: &Trainer,
    train_len: usize,
    test_len: usize,
    label: &str,
) -> Value {
    let mut line = settings_json(&trainer.config, train_len);
    line.insert("type".into(), json!("config"));
    line.insert("epochs".into(), json!(trainer.config.epochs));
    line.insert("test_images".into(), json!(test_len));
    line.insert("resumed".into(), json!(args.resume.is_some()));
    line.insert("label".into(), json!(label));
    Value::Object(line)
}

fn run(args: Args) -> Result<ExitCode, String> {
    let mut metrics = check_paths(&args)?;
    let stop = stop_on_signals();
    let (train, test) = load_data(&args)?;
    let mut trainer = start(&args, train.len())?;
    let settings = trainer.config.settings(train.len());
    if let Some(dir) = &args.export {
        claim_export_dir(dir, &settings, args.export_clear)?;
    }
    let label = args
        .label
        .clone()
        .unwrap_or_else(|| trainer.config.mode.name().to_string());
    metrics.line(config_line(
        &args,
        &trainer,
        train.len(),
        test.len(),
        &label,
    ))?;

    let started = Instant::now();
    let mut saved_any = false;
    // Said once: with updates at every epoch's end it would be every epoch.
    let mut warned = false;
    while !trainer.finished() {
        let bar = progress_bar(args.quiet, &trainer);
        let export_every = args.export.as_deref().filter(|_| args.export_every_update);
        let mut sink = EventSink {
            bar: &bar,
            metrics: &mut metrics,
            export_every,
            settings: &settings,
            label: &label,
            error: None,
        };
        let outcome = trainer.run_epoch(&train, &|| stop.load(Ordering::SeqCst), &mut |e| {
            sink.take(e)
        });
        bar.finish_and_clear();
        if let Some(e) = sink.error {
            // Keep what can be kept: the run's position, if it can be saved.
            if let Some(p) = &args.checkpoint {
                if outcome.is_ok() && trainer.save(p, train.len()).is_ok() {
                    return Err(format!(
                        "{e}; the checkpoint {} was saved, so the run can continue with --resume",
                        p.display()
                    ));
                }
            }
            return Err(e);
        }
        match outcome {
            Ok(EpochEnd::Finished) => {
                let progress = (&mut saved_any, &mut warned);
                end_of_epoch(
                    &args,
                    &mut trainer,
                    &test,
                    train.len(),
                    &mut metrics,
                    progress,
                )?;
            }
            Ok(EpochEnd::Interrupted) => return interrupted(&args, &trainer, train.len()),
            Err(e @ TrainError::NonFinite { .. }) => {
                let _ = metrics.line(json!({"type": "stopped", "reason": "non-finite loss", "epoch": trainer.epoch + 1, "step": trainer.global_step, "message": e.to_string()}));
                return Err(format!("{e}.{}", kept_checkpoint(&args, saved_any)));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    println!(
        "Finished Training in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if let Some((since, taps)) = just_updated(&trainer, train.len()) {
        eprintln!(
            "warning: the final accuracy below is measured {since} steps after a mask update \
             that gave {taps} taps fresh random values, so it understates the network; \
             --stop-updates-at below 1 keeps the last update away from the end (docs/rules.md)"
        );
    }
    finish(&args, &mut trainer, &test, &settings, &label, &mut metrics)
}

/// A finished epoch: its evaluation, its accuracy line (with, the first
/// time only, a note when the evaluation came right after a re-initialising
/// mask update), then its checkpoint. In that order a run killed at any
/// point loses no accuracy line: killed before the save, it resumes from
/// the last epoch's checkpoint and makes this epoch again, bit for bit,
/// and a reader keeps the later of two lines for one epoch. `saved_any`
/// and `warned` are updated.
fn end_of_epoch(
    args: &Args,
    trainer: &mut Trainer,
    test: &Split,
    train_len: usize,
    metrics: &mut Metrics,
    (saved_any, warned): (&mut bool, &mut bool),
) -> Result<(), String> {
    let eval = trainer.evaluate(test).map_err(|e| e.to_string())?;
    println!(
        "epoch {}: test accuracy {:.2} %",
        trainer.epoch,
        100.0 * eval.accuracy()
    );
    if !*warned && just_updated(trainer, train_len).is_some() {
        *warned = true;
        eprintln!(
            "note: epoch {}'s accuracy was measured right after a mask update that gave taps \
             fresh random values, so it understates the network; later epochs may be too \
             (each accuracy line of --metrics says how many steps after an update it was \
             measured; see docs/rules.md)",
            trainer.epoch
        );
    }
    let since = trainer.steps_since_update();
    metrics.line(json!({"type": "epoch", "epoch": trainer.epoch, "step": trainer.global_step, "test_accuracy": eval.accuracy(), "steps_since_update": since}))?;
    if let Some(p) = &args.checkpoint {
        trainer.save(p, train_len).map_err(|e| e.to_string())?;
        *saved_any = true;
    }
    Ok(())
}

/// The progress bar of one epoch (hidden with --quiet).
fn progress_bar(quiet: bool, trainer: &Trainer) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "epoch {msg} [{bar:30}] {pos}/{len} batches, {per_sec}, eta {eta}",
        )
        .unwrap()
        .with_key(
            "per_sec",
            |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.1}/s", s.per_sec());
            },
        )
        .progress_chars("=> "),
    );
    bar.set_message(format!("{}/{}", trainer.epoch + 1, trainer.config.epochs));
    bar
}

/// Where the training loop's events go: the progress bar, stdout, the
/// metrics file and, at mask updates, the export. The first error is kept
/// (the epoch finishes; the caller stops after it, saving what it can).
struct EventSink<'a> {
    bar: &'a ProgressBar,
    metrics: &'a mut Metrics,
    export_every: Option<&'a Path>,
    settings: &'a [(&'static str, Setting)],
    /// The run's label (`--label`, else the mode), for the exports.
    label: &'a str,
    error: Option<String>,
}

impl EventSink<'_> {
    fn take(&mut self, event: Event) {
        if let Err(e) = self.handle(event) {
            self.error.get_or_insert(e);
        }
    }

    fn handle(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Batch { done, total } => {
                self.bar.set_length(total as u64);
                self.bar.set_position(done as u64);
                Ok(())
            }
            Event::Log {
                epoch,
                batch,
                step,
                loss,
            } => {
                self.bar
                    .suspend(|| println!("[{epoch}, {batch:5}] loss: {loss:.3}"));
                self.metrics.line(json!({"type": "log", "epoch": epoch, "batch": batch, "step": step, "loss": loss}))
            }
            Event::Progress {
                step,
                epoch,
                names,
                stats,
                layers,
            } => {
                if names.len() <= 4 {
                    let parts: Vec<String> = stats
                        .iter()
                        .map(|s| {
                            format!(
                                "kept {} revived {} regrown {} dropped {}",
                                s.kept, s.revived, s.regrown, s.dropped
                            )
                        })
                        .collect();
                    self.bar
                        .suspend(|| println!("mask update at step {step}: {}", parts.join(" | ")));
                } else {
                    let dropped: usize = stats.iter().map(|s| s.dropped).sum();
                    let grown: usize = stats.iter().map(|s| s.regrown + s.revived).sum();
                    let n = names.len();
                    self.bar.suspend(|| println!("mask update at step {step}: {n} layers, dropped {dropped}, grown {grown}"));
                }
                for (name, s) in names.iter().zip(stats) {
                    self.metrics.line(json!({
                        "type": "progress", "step": step, "epoch": epoch, "layer": name,
                        "kept": s.kept, "revived": s.revived, "regrown": s.regrown,
                        "dropped": s.dropped, "reset": s.reset, "active": s.active, "total": s.total
                    }))?;
                }
                if let Some(dir) = self.export_every {
                    let dir = step_dir(dir, step);
                    let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
                    export_layers(
                        &dir,
                        &names,
                        layers,
                        (self.settings, self.label),
                        step,
                        epoch,
                    )
                    .map_err(|e| format!("cannot export to {}: {e}", dir.display()))?;
                }
                Ok(())
            }
        }
    }
}

/// Ctrl-C or SIGTERM stopped the epoch: save the checkpoint if there is one
/// to save, and say how to continue.
fn interrupted(args: &Args, trainer: &Trainer, train_len: usize) -> Result<ExitCode, String> {
    eprintln!(
        "interrupted at epoch {}, batch {}",
        trainer.epoch + 1,
        trainer.batch_in_epoch
    );
    match &args.checkpoint {
        Some(p) => {
            trainer.save(p, train_len).map_err(|e| e.to_string())?;
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
    Ok(ExitCode::from(130))
}

/// What a diverged run says of its checkpoint: only one saved before the
/// divergence can exist (the diverged state is not saved).
fn kept_checkpoint(args: &Args, saved_any: bool) -> String {
    match &args.checkpoint {
        Some(p) if saved_any || (args.resume.as_ref() == Some(p) && p.exists()) => format!(
            " The last checkpoint, {}, is kept from before the divergence.",
            p.display()
        ),
        Some(_) => " No checkpoint was saved by this run.".into(),
        None => String::new(),
    }
}

/// Whether the network was evaluated soon after a mask update that gave
/// taps fresh random values (within half an update interval): it has not
/// recovered yet, so the accuracy understates it. Returns the steps since
/// that update and how many taps it re-initialised.
fn just_updated(trainer: &Trainer, train_len: usize) -> Option<(u64, u64)> {
    let (u, since) = (trainer.last_update?, trainer.steps_since_update()?);
    let per_epoch = trainer.config.batches_per_epoch(train_len);
    let every = TrainConfig::interval(trainer.config.progress_every, per_epoch) as u64;
    (u.reinitialised > 0 && since < (every / 2).max(1)).then_some((since, u.reinitialised))
}

/// The final evaluation, the notebook's report, the summary, then the export.
fn finish(
    args: &Args,
    trainer: &mut Trainer,
    test: &Split,
    settings: &[(&str, Setting)],
    label: &str,
    metrics: &mut Metrics,
) -> Result<ExitCode, String> {
    let eval = trainer.evaluate(test).map_err(|e| e.to_string())?;
    // The notebook's report: whole percents, truncated as Python's % 2d does.
    for (i, name) in CLASSES.iter().enumerate() {
        match eval.total.get(i) {
            Some(&t) if t > 0 => {
                println!("Accuracy of {name:5} : {:2} %", 100 * eval.correct[i] / t)
            }
            _ => println!("Accuracy of {name:5} : no test images"),
        }
    }
    println!(
        "Accuracy of the network on the {} test images: {:.2} %",
        test.len(),
        100.0 * eval.accuracy()
    );
    if let Some(d) = trainer.density() {
        let per: Vec<String> = trainer
            .conv_density()
            .iter()
            .map(|d| format!("{d:.3}"))
            .collect();
        if per.len() <= 4 {
            println!("density: {d:.4} (per layer: {})", per.join(", "));
        } else {
            println!("density: {d:.4} over {} sparse layers", per.len());
        }
    }
    println!(
        "training: {:.0} images/s ({} images in {:.1} s); evaluation: {:.0} images/s",
        trainer.train_images as f64 / trainer.train_seconds.max(1e-9),
        trainer.train_images,
        trainer.train_seconds,
        trainer.eval_images as f64 / trainer.eval_seconds.max(1e-9),
    );
    let mut summary: Value =
        serde_json::from_str(&trainer.summary_json(&eval)).map_err(|e| e.to_string())?;
    summary["label"] = json!(label);
    metrics.line(summary)?;
    if let Some(dir) = &args.export {
        let layers = trainer.net.sparse_layers();
        let names: Vec<&str> = layers.iter().map(|(n, _)| n.as_str()).collect();
        let layers: Vec<_> = layers.iter().map(|(_, l)| *l).collect();
        export_layers(
            dir,
            &names,
            &layers,
            (settings, label),
            trainer.global_step,
            trainer.epoch,
        )
        .map_err(|e| format!("cannot export to {}: {e}", dir.display()))?;
        println!("exported the sparse layers to {}", dir.display());
    }
    if args.data.is_none() {
        println!(
            "next: compare rules (--mode static, set, rigl, hebbian-grow; docs/rules.md) and \
             networks (--model lenet, resnet20; docs/models.md), train on the full CIFAR-10 with --data (see \
             README.md), and draw a run's --metrics file with: cargo run --release --example \
             report -- METRICS.jsonl"
        );
    }
    Ok(ExitCode::SUCCESS)
}

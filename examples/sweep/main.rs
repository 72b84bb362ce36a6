//! Run a study: many independent runs of the cifar example, one for each
//! point of a grid of its options, on this machine (`--jobs N` at a time)
//! or as a Slurm array job (`--emit slurm`), each run in its own folder,
//! every one resumable.
//!
//! ```text
//! cargo build --release --examples
//! target/release/examples/sweep --grid 'mode=static,set,rigl seed=0,1,2' --out study \
//!     --jobs 2 -- --model resnet20 --recipe resnet --density 0.1
//! sh study/report.sh
//! ```
//!
//! Files: `grid.rs` (the grid, its order, run names and labels), `cifar.rs`
//! (the cifar binary and its options), `manifest.rs` (`DIR/sweep.json`),
//! `run_dir.rs` (a run's folder and state), `local.rs` (running runs here,
//! and a Slurm task's one run), `slurm.rs` (the sbatch and report scripts),
//! this file (the command line).

mod cifar;
mod grid;
mod local;
mod manifest;
mod run_dir;
mod slurm;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, ValueEnum};

use cifar::Cifar;
use grid::Grid;
use manifest::{Manifest, Run};
use run_dir::{describe, RunDir, State};

const AFTER_HELP: &str = "\
The grid (--grid 'KEY=V1,V2,... KEY=...'):
  Each KEY is a cifar option without its '--', each value one run's value of it; the runs
  are every combination. Their order is fixed: keys as written, the first varying slowest,
  the last fastest (so 'mode=static,set seed=0,1' runs mode-static_seed-0,
  mode-static_seed-1, mode-set_seed-0, mode-set_seed-1); a run's place in it, from 0, is
  its Slurm array index. A switch such as sparse-stem takes true (--sparse-stem is given)
  and false (it is left out); an option with a value gets it as written, so augment=false
  passes --augment false. Everything after -- is passed to every run.

Each run (DIR/runs/NAME, NAME from its values, e.g. mode-set_seed-1):
  metrics.jsonl, checkpoint.ckpt, log.txt (its output). The sweep passes --metrics,
  --checkpoint, --label (the grid values but the seed, so the report groups seeds),
  --quiet, and --threads (cores / --jobs) unless the options set it; a run with a summary
  is skipped, one with a checkpoint resumed. DIR/sweep.json records the grid and options;
  `sweep --out DIR` alone continues the recorded sweep. DIR/report.sh draws every run.

Exit codes: 0 all runs finished, 1 a run failed, 2 a bad command, 130 interrupted
(Ctrl-C or SIGTERM: the running runs save their checkpoints; the same command goes on).";

/// What to do instead of running the sweep here.
#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum Emit {
    /// DIR/sweep.sbatch, a Slurm array job with one task per run
    Slurm,
}

/// Run many cifar runs, one per point of a grid of its options, here or on
/// Slurm; each run resumable, a finished one skipped.
#[derive(Parser, Debug)]
#[command(
    name = "sweep",
    version,
    after_help = AFTER_HELP,
    override_usage = "sweep --grid 'KEY=V1,V2 ...' --out DIR [OPTIONS] [-- CIFAR OPTIONS...]"
)]
struct Args {
    /// The grid: KEY=V1,V2,... words (see below); may be repeated
    #[arg(long, value_name = "SPEC")]
    grid: Vec<String>,
    /// The sweep's folder: sweep.json, report.sh and runs/NAME/ for each run
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Runs at a time on this machine
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    jobs: u32,
    /// The cifar example's binary [default: `cifar` beside this executable]
    #[arg(long, value_name = "PATH")]
    cifar: Option<PathBuf>,
    /// Print each run's name and command, and run nothing
    #[arg(long, conflicts_with_all = ["status", "task", "emit"])]
    list: bool,
    /// Print where each run stands; exit 0 only when every run has finished
    #[arg(long, conflicts_with_all = ["task", "emit"])]
    status: bool,
    /// Run only the run at this index, in this process (a Slurm array task)
    #[arg(long, value_name = "INDEX", conflicts_with = "emit")]
    task: Option<usize>,
    /// Write a scheduler's job script instead of running here
    #[arg(long, value_name = "KIND")]
    emit: Option<Emit>,

    /// #SBATCH --partition [default: the cluster's]
    #[arg(long, help_heading = "Slurm (with --emit slurm)")]
    partition: Option<String>,
    /// #SBATCH --time: each task's time limit; a run still going is
    /// stopped, saved and requeued before it
    #[arg(
        long,
        default_value = "24:00:00",
        help_heading = "Slurm (with --emit slurm)"
    )]
    time: String,
    /// #SBATCH --cpus-per-task: cores per run (its --threads)
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Slurm (with --emit slurm)")]
    cpus_per_task: u32,
    /// #SBATCH --mem: memory per run
    #[arg(long, default_value = "4G", help_heading = "Slurm (with --emit slurm)")]
    mem: String,
    /// Seconds before the time limit at which a run saves and is requeued
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Slurm (with --emit slurm)")]
    signal_before: u32,
    /// At most this many tasks at once (#SBATCH --array=...%N)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Slurm (with --emit slurm)")]
    max_running: Option<u32>,
    /// Another #SBATCH line, e.g. --sbatch=--account=proj (repeatable)
    #[arg(
        long,
        value_name = "ARG",
        allow_hyphen_values = true,
        help_heading = "Slurm (with --emit slurm)"
    )]
    sbatch: Vec<String>,

    /// Options for every run (after --)
    #[arg(last = true, value_name = "CIFAR OPTIONS")]
    base: Vec<String>,
}

fn main() -> ExitCode {
    // Die quietly when the reader of our output goes away (`sweep --list |
    // head`), as Unix tools do, instead of panicking on the broken pipe.
    #[cfg(unix)]
    // SAFETY: restoring the default action of a signal, before any thread
    // starts, has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<ExitCode, String> {
    let cifar = cifar::locate(args.cifar.as_deref())?;
    let manifest = sweep_of(args, &cifar)?;
    if args.list {
        list(args, &manifest);
        return Ok(ExitCode::SUCCESS);
    }
    if args.status {
        return Ok(status(&args.out, &manifest));
    }
    if let Some(index) = args.task {
        return Ok(local::run_task(
            &manifest,
            &args.out,
            &cifar,
            index,
            task_threads(),
        ));
    }
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot make {}: {e}", args.out.display()))?;
    manifest.write(&args.out)?;
    let sweep = std::env::current_exe().map_err(|e| e.to_string())?;
    let workdir = std::env::current_dir().map_err(|e| e.to_string())?;
    let out = slurm::absolute(&args.out);
    let report = out.join("report.sh");
    slurm::write_script(&report, &slurm::report_script(&out, &sweep, &workdir))?;
    if args.emit == Some(Emit::Slurm) {
        return emit_slurm(args, &manifest, &out, &cifar, &sweep, &workdir);
    }
    let jobs = args.jobs as usize;
    let threads = (cores() / jobs).max(1);
    Ok(local::run_all(&manifest, &args.out, &cifar, jobs, threads))
}

/// The sweep this command means: the grid and options given (checked
/// against the cifar example and against a sweep already in the folder), or
/// the one recorded in the folder when none are given.
fn sweep_of(args: &Args, cifar: &Path) -> Result<Manifest, String> {
    let recorded = Manifest::read(&args.out)?;
    if args.grid.is_empty() {
        if !args.base.is_empty() {
            return Err(
                "options after -- need a --grid as well (give neither to continue \
                        the sweep recorded in --out)"
                    .into(),
            );
        }
        return recorded.ok_or_else(|| {
            format!(
                "{} holds no sweep.json: give --grid to start a sweep there",
                args.out.display()
            )
        });
    }
    let grid = Grid::parse(&args.grid)?;
    let cifar = Cifar::read(cifar)?;
    cifar.check_grid(&grid)?;
    cifar.check_base(&args.base, &grid)?;
    let given = plan(&grid, &args.base, &cifar)?;
    match recorded {
        Some(r) => match r.differs(&given, &args.out) {
            Some(why) => Err(why),
            None => Ok(r),
        },
        None => Ok(given),
    }
}

/// The runs of a grid: names, labels and the options their values make.
fn plan(grid: &Grid, base: &[String], cifar: &Cifar) -> Result<Manifest, String> {
    let names = grid.names()?;
    let runs = grid
        .points()
        .into_iter()
        .zip(names)
        .map(|(point, name)| Run {
            label: grid::label(&point),
            args: point
                .iter()
                .flat_map(|(k, v)| cifar.grid_args(k, v))
                .collect(),
            name,
        })
        .collect();
    Ok(Manifest {
        grid: grid.clone(),
        base: base.to_vec(),
        runs,
    })
}

/// `--list`: each run's index, name, label and the command that starts it.
fn list(args: &Args, manifest: &Manifest) {
    let threads = (cores() / args.jobs as usize).max(1);
    for (i, run) in manifest.runs.iter().enumerate() {
        let dir = RunDir::new(&args.out, run);
        let label = run.label.as_deref().unwrap_or("(the mode)");
        println!("{i} {} [label: {label}]", run.name);
        let cmd = dir.command(run, &manifest.base, State::New, Some(threads));
        let words: Vec<String> = cmd.iter().map(|w| slurm::quote(w)).collect();
        println!("    cifar {}", words.join(" "));
    }
}

/// `--status`: a line per run; success only when every run has finished.
fn status(out: &Path, manifest: &Manifest) -> ExitCode {
    let mut finished = 0;
    for (i, run) in manifest.runs.iter().enumerate() {
        let dir = RunDir::new(out, run);
        let state = dir.state();
        finished += matches!(state, State::Finished(_)) as usize;
        let progress = match state {
            State::Resumable => dir.progress(),
            _ => String::new(),
        };
        let sep = if progress.is_empty() { "" } else { "; " };
        println!("{i} {}: {}{sep}{progress}", run.name, describe(state));
    }
    println!("{finished} of {} runs finished", manifest.runs.len());
    if finished == manifest.runs.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `--emit slurm`: writes the array job and says how to submit it.
fn emit_slurm(
    args: &Args,
    manifest: &Manifest,
    out: &Path,
    cifar: &Path,
    sweep: &Path,
    workdir: &Path,
) -> Result<ExitCode, String> {
    let logs = out.join("slurm");
    std::fs::create_dir_all(&logs).map_err(|e| format!("cannot make {}: {e}", logs.display()))?;
    let settings = slurm::Sbatch {
        partition: args.partition.clone(),
        time: args.time.clone(),
        cpus_per_task: args.cpus_per_task,
        mem: args.mem.clone(),
        signal_before: args.signal_before,
        max_running: args.max_running,
        extra: args.sbatch.clone(),
    };
    let cifar = slurm::absolute(cifar);
    let n = manifest.runs.len();
    let text = slurm::sbatch_script(&settings, n, out, sweep, &cifar, workdir);
    let script = out.join("sweep.sbatch");
    slurm::write_script(&script, &text)?;
    let tasks = match n {
        1 => "1 array task".to_string(),
        n => format!("{n} array tasks"),
    };
    println!(
        "wrote {} ({tasks}, one per run; task logs in {})",
        script.display(),
        logs.display()
    );
    println!(
        "submit:   sbatch {}",
        slurm::quote(&script.display().to_string())
    );
    println!(
        "progress: {} --out {} --status",
        sweep.display(),
        out.display()
    );
    println!("report:   sh {}", out.join("report.sh").display());
    Ok(ExitCode::SUCCESS)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A Slurm task's threads: the cores Slurm gave it, else this machine's.
fn task_threads() -> usize {
    std::env::var("SLURM_CPUS_PER_TASK")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(cores)
}

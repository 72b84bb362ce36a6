//! Running the sweep on this machine, `--jobs N` runs at a time, and a
//! Slurm task's single run.
//!
//! Each run is a child process with its own process group, so that a Ctrl-C
//! at the terminal reaches only the sweep, which then sends each running
//! child exactly one SIGTERM: the cifar example stops after its current
//! batch and saves its checkpoint, while a second signal would end it at
//! once without saving. A second Ctrl-C to the sweep is passed on as that
//! second signal, for when waiting is not wanted.

use std::path::Path;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::manifest::Manifest;
use crate::run_dir::{describe, sets, RunDir, State};

/// The exit code of an interrupted run (and of an interrupted sweep), as the
/// cifar example and shells use for Ctrl-C.
const INTERRUPTED: u8 = 130;

/// How often the sweep looks at its children and at the signal count.
const POLL: Duration = Duration::from_millis(100);

/// How one attempt at a run ended.
enum Outcome {
    Finished(Option<f64>),
    Interrupted,
    Failed(String),
}

/// A run being trained.
struct Running {
    index: usize,
    child: Child,
    started: Instant,
    /// How many signals this child has been sent.
    signalled: usize,
}

/// The sweep on this machine while it runs: what is left, what runs, and
/// what failed.
struct Pool<'a> {
    manifest: &'a Manifest,
    cifar: &'a Path,
    dirs: Vec<RunDir>,
    threads: usize,
    bar: ProgressBar,
    /// Runs not yet started, the next last.
    queue: Vec<usize>,
    running: Vec<Running>,
    failed: Vec<usize>,
    /// Runs stopped by a signal the sweep did not pass on.
    stopped_outside: usize,
}

/// Runs every unfinished run of the sweep in `out`, `jobs` at a time, each
/// with `threads` worker threads (unless its options set them).
pub fn run_all(
    manifest: &Manifest,
    out: &Path,
    cifar: &Path,
    jobs: usize,
    threads: usize,
) -> ExitCode {
    let dirs: Vec<RunDir> = manifest.runs.iter().map(|r| RunDir::new(out, r)).collect();
    let states: Vec<State> = dirs.iter().map(RunDir::state).collect();
    let finished = |s: &State| matches!(s, State::Finished(_));
    let done = states.iter().filter(|s| finished(s)).count();
    let resumable = states.iter().filter(|s| **s == State::Resumable).count();
    let total = manifest.runs.len();
    let set_by_options =
        sets(&manifest.base, "threads") || manifest.runs.iter().any(|r| sets(&r.args, "threads"));
    let each = match threads {
        _ if set_by_options => "--threads as the options set it".to_string(),
        1 => "1 thread each".to_string(),
        n => format!("{n} threads each"),
    };
    println!(
        "{total} runs in {}: {done} finished (skipped), {resumable} to resume, {} to start; \
         {jobs} at a time, {each}",
        out.display(),
        total - done - resumable
    );
    let signals = Arc::new(AtomicUsize::new(0));
    {
        let signals = signals.clone();
        // Ctrl-C, SIGTERM and SIGHUP: the loop below passes each on.
        if let Err(e) = ctrlc::set_handler(move || {
            signals.fetch_add(1, Ordering::SeqCst);
        }) {
            eprintln!("warning: cannot catch Ctrl-C ({e}); an interrupted run may lose its epoch");
        }
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("[{bar:30}] {pos}/{len} runs done, {elapsed} {msg}")
            .unwrap()
            .progress_chars("=> "),
    );
    bar.set_position(done as u64);
    let queue = (0..total)
        .filter(|&i| !finished(&states[i]))
        .rev()
        .collect();
    let mut pool = Pool {
        manifest,
        cifar,
        dirs,
        threads,
        bar,
        queue,
        running: Vec::new(),
        failed: Vec::new(),
        stopped_outside: 0,
    };
    loop {
        let stopping = signals.load(Ordering::SeqCst);
        if stopping == 0 {
            while pool.running.len() < jobs && pool.start_next() {}
        } else {
            pool.forward(stopping);
        }
        pool.reap(stopping > 0);
        if pool.running.is_empty() && (pool.queue.is_empty() || stopping > 0) {
            break;
        }
        pool.bar.set_message(pool.running_names());
        std::thread::sleep(POLL);
    }
    pool.bar.finish_and_clear();
    pool.finish(out, signals.load(Ordering::SeqCst) > 0)
}

impl Pool<'_> {
    /// "[3/12] mode-set_seed-1", for the sweep's lines.
    fn at(&self, i: usize) -> String {
        format!(
            "[{}/{}] {}",
            i + 1,
            self.manifest.runs.len(),
            self.manifest.runs[i].name
        )
    }

    /// Starts the next run in the queue; false when the queue is empty.
    fn start_next(&mut self) -> bool {
        let Some(i) = self.queue.pop() else {
            return false;
        };
        let dir = &self.dirs[i];
        let state = dir.state();
        let cmd = dir.command(
            &self.manifest.runs[i],
            &self.manifest.base,
            state,
            Some(self.threads),
        );
        match spawn(self.cifar, &cmd, dir, state) {
            Ok(child) => {
                let how = if state == State::Resumable {
                    "resume"
                } else {
                    "start "
                };
                self.bar.suspend(|| println!("{how} {}", self.at(i)));
                self.running.push(Running {
                    index: i,
                    child,
                    started: Instant::now(),
                    signalled: 0,
                });
            }
            Err(e) => {
                self.bar.suspend(|| eprintln!("FAILED {}: {e}", self.at(i)));
                self.failed.push(i);
                self.bar.inc(1);
            }
        }
        true
    }

    /// Sends SIGTERM to each running child until it has had as many as the
    /// sweep has (the first asks it to save and stop, a second ends it).
    fn forward(&mut self, signals: usize) {
        for r in self.running.iter_mut() {
            while r.signalled < signals.min(2) {
                if r.signalled == 0 {
                    let name = &self.manifest.runs[r.index].name;
                    self.bar.suspend(|| {
                        println!("stopping {name}: it saves its checkpoint (Ctrl-C again ends it at once)")
                    });
                }
                terminate(&r.child);
                r.signalled += 1;
            }
        }
    }

    /// Takes in the runs that have ended and says how each did.
    fn reap(&mut self, stopping: bool) {
        let mut k = 0;
        while k < self.running.len() {
            let status = match self.running[k].child.try_wait() {
                Ok(Some(status)) => status,
                Ok(None) => {
                    k += 1;
                    continue;
                }
                Err(e) => {
                    eprintln!("warning: cannot wait for a run ({e})");
                    k += 1;
                    continue;
                }
            };
            let r = self.running.swap_remove(k);
            let secs = r.started.elapsed().as_secs_f64();
            let (at, dir) = (self.at(r.index), &self.dirs[r.index]);
            match outcome(status, dir) {
                Outcome::Finished(acc) => {
                    self.bar.inc(1);
                    let acc = acc.map_or("no accuracy".into(), |a| {
                        format!("test accuracy {:.2} %", 100.0 * a)
                    });
                    self.bar
                        .suspend(|| println!("done   {at}: {acc} ({secs:.0} s)"));
                }
                Outcome::Interrupted => {
                    self.stopped_outside += !stopping as usize;
                    let saved = match dir.state() {
                        State::Resumable => "it resumes from its checkpoint",
                        _ => "it had saved no checkpoint yet",
                    };
                    self.bar.suspend(|| println!("stopped {at} ({saved})"));
                }
                Outcome::Failed(why) => {
                    self.failed.push(r.index);
                    self.bar.inc(1);
                    let tail = dir.log_tail(3).join("\n    ");
                    let log = dir.log();
                    self.bar.suspend(|| {
                        eprintln!(
                            "FAILED {at}: {why}; its log is {}:\n    {tail}",
                            log.display()
                        )
                    });
                }
            }
        }
    }

    fn running_names(&self) -> String {
        let names: Vec<&str> = self
            .running
            .iter()
            .map(|r| self.manifest.runs[r.index].name.as_str())
            .collect();
        names.join(", ")
    }

    /// The closing lines and the sweep's exit code: 130 when interrupted, 1
    /// when a run failed or was stopped from outside, else 0.
    fn finish(&self, out: &Path, interrupted: bool) -> ExitCode {
        let done = self
            .dirs
            .iter()
            .filter(|d| matches!(d.state(), State::Finished(_)))
            .count();
        let total = self.manifest.runs.len();
        if interrupted {
            println!(
                "interrupted: {done} of {total} runs finished; the same command continues \
                 the sweep (stopped runs resume from their checkpoints)"
            );
            return ExitCode::from(INTERRUPTED);
        }
        for &i in &self.failed {
            eprintln!(
                "failed: {} ({}); its log is {}",
                self.manifest.runs[i].name,
                describe(self.dirs[i].state()),
                self.dirs[i].log().display()
            );
        }
        println!(
            "{done} of {total} runs finished; the report: sh {}",
            out.join("report.sh").display()
        );
        if self.failed.is_empty() && self.stopped_outside == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

/// Asks a child to stop as the cifar example expects to be asked.
fn terminate(child: &Child) {
    #[cfg(unix)]
    // SAFETY: kill(2) with a pid we spawned and have not yet reaped (so not
    // reused) has no memory-safety preconditions.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    #[cfg(not(unix))]
    let _ = child;
}

/// How a child's exit reads: the cifar example exits 130 when it was
/// interrupted (its checkpoint saved); a SIGTERM or SIGINT that came before
/// it could catch one ends it by that signal, which is an interruption too.
fn outcome(status: ExitStatus, dir: &RunDir) -> Outcome {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if matches!(status.signal(), Some(libc::SIGTERM | libc::SIGINT)) {
            return Outcome::Interrupted;
        }
    }
    match (status.code(), dir.state()) {
        (Some(0), State::Finished(acc)) => Outcome::Finished(acc),
        (Some(0), _) => Outcome::Failed("it exited without writing a summary".into()),
        (Some(c), _) if c == i32::from(INTERRUPTED) => Outcome::Interrupted,
        _ => Outcome::Failed(format!("it ended with {status}")),
    }
}

/// Starts one attempt at a run, its output appended to its log.
fn spawn(cifar: &Path, args: &[String], dir: &RunDir, state: State) -> Result<Child, String> {
    let log = dir.prepare(state, args)?;
    let err = log
        .try_clone()
        .map_err(|e| format!("cannot open {}: {e}", dir.log().display()))?;
    let mut cmd = Command::new(cifar);
    cmd.args(args).stdin(Stdio::null()).stdout(log).stderr(err);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // Its own process group: a Ctrl-C at the terminal goes to the sweep
        // alone, which passes it on once (see the file's comment).
        cmd.process_group(0);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe, as code between fork and exec
        // must be. If the sweep is killed outright, the run is asked to stop
        // and save, not left running alone.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
    }
    cmd.spawn()
        .map_err(|e| format!("cannot start {}: {e}", cifar.display()))
}

/// A Slurm task: the run at `index`, in this process's place. The cifar
/// example replaces the sweep (exec), so that the signals Slurm sends (to
/// every process of the job, on scancel, requeue or preemption) reach it
/// once, and the task's exit code is the run's.
pub fn run_task(
    manifest: &Manifest,
    out: &Path,
    cifar: &Path,
    index: usize,
    threads: usize,
) -> ExitCode {
    let Some(run) = manifest.runs.get(index) else {
        eprintln!(
            "error: --task {index}: the sweep has {} runs (0 to {})",
            manifest.runs.len(),
            manifest.runs.len().saturating_sub(1)
        );
        return ExitCode::from(2);
    };
    let dir = RunDir::new(out, run);
    let state = dir.state();
    if let State::Finished(_) = state {
        println!(
            "task {index}: {} is {}; nothing to do",
            run.name,
            describe(state)
        );
        return ExitCode::SUCCESS;
    }
    let args = dir.command(run, &manifest.base, state, Some(threads));
    let how = if state == State::Resumable {
        "resumes from its checkpoint"
    } else {
        "starts"
    };
    println!(
        "task {index}: {} {how}; its log is {}",
        run.name,
        dir.log().display()
    );
    let mut cmd = Command::new(cifar);
    let log = match dir.prepare(state, &args).and_then(|l| {
        let e = l.try_clone().map_err(|e| e.to_string())?;
        Ok((l, e))
    }) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(log.0)
        .stderr(log.1);
    exec(cmd, cifar)
}

#[cfg(unix)]
fn exec(mut cmd: Command, cifar: &Path) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let e = cmd.exec(); // returns only on failure
    eprintln!("error: cannot start {}: {e}", cifar.display());
    ExitCode::FAILURE
}

#[cfg(not(unix))]
fn exec(mut cmd: Command, cifar: &Path) -> ExitCode {
    match cmd.status() {
        Ok(s) => ExitCode::from(s.code().unwrap_or(1).clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("error: cannot start {}: {e}", cifar.display());
            ExitCode::FAILURE
        }
    }
}

//! `--emit slurm`: `DIR/sweep.sbatch`, a Slurm array job with one task per
//! run, and `DIR/report.sh`, the command that merges every run's metrics
//! into one page.
//!
//! Each task runs this sweep binary in its single-run mode (`--task
//! $SLURM_ARRAY_TASK_ID`), which reads `DIR/sweep.json`, skips a finished
//! run, resumes one that has a checkpoint, and otherwise starts it. Runs
//! outlive a time limit: Slurm signals the script (USR1) a few minutes
//! before it, the script asks the run to stop (it saves its checkpoint) and
//! puts the task back in the queue, where it resumes. A run stopped by
//! `scontrol requeue` or by preemption saves its checkpoint the same way,
//! on the SIGTERM Slurm sends every process of the job.

use std::path::{Path, PathBuf};

/// The `#SBATCH` settings the sweep's options choose.
pub struct Sbatch {
    pub partition: Option<String>,
    pub time: String,
    pub cpus_per_task: u32,
    pub mem: String,
    /// Seconds before the time limit at which a run is stopped and requeued.
    pub signal_before: u32,
    /// At most this many tasks at once (`--array=0-N%LIMIT`).
    pub max_running: Option<u32>,
    /// Further `#SBATCH` lines as given (`--account=...`, `--qos=...`).
    pub extra: Vec<String>,
}

/// A path as the script should name it: absolute, so that the script works
/// from wherever it is submitted and on nodes with another working folder.
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// A word quoted for the shell.
pub fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn q(p: &Path) -> String {
    quote(&p.display().to_string())
}

/// The text of `DIR/sweep.sbatch` for a sweep of `runs` runs.
pub fn sbatch_script(
    s: &Sbatch,
    runs: usize,
    out: &Path,
    sweep: &Path,
    cifar: &Path,
    workdir: &Path,
) -> String {
    let name = out
        .file_name()
        .map_or("sweep".into(), |n| n.to_string_lossy().into_owned());
    let limit = s.max_running.map_or(String::new(), |m| format!("%{m}"));
    let mut head = vec![
        format!("--job-name={}", quote(&format!("sweep-{name}"))),
        format!("--array=0-{}{limit}", runs - 1),
        format!("--cpus-per-task={}", s.cpus_per_task),
        format!("--mem={}", s.mem),
        format!("--time={}", s.time),
    ];
    if let Some(p) = &s.partition {
        head.push(format!("--partition={p}"));
    }
    head.extend([
        format!(
            "--output={}",
            out.join("slurm").join("task-%a.log").display()
        ),
        // A requeued task appends to its log instead of starting it anew.
        "--open-mode=append".into(),
        "--requeue".into(),
        format!("--signal=B:USR1@{}", s.signal_before),
    ]);
    head.extend(s.extra.iter().cloned());
    let head: Vec<String> = head.into_iter().map(|h| format!("#SBATCH {h}")).collect();
    format!(
        r#"#!/bin/bash
# One run of the sweep in {out} per array task; {out}/sweep.json lists
# the runs in task order. Written by the sweep's --emit slurm.
#   submit:   sbatch {sbatch}
#   progress: {sweep_q} --out {out_q} --status
{head}

cd {workdir} || exit 1
echo "task $SLURM_ARRAY_TASK_ID of job $SLURM_ARRAY_JOB_ID on $(hostname), restart ${{SLURM_RESTART_COUNT:-0}}"

# The sweep starts the run in its own place (the same process), so the run
# gets every signal Slurm sends the job, once.
{sweep_q} --out {out_q} --task "$SLURM_ARRAY_TASK_ID" --cifar {cifar_q} &
run=$!

# USR1 comes {before} s before the time limit (--signal above): ask the run
# to stop, which saves its checkpoint, and put the task back in the queue.
requeue=no
trap 'requeue=yes; kill -TERM "$run" 2>/dev/null' USR1
# SIGTERM (scancel, scontrol requeue, preemption) reaches the run as well:
# this script waits for it to save its checkpoint rather than end first.
trap 'echo "task $SLURM_ARRAY_TASK_ID: SIGTERM; the run saves its checkpoint"' TERM

# A trapped signal ends `wait` early; wait until the run has ended.
while kill -0 "$run" 2>/dev/null; do wait "$run"; done
wait "$run"
status=$?
echo "task $SLURM_ARRAY_TASK_ID: the run ended with status $status"
if [ "$requeue" = yes ] && [ "$status" = 130 ]; then
  scontrol requeue "${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"
fi
exit "$status"
"#,
        out = out.display(),
        sbatch = q(&out.join("sweep.sbatch")),
        sweep_q = q(sweep),
        out_q = q(out),
        head = head.join("\n"),
        workdir = q(workdir),
        cifar_q = q(cifar),
        before = s.signal_before,
    )
}

/// `to` as seen from the folder `from` (both absolute): `..` up to their
/// common ancestor, then down.
pub fn relative(from: &Path, to: &Path) -> PathBuf {
    let (f, t): (Vec<_>, Vec<_>) = (from.components().collect(), to.components().collect());
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut r = PathBuf::new();
    for _ in common..f.len() {
        r.push("..");
    }
    for c in &t[common..] {
        r.push(c);
    }
    r
}

/// The text of `DIR/report.sh`: every run's metrics into `DIR/report.html`.
/// It names everything relative to DIR, where it starts by going, so the
/// folder can be committed, moved along with the build, or copied off a
/// cluster, and the script still runs from anywhere. It runs the report
/// binary beside this executable, or `cargo run` on the workspace the
/// sweep was started in when that was not built; `REPORT=path` overrides.
pub fn report_script(out: &Path, sweep: &Path, workdir: &Path) -> String {
    let out = std::fs::canonicalize(out).unwrap_or_else(|_| absolute(out));
    let beside = sweep.with_file_name(format!("report{}", std::env::consts::EXE_SUFFIX));
    let report = if beside.is_file() {
        q(&relative(&out, &beside))
    } else {
        let manifest = relative(&out, &workdir.join("Cargo.toml"));
        format!(
            "cargo run --release --manifest-path {} --example report --",
            q(&manifest)
        )
    };
    format!(
        "#!/bin/sh\n\
         # Every run of this sweep on one page, report.html beside this script,\n\
         # the seeds of a configuration together (runs are labelled with their\n\
         # grid values). Written by the sweep; run it at any time, from anywhere:\n\
         # unfinished runs show so far. REPORT=path runs that report binary.\n\
         cd \"$(dirname \"$0\")\" || exit 1\n\
         if [ -n \"$REPORT\" ]; then\n\
         \x20   exec \"$REPORT\" runs/*/metrics.jsonl -o report.html \"$@\"\n\
         fi\n\
         exec {report} runs/*/metrics.jsonl -o report.html \"$@\"\n",
    )
}

/// Writes a script and makes it executable.
pub fn write_script(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755));
    }
    Ok(())
}

#!/usr/bin/env bash
# Proves the sweep's Slurm path on a real Slurm: this machine as the
# controller and the one compute node, everything on 127.0.0.1.
#
#   sudo bash docs/study/slurm-single-node.sh
#
# Installs Debian's slurm-wlm and munge if they are missing, writes a
# minimal configuration (CPUs from nproc, no accounting, state in a
# temporary folder), starts munged (unless one runs), slurmctld and slurmd,
# then:
#   1. runs a small grid through `sweep --emit slurm` and sbatch, waits for
#      the array to finish, and checks that every run has one summary;
#   2. requeues a running task with `scontrol requeue JOB_TASK` and checks
#      that it resumed from its checkpoint and finished with one summary;
#   3. cancels a running task with scancel, checks that the run saved its
#      checkpoint, submits the script again and checks that it resumed;
#   4. with TIME_LIMIT=1 (10 to 20 minutes more), gives a run longer than
#      its time limit and checks that it was stopped before the limit,
#      requeued itself, resumed, and finished with one summary.
# Stops the daemons it started at the end (KEEP=1 keeps the temporary
# folder). Needs root and free ports 6817-6818; not run in CI.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "run as root (it starts munged and the Slurm daemons)" >&2; exit 1; }
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update && apt-get install -y slurm-wlm munge
fi

target=${CARGO_TARGET_DIR:-target}
cargo build --release --examples
sweep=$(realpath "$target/release/examples/sweep")

tmp=$(mktemp -d -t hebbsparse-slurm.XXXXXX)
host=$(hostname -s)
cpus=$(nproc)
mem=$(awk '/MemTotal/ {print int($2 / 1024 / 2)}' /proc/meminfo)
started_munge=no

cleanup() {
  set +e
  for d in slurmd slurmctld; do
    [ -f "$tmp/$d.pid" ] && kill "$(cat "$tmp/$d.pid")" 2>/dev/null
  done
  if [ "$started_munge" = yes ] && [ -f /run/munge/munged.pid ]; then
    kill "$(cat /run/munge/munged.pid)" 2>/dev/null
  fi
  sleep 1
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

mkdir -p "$tmp/state" "$tmp/spool"
export SLURM_CONF=$tmp/slurm.conf
cat >"$SLURM_CONF" <<EOF
ClusterName=hebbsparse-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmdPidFile=$tmp/slurmd.pid
SlurmctldLogFile=$tmp/slurmctld.log
SlurmdLogFile=$tmp/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
KillWait=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

# munged: use one that already runs, else start one for this test.
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  [ -f /etc/munge/munge.key ] || mungekey --create
  mkdir -p /run/munge && chown munge:munge /run/munge
  runuser -u munge -- munged
  started_munge=yes
  munge -n | unmunge >/dev/null
fi
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"

# Waits (up to $2 seconds) until the command in $1 succeeds.
wait_for() {
  local deadline=$((SECONDS + $2))
  until eval "$1" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "timed out waiting for: $1" >&2; return 1; fi
    sleep 1
  done
}
wait_for "sinfo -h -N -o %t | grep -qx idle" 60
sinfo

# Waits for every task of job $1 to leave the queue.
wait_job() { wait_for "[ -z \"\$(squeue -h -j $1)\" ]" "$2"; }

# 1. A small grid, one array task per run.
out=$tmp/sweep
"$sweep" --grid 'mode=static,set seed=0,1' --out "$out" --emit slurm \
  --cpus-per-task 1 --mem 500M --time 10:00 --signal-before 30 \
  -- --recipe notebook --limit-train 200 --limit-test 50 --epochs 2
job=$(sbatch --parsable "$out/sweep.sbatch")
echo "submitted array job $job"
wait_job "$job" 600
"$sweep" --out "$out" --status
for m in "$out"/runs/*/metrics.jsonl; do
  n=$(grep -c '"type":"summary"' "$m" || true)
  [ "$n" = 1 ] || { echo "FAIL: $m has $n summaries" >&2; exit 1; }
done
echo "PASS: every run of the array finished with one summary"

# 2. Requeue a running task: it saves its checkpoint on the SIGTERM Slurm
#    sends and resumes from it when it runs again.
out2=$tmp/requeue
"$sweep" --grid 'seed=0' --out "$out2" --emit slurm --cpus-per-task 1 --mem 500M \
  --time 30:00 -- --recipe notebook --limit-test 50 --epochs 300 --mode static
job=$(sbatch --parsable "$out2/sweep.sbatch")
metrics=$out2/runs/seed-0/metrics.jsonl
wait_for "grep -q '\"type\":\"epoch\"' '$metrics'" 300
echo "requeueing ${job}_0 after: $(grep -c '"type":"epoch"' "$metrics") epochs"
scontrol requeue "${job}_0"
wait_job "$job" 900
cat "$out2/slurm/task-0.log"
grep -q 'resumed from' "$out2/runs/seed-0/log.txt" \
  || { echo "FAIL: the requeued task did not resume from its checkpoint" >&2; exit 1; }
configs=$(grep -c '"type":"config"' "$metrics" || true)
resumed=$(grep -c '"resumed":true' "$metrics" || true)
summaries=$(grep -c '"type":"summary"' "$metrics" || true)
[ "$configs" = 2 ] && [ "$resumed" = 1 ] && [ "$summaries" = 1 ] \
  || { echo "FAIL: $configs configs, $resumed resumed, $summaries summaries" >&2; exit 1; }
grep 'resumed from' "$out2/runs/seed-0/log.txt"
echo "PASS: the requeued task resumed from its checkpoint and finished"

# 3. Cancel a running task: the run saves its checkpoint on the SIGTERM
#    scancel sends, and the script submitted again resumes it.
out3=$tmp/cancel
"$sweep" --grid 'seed=0' --out "$out3" --emit slurm --cpus-per-task 1 --mem 500M \
  --time 30:00 -- --recipe notebook --limit-test 50 --epochs 300 --mode static
job=$(sbatch --parsable "$out3/sweep.sbatch")
metrics=$out3/runs/seed-0/metrics.jsonl
log=$out3/runs/seed-0/log.txt
wait_for "grep -q '\"type\":\"epoch\"' '$metrics'" 300
scancel "$job"
wait_job "$job" 120
grep -q 'checkpoint saved' "$log" \
  || { echo "FAIL: the cancelled run saved no checkpoint" >&2; exit 1; }
job=$(sbatch --parsable "$out3/sweep.sbatch")
wait_job "$job" 600
cat "$out3/slurm/task-0.log"
summaries=$(grep -c '"type":"summary"' "$metrics" || true)
grep -q 'resumed from' "$log" && [ "$summaries" = 1 ] \
  || { echo "FAIL: the resubmitted task did not resume and finish" >&2; exit 1; }
echo "PASS: the cancelled run saved its checkpoint and resumed when resubmitted"

# 4. A run longer than its time limit: USR1 (--signal-before) stops it, the
#    script requeues the task, and it resumes, as often as it takes.
if [ "${TIME_LIMIT:-0}" = 1 ]; then
  out4=$tmp/time-limit
  "$sweep" --grid 'seed=0' --out "$out4" --emit slurm --cpus-per-task 1 --mem 500M \
    --time 3:00 --signal-before 60 \
    -- --recipe notebook --limit-test 50 --epochs 5000 --mode static
  job=$(sbatch --parsable "$out4/sweep.sbatch")
  wait_job "$job" 3600
  cat "$out4/slurm/task-0.log"
  metrics=$out4/runs/seed-0/metrics.jsonl
  restarts=$(grep -c 'resumes from its checkpoint' "$out4/slurm/task-0.log" || true)
  summaries=$(grep -c '"type":"summary"' "$metrics" || true)
  [ "$restarts" -ge 1 ] && [ "$summaries" = 1 ] \
    || { echo "FAIL: $restarts resumptions, $summaries summaries" >&2; exit 1; }
  echo "PASS: the run outlived its time limit over $((restarts + 1)) allocations"
fi

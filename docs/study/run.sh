#!/usr/bin/env bash
# The study in docs/results.md: every rule on the full CIFAR-10, two recipes,
# three seeds, two runs at a time with one thread each.
#
#   bash docs/study/run.sh DATA_DIR [OUT_DIR]
#
# DATA_DIR holds the CIFAR-10 binary files (see datasets/README.md). Metrics
# go to OUT_DIR (default docs/study/metrics), one file per run; a finished
# run is skipped, so the script can be stopped and started again.
set -euo pipefail
data=${1:?usage: bash docs/study/run.sh DATA_DIR [OUT_DIR]}
out=${2:-docs/study/metrics}
mkdir -p "$out"
bin=${CIFAR_BIN:-./target/release/examples/cifar}
[ -n "${CIFAR_BIN:-}" ] || cargo build --release --example cifar

# label | options
runs=(
  "dense|--mode dense"
  "static|--mode static"
  "random|--mode random"
  "hebbian|--mode hebbian"
  "hebbian-stop0.75|--mode hebbian --stop-updates-at 0.75"
  "hebbian-zero-stop0.75|--mode hebbian --grow-init zero --stop-updates-at 0.75"
  "hebbian-grow|--mode hebbian-grow"
  "hebbian-grow-corr|--mode hebbian-grow --strength correlation"
  "set|--mode set"
  "rigl|--mode rigl"
)
# name | recipe options (the notebook's are the defaults)
recipes=(
  "notebook|"
  "long|--epochs 10 --batch-size 32 --lr 0.01 --lr-schedule cosine"
)

jobs_list=()
for recipe in "${recipes[@]}"; do
  for run in "${runs[@]}"; do
    for seed in 0 1 2; do
      jobs_list+=("${recipe%%|*}|${run%%|*}|$seed|${recipe#*|} ${run#*|}")
    done
  done
done

one() {
  IFS='|' read -r rname label seed opts <<<"$1"
  local file="$out/$rname-$label-$seed.jsonl"
  if grep -q '"type":"summary"' "$file" 2>/dev/null; then return; fi
  # shellcheck disable=SC2086
  "$bin" --data "$data" --threads 1 --quiet --seed "$seed" --label "$label" \
    --metrics "$file" $opts > "$out/$rname-$label-$seed.log" 2>&1
  echo "done $rname $label $seed"
}
export -f one
export bin data out
printf '%s\n' "${jobs_list[@]}" | xargs -P 2 -I{} bash -c 'one "$@"' _ {}

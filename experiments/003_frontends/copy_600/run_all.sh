#!/usr/bin/env bash
# Round 2 of experiment 003: every audio-in variant at seeds 0 and 1, each with its teacher-forced eval, then
# the tables and curves. Usage: experiments/003_frontends/copy_600/run_all.sh [RUNS_DIR=runs/003_copy]
# (from the repository root; ~10 min per run on the faster 2-core machine, 6 runs). Rerunning resumes.
set -euo pipefail
RUNS=${1:-runs/003_copy}
PY=${PYTHON:-python}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
mkdir -p "$RUNS"
for seed in 0 1; do
  for name in dmel mel_linear wave_linear; do
    dir="$RUNS/${name}_s${seed}"
    [ -f "$dir/tf.json" ] && continue
    start=$(date +%s)
    $PY -m interaction_jax train --config "experiments/003_frontends/copy_600/${name}.py" --workdir "$dir" \
      --set "data.seed=${seed}"
    train_end=$(date +%s)
    $PY -m interaction_jax eval --checkpoint "$dir" --teacher-forced --episodes 8 --json "$dir/tf.json"
    echo "{\"train_wall_s\": $((train_end - start)), \"total_wall_s\": $(($(date +%s) - start))}" > "$dir/wall.json"
  done
done
$PY experiments/003_frontends/summarize.py "$RUNS" --round copy_600

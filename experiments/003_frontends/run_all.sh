#!/usr/bin/env bash
# Every variant of experiment 003 at seeds 0 and 1 (seed 0 of all first), then the teacher-forced eval of each.
# Usage: experiments/003_frontends/run_all.sh [RUNS_DIR=runs/003]   (from the repository root, ~5.5 min per run)
set -euo pipefail
RUNS=${1:-runs/003}
PY=${PYTHON:-python}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
CONFIGS="audio_dmel_flow audio_in_mel_linear audio_in_wave_linear audio_out_regress audio_out_dmel_bins
         video_hmlp video_linear"
mkdir -p "$RUNS"
for seed in 0 1; do
  for name in $CONFIGS; do
    dir="$RUNS/${name}_s${seed}"
    [ -f "$dir/tf.json" ] && continue  # done: rerunning the script resumes the sweep
    start=$(date +%s)
    $PY -m interaction_jax train --config "experiments/003_frontends/${name}.py" --workdir "$dir" \
      --set "data.seed=${seed}"
    train_end=$(date +%s)
    $PY -m interaction_jax eval --checkpoint "$dir" --teacher-forced --episodes 8 --json "$dir/tf.json"
    echo "{\"train_wall_s\": $((train_end - start)), \"total_wall_s\": $(($(date +%s) - start))}" > "$dir/wall.json"
  done
done

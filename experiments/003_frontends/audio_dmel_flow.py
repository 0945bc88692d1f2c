"""003 audio baseline: the design's audio front-ends (dMel in, flow head out) on repeat, interrupt, timespeak.

The reference every audio ablation in this folder is compared with: configs/tiny.py, batch 4, 200 steps,
tasks that exercise audio in (repeat, interrupt) and audio out (repeat, timespeak). Each variant file
switches exactly one of model.audio_in / model.audio_out; seeds via --set data.seed=N (init and data).

Command (one run; run_all.sh runs every variant and seed, summarize.py makes the tables and plots):
    python -m interaction_jax train --config experiments/003_frontends/audio_dmel_flow.py \
        --workdir runs/003/audio_dmel_flow_s0
Expected: see experiments/003_frontends/README.md (results table, mean and spread over seeds 0 and 1).
"""

import dataclasses
from pathlib import Path

from interaction_jax.config import Config, load_config

ROOT = Path(__file__).resolve().parents[2]


def get_config() -> Config:
    config = load_config(ROOT / "configs" / "tiny.py")
    return dataclasses.replace(
        config,
        name="audio_dmel_flow",
        data=dataclasses.replace(config.data, batch_size=4, tasks=("repeat", "interrupt", "timespeak"),
                                 task_weights=()),
        # Learning rate 2e-3, tiny's until session 13, when 1e-3 was measured to learn the copies several times
        # faster (experiments/002_learning/README.md, "The learning rate"); kept so these results reproduce.
        train=dataclasses.replace(config.train, learning_rate=2e-3, steps=200, warmup_steps=50, log_every=10,
                                  checkpoint_every=200, eval_every=0, eval_episodes=8),
    )

"""003 video baseline: the design's 40x40 hMLP stem on the video tasks (cuespeak, repcount).

configs/tiny.py, batch 4, 200 steps. video_linear.py switches model.video_in to one linear map per patch;
seeds via --set data.seed=N (init and data).

Command (one run; run_all.sh runs every variant and seed, summarize.py makes the tables and plots):
    python -m interaction_jax train --config experiments/003_frontends/video_hmlp.py \
        --workdir runs/003/video_hmlp_s0
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
        name="video_hmlp",
        data=dataclasses.replace(config.data, batch_size=4, tasks=("cuespeak", "repcount"), task_weights=()),
        # Learning rate 2e-3, tiny's until session 13, when 1e-3 was measured to learn the copies several times
        # faster (experiments/002_learning/README.md, "The learning rate"); kept so these results reproduce.
        train=dataclasses.replace(config.train, learning_rate=2e-3, steps=200, warmup_steps=50, log_every=10,
                                  checkpoint_every=200, eval_every=0, eval_episodes=8),
    )

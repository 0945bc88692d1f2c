"""003, round 2 (audio in, where the copy forms): the design's dMel bag on repeat + interrupt, 600 steps at 1e-3.

Round 1 (the configs one folder up) stopped at 200 steps at learning rate 2e-3, before any copy formed, so it
could not ask what motivated dMel: does a discrete input help the model *copy* what it heard? This round uses
the quickstart's recipe, where repeat's copy forms: configs/tiny.py (1e-3), batch 4, 600 steps, repeat and
interrupt sampled 3 : 1, and the three heard-text auxiliaries (which read each front-end's own AUDIO_IN
tokens, so every variant gets the same label). The variants beside this file switch model.audio_in only.
Seed 0 of this file is the quickstart's run, step for step (tests/test_frontends.py checks the recipe).

Command (one run, ~9.5 min on the faster 2-core machine; seeds via --set data.seed=N):
    python -m interaction_jax train --config experiments/003_frontends/copy_600/dmel.py \
        --workdir runs/003_copy/dmel_s0
    experiments/003_frontends/copy_600/run_all.sh runs/003_copy   # 3 variants x seeds 0, 1, then the tables
Expected: see experiments/003_frontends/README.md, "Round 2" (mean and spread over seeds 0 and 1).
"""

import dataclasses
from pathlib import Path

from interaction_jax.config import Config, load_config

ROOT = Path(__file__).resolve().parents[3]


def get_config() -> Config:
    config = load_config(ROOT / "configs" / "tiny.py")
    return dataclasses.replace(
        config,
        name="copy_600_dmel",
        data=dataclasses.replace(config.data, batch_size=4, tasks=("repeat", "interrupt"), task_weights=(3.0, 1.0)),
        model=dataclasses.replace(config.model, heard_text_weight=1.0, heard_onset_weight=1.0,
                                  heard_prev_weight=1.0),
        train=dataclasses.replace(config.train, steps=600, warmup_steps=50, log_every=10, checkpoint_every=200,
                                  eval_every=200, eval_episodes=8),
    )

"""003 ablation: video_hmlp.py with model.video_in="linear".

The question: video in: one linear map per 40x40 patch instead of the hMLP stem.
Everything else (tasks, steps, batch, seeds) is video_hmlp.py's, so the pair answers one question.

Command:
    python -m interaction_jax train --config experiments/003_frontends/video_linear.py \
        --workdir runs/003/video_linear_s0
Expected: see experiments/003_frontends/README.md (results table, mean and spread over seeds 0 and 1).
"""

import dataclasses
from pathlib import Path

from interaction_jax.config import Config, load_config


def get_config() -> Config:
    base = load_config(Path(__file__).resolve().parent / "video_hmlp.py")
    model = dataclasses.replace(base.model, video_in="linear")
    return dataclasses.replace(base, name="video_linear", model=model)

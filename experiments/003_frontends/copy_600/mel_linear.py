"""003 round 2 ablation: copy_600/dmel.py with model.audio_in="mel_linear".

The question: audio in: one linear layer on each token's continuous log-mel.

Everything else (tasks, steps, batch, auxiliaries, seeds) is dmel.py's, so the pair answers one question.

Command:
    python -m interaction_jax train --config experiments/003_frontends/copy_600/mel_linear.py \
        --workdir runs/003_copy/mel_linear_s0
Expected: see experiments/003_frontends/README.md, "Round 2" (mean and spread over seeds 0 and 1).
"""

import dataclasses
from pathlib import Path

from interaction_jax.config import Config, load_config


def get_config() -> Config:
    base = load_config(Path(__file__).resolve().parent / "dmel.py")
    model = dataclasses.replace(base.model, audio_in="mel_linear")
    return dataclasses.replace(base, name="copy_600_mel_linear", model=model)

"""v5e_1b_mel_linear: configs/tpu_v5e_1b.py with model.audio_in="mel_linear".

For: experiments/003_frontends at 1.5B. Audio in: one linear layer on each 2-frame token's continuous log-mel
(no dMel discretisation, no bag of embeddings).
Everything else (model, data, schedule, the v5e-16 slice) is tpu_v5e_1b's, so a run beside
tpu_v5e_1b answers this one question.

Commands:
    python -m interaction_jax aot --config configs/ablations/v5e_1b_mel_linear.py   # proves it fits v5e:4x4, on CPU
    tpu_setup/launch.sh --config configs/ablations/v5e_1b_mel_linear.py ...          # see docs/tpu.md
Expected: `aot` reports fits: true (table in experiments/003_frontends/README.md).
"""

import dataclasses
from pathlib import Path

from interaction_jax.config import Config, load_config


def get_config() -> Config:
    base = load_config(Path(__file__).resolve().parents[1] / "tpu_v5e_1b.py")
    model = dataclasses.replace(base.model, audio_in="mel_linear")
    return dataclasses.replace(base, name="v5e_1b_mel_linear", model=model)

"""003 ablation: audio_dmel_flow.py with model.audio_out="regress".

The question: audio out: direct L1 regression of the mel block.
Everything else (tasks, steps, batch, seeds) is audio_dmel_flow.py's, so the pair answers one question.

Command:
    python -m interaction_jax train --config experiments/003_frontends/audio_out_regress.py \
        --workdir runs/003/audio_out_regress_s0
Expected: see experiments/003_frontends/README.md (results table, mean and spread over seeds 0 and 1).
"""

import dataclasses
from pathlib import Path

from interaction_jax.config import Config, load_config


def get_config() -> Config:
    base = load_config(Path(__file__).resolve().parent / "audio_dmel_flow.py")
    model = dataclasses.replace(base.model, audio_out="regress")
    return dataclasses.replace(base, name="audio_out_regress", model=model)

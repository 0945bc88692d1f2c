"""002: the tiny model after the learning fixes, all five tasks, ~30 minutes on 2 CPU cores (the faster type).

Command (the whole experiment, training + periodic and final free-running evaluation):
    python -m interaction_jax train --config experiments/002_learning/config.py --workdir runs/002
    python -m interaction_jax curves runs/002 --out experiments/002_learning/curves.png
Expected (8 held-out episodes per task; run 14 in experiments/002_learning/README.md, 28 min):
    repeat content 0.88 (digit accuracy 0.98; 7 of 8 replies exact), repeat latency 0.36 s, timespeak on_time
    1.00, interrupt yield_rate 1.00 (goals met); repcount obo 0.50, cuespeak 0.00 (missed); voice_match
    0.96-1.00.
"""

import dataclasses
from pathlib import Path

from interaction_jax.config import load_config


def get_config():
    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "tiny.py")
    return dataclasses.replace(
        config,
        name="002_learning",
        # The skills that form last get more of the windows: repeat (copying heard digits) 6x, cuespeak 1.5x, and
        # timespeak 3x: its typed-digit copy forms as a jump after ~450 timespeak-only steps (README, probe), which
        # weight 1 never reached in 1800 mixed steps (run 3: on_time 0.38) and weight 3 does (run 4: 1.00).
        # Repeat 6 and the heard-text auxiliaries: run 13 (content 0.50) against run 12 (3, none: 0.25).
        data=dataclasses.replace(config.data, batch_size=4, task_weights=(6.0, 3.0, 1.5, 1.0, 1.0)),
        # The induction label (heard_prev) on top: run 14 (repeat content 0.88) against run 13 (without it: 0.50).
        model=dataclasses.replace(config.model, heard_text_weight=1.0, heard_onset_weight=1.0, heard_prev_weight=1.0),
        train=dataclasses.replace(config.train, steps=1800, warmup_steps=100, log_every=10,
                                  checkpoint_every=300, eval_every=300, eval_episodes=8),
    )

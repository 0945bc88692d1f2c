"""002: the tiny model after the learning fixes, all five tasks, 29-68 minutes on 2 CPU cores (machine-dependent).

Command (the whole experiment, training + periodic and final free-running evaluation):
    python -m interaction_jax train --config experiments/002_learning/config.py --workdir runs/002
    python -m interaction_jax curves runs/002 --out experiments/002_learning/curves.png
Expected (8 held-out episodes per task; two runs of this config, see experiments/002_learning/README.md):
    interrupt yield_rate 1.00, repeat latency 0.36 s (goals met); timespeak on_time 0.38, repcount obo
    0.62-0.75, repeat content 0.00-0.12 with digit accuracy 0.43-0.66, cuespeak 0.00 (missed);
    voice_match 0.88-1.00 on every task.
"""

import dataclasses
from pathlib import Path

from interaction_jax.config import load_config


def get_config():
    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "tiny.py")
    return dataclasses.replace(
        config,
        name="002_learning",
        # the skills 1500 steps did not form get more of the windows: repeat (copying heard digits) 3x, cuespeak 1.5x
        data=dataclasses.replace(config.data, batch_size=4, task_weights=(3.0, 1.0, 1.5, 1.0, 1.0)),
        train=dataclasses.replace(config.train, steps=1800, warmup_steps=100, log_every=10,
                                  checkpoint_every=300, eval_every=300, eval_episodes=8),
    )

"""tpu_v6e_1b: the tpu_v5e_1b model (dense ~1.5B) on a v6e-16 slice (topology v6e:4x4).

For: the same experiment as tpu_v5e_1b on Trillium. v6e has 2x the HBM (31.25 GiB) and ~4.7x the bf16
peak of v5e, so the batch doubles (64 windows of 53 chunks = 262k tokens per step) with the same full remat.
(Saving the matmul outputs instead, remat "dots", needs 30.9 of 31.25 GiB at this batch: no headroom.)

Commands:
    python -m interaction_jax aot --config configs/tpu_v6e_1b.py          # proves it fits v6e:4x4 HBM, on CPU
    tpu_setup/create.sh --name ij-v6e --type v6e-16 --zone us-east5-b      # see docs/tpu.md
    tpu_setup/launch.sh --name ij-v6e --zone us-east5-b --config configs/tpu_v6e_1b.py --workdir gs://BUCKET/runs/v6e
Expected: `aot` reports fits: true with >= 10% HBM headroom (table in the README).
"""

import dataclasses
from pathlib import Path

from interaction_jax.config import Config, DataConfig, load_config


def get_config() -> Config:
    base = load_config(Path(__file__).with_name("tpu_v5e_1b.py"))
    return dataclasses.replace(
        base,
        name="tpu_v6e_1b",
        topology="v6e:4x4",
        data=DataConfig(window_chunks=53, batch_size=64),
    )

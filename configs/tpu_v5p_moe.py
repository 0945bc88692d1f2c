"""tpu_v5p_moe: ~10B total / ~1B active MoE on a v5p-64 slice (topology v5p:4x4x4), experts on `expert`.

For: scaling the interaction model with sparse FFNs. 64 routed experts (top-4, FFN 1024) plus one shared
expert, d 2048, 24 layers, GQA 16/4. Same layout as tpu_v5e_1b (S=77). Expert parallelism: the 64 experts are
split 4 ways over `expert` and tokens reach them by all-to-all (`moe.dispatch="alltoall"`); the batch is split
over fsdp x expert (64 ways, one window per chip).

Commands:
    python -m interaction_jax params --config configs/tpu_v5p_moe.py
    python -m interaction_jax aot --config configs/tpu_v5p_moe.py
Expected: ~10B total / ~1B active parameters; `aot` reports fits: true on v5p:4x4x4.
"""

import dataclasses
from pathlib import Path

from interaction_jax.config import Config, DataConfig, MeshConfig, MoeConfig, TrainConfig, load_config


def get_config() -> Config:
    base = load_config(Path(__file__).with_name("tpu_v5e_1b.py"))
    transformer = dataclasses.replace(
        base.model.transformer,
        moe=MoeConfig(num_experts=64, top_k=4, expert_mlp_dim=1024, shared_expert=True, dispatch="alltoall"),
        mlp_dim=1024,  # the shared expert's width
    )
    return dataclasses.replace(
        base,
        name="tpu_v5p_moe",
        topology="v5p:4x4x4",
        model=dataclasses.replace(base.model, transformer=transformer),
        data=DataConfig(window_chunks=53, batch_size=64),
        train=TrainConfig(steps=100_000, learning_rate=3e-4, warmup_steps=2000),
        mesh=MeshConfig(data=1, fsdp=16, tensor=1, expert=4),
    )

"""tml_small_scale: ~274B total / ~12B active MoE, the size reported for TML-Interaction-Small. A plan, proved
by compilation (it has never been trained).

Model: d 6144, 48 layers, GQA 48/8 (head_dim 128), 256 routed experts top-6 (FFN 1184) plus one shared
expert, expert-parallel all-to-all dispatch (``layers/moe_ep.py``). Layout as tpu_v5e_1b (S=77 tokens per
chunk); windows of 106 chunks (21.2 s, 8162 tokens padded to 8192); global batch 256 windows = 2.1M tokens.
Topology: v5p:8x8x8 (v5p-1024, 512 chips), mesh data 1 x fsdp 16 x expert 8 x tensor 4; the batch is split
over fsdp x expert (128 ways, 2 windows per chip). The smallest-slice search is in the README (AOT table).

Commands:
    python -m interaction_jax params --config configs/tml_small_scale.py
    python -m interaction_jax aot --config configs/tml_small_scale.py --json bench_results/aot_tml_small_scale.json
Expected: ~274B total / ~12B active parameters; `aot` fits with >= 10% headroom; corrected FLOPs within
1.5x of the analytic 6 N_active tokens + attention.
"""

import dataclasses
from pathlib import Path

from interaction_jax.config import (
    Config,
    DataConfig,
    FlowHeadConfig,
    MeshConfig,
    ModelConfig,
    MoeConfig,
    TrainConfig,
    TransformerConfig,
    load_config,
)


def get_config() -> Config:
    base = load_config(Path(__file__).with_name("tpu_v5e_1b.py"))  # same audio / vision / text layout
    moe = MoeConfig(num_experts=256, top_k=6, expert_mlp_dim=1184, shared_expert=True, dispatch="alltoall",
                    capacity_factor=1.25)
    return dataclasses.replace(
        base,
        name="tml_small_scale",
        topology="v5p:8x8x8",
        model=ModelConfig(
            transformer=TransformerConfig(
                d_model=6144, num_layers=48, num_heads=48, num_kv_heads=8, head_dim=128, mlp_dim=1184,
                dtype="bfloat16", remat="full", rope_theta=500_000.0, moe=moe,
            ),
            flow_head=FlowHeadConfig(width=2048, depth=4),
        ),
        data=DataConfig(window_chunks=106, batch_size=256),
        train=TrainConfig(steps=200_000, learning_rate=1.5e-4, warmup_steps=2000),
        mesh=MeshConfig(data=1, fsdp=16, tensor=4, expert=8),
    )

"""tpu_v5e_1b: dense ~1.5B model on a v5e-16 slice (topology v5e:4x4), bf16 compute, full remat.

For: the first real TPU run. k=2, 320x240 frames (V=48), Ti=8, To=4 -> S=77 tokens per chunk;
windows of 53 chunks (10.6 s, 4081 tokens, padded to 4096).

Commands:
    python -m interaction_jax aot --config configs/tpu_v5e_1b.py          # proves it fits v5e:4x4 HBM, on CPU
    tpu_setup/launch.sh --config configs/tpu_v5e_1b.py ...                 # see docs/tpu.md
Expected: `aot` reports fits: true with >= 10% HBM headroom (table in the README).
"""

from interaction_jax.config import (
    AudioConfig,
    Config,
    DataConfig,
    FlowHeadConfig,
    MeshConfig,
    ModelConfig,
    TextConfig,
    TrainConfig,
    TransformerConfig,
    VisionConfig,
)


def model_1b() -> ModelConfig:
    return ModelConfig(
        transformer=TransformerConfig(
            d_model=2048, num_layers=24, num_heads=16, num_kv_heads=4, head_dim=128, mlp_dim=8192,
            dtype="bfloat16", remat="full", rope_theta=500_000.0,
        ),
        flow_head=FlowHeadConfig(width=1024, depth=4),
    )


def get_config() -> Config:
    return Config(
        name="tpu_v5e_1b",
        topology="v5e:4x4",
        audio=AudioConfig(frames_per_token=2),
        vision=VisionConfig(height=240, width=320),
        text=TextConfig(text_in_slots=8, text_out_slots=4),
        model=model_1b(),
        data=DataConfig(window_chunks=53, batch_size=32),
        train=TrainConfig(steps=100_000, learning_rate=3e-4, warmup_steps=2000),
        mesh=MeshConfig(data=1, fsdp=16, tensor=1),
    )

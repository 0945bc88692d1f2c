"""small: ~100M-parameter model, the CPU streaming benchmark and a single-GPU training config.

For: `bench stream` (real-time factor of one session on CPU) and `bench train` on one GPU. k=2,
160x160 frames (V=16), Ti=4, To=4 -> S=1+16+8+4+4+8=41 tokens per chunk.

Command:
    python -m interaction_jax params --config configs/small.py
    python -m interaction_jax bench stream
Expected: ~100M parameters; see the README benchmark tables for the measured RTF.
"""

from interaction_jax.config import (
    AudioConfig,
    Config,
    DataConfig,
    FlowHeadConfig,
    ModelConfig,
    TextConfig,
    TrainConfig,
    TransformerConfig,
    VisionConfig,
)


def get_config() -> Config:
    return Config(
        name="small",
        audio=AudioConfig(frames_per_token=2),
        vision=VisionConfig(height=160, width=160),
        text=TextConfig(text_in_slots=4, text_out_slots=4),
        model=ModelConfig(
            transformer=TransformerConfig(
                d_model=768, num_layers=14, num_heads=12, num_kv_heads=4, head_dim=64, mlp_dim=2048,
            ),
            flow_head=FlowHeadConfig(width=512, depth=4),
        ),
        data=DataConfig(window_chunks=48, batch_size=16),
        train=TrainConfig(steps=20000, learning_rate=1e-3, warmup_steps=1000),
    )

"""tiny: ~7M-parameter model that learns every synthetic task on 2 CPU cores.

For: the Quickstart, CI-sized experiments, and debugging. k=4 (4 mel frames per audio token), 80x80 frames
(V=4 patches), Ti=2, To=2 -> S=17 tokens per 200 ms chunk.

Command:
    python -m interaction_jax train --config configs/tiny.py --workdir runs/tiny
Expected: see experiments/001_tiny_all_tasks/README.md for the measured loss curve and task scores.
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


def get_config() -> Config:
    return Config(
        name="tiny",
        audio=AudioConfig(frames_per_token=4),
        vision=VisionConfig(height=80, width=80),
        text=TextConfig(text_in_slots=2, text_out_slots=2),
        model=ModelConfig(
            transformer=TransformerConfig(
                d_model=256, num_layers=5, num_heads=4, num_kv_heads=2, head_dim=64, mlp_dim=768,
            ),
            flow_head=FlowHeadConfig(width=256, depth=3),
            # Text-out logits read the text input table, and each token knows its slot in the chunk: with the
            # two, repeat's teacher-forced digit accuracy reached in 300 steps what took 1200 without
            # (experiments/002_learning/README.md, run 3; docs/architecture.md, departure 24).
            tie_text_embeddings=True,
            slot_embedding="slot",
            max_chunks=200,  # 40 s sessions: keeps eval and CPU serving fast (see README, Known limits)
            pad_multiple=8,  # CPU: 40 chunks x 17 = 680 tokens need no 128-tile padding (that was 13% waste)
        ),
        data=DataConfig(window_chunks=40, batch_size=8),
        # 1e-3: at batch 4, 2e-3 (tiny's rate until session 13) learned repeat's copy several times slower and 4e-3
        # not at all; 5e-4 matched 1e-3 (experiments/002_learning/README.md, "The learning rate").
        train=TrainConfig(steps=1500, learning_rate=1e-3, warmup_steps=100, checkpoint_every=250),
        mesh=MeshConfig(data=-1),
    )

"""Video-in front-ends (``model.video_in``): frames [..., H, W, 3] in [-1, 1] -> [..., V, D] patch tokens.

``hmlp`` is the design's 40x40 hierarchical MLP stem (vision/hmlp.py); ``linear`` is one Dense per patch
(vision/linear_patch.py), the ablation asking whether the stem is worth its depth. Both keep the same param
name in the model (``video_stem``), the same grid and the same position embeddings.
"""

from __future__ import annotations

from typing import Any, Literal

import flax.linen as nn

from interaction_jax.vision.hmlp import HMLPStem
from interaction_jax.vision.linear_patch import LinearPatchStem

VideoIn = Literal["hmlp", "linear"]
VARIANTS: tuple[str, ...] = ("hmlp", "linear")


def check(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"model.video_in={variant!r}: use one of {', '.join(VARIANTS)}")


def make(variant: str, dim: int, patch: int, dtype: Any) -> nn.Module:
    check(variant)
    stem = HMLPStem if variant == "hmlp" else LinearPatchStem
    return stem(dim=dim, patch=patch, dtype=dtype)


def stem_flops_params(variant: str, dim: int, patch: int) -> int:
    """Matmul params applied once per patch (for the FLOP count; position tables are lookups)."""
    check(variant)
    if variant == "linear":
        return patch * patch * 3 * dim
    q = dim // 4  # hMLP: stages of 5x5, 2x2, 2x2, 2x2 windows run 64, 16, 4 and 1 times per 40x40 patch
    return 64 * 75 * q + 16 * 4 * q * q + 4 * 4 * q * q + 4 * q * dim

"""Linear patch embedding: one Dense on each flattened 40x40x3 patch (a stride-40 convolution).

The ablation baseline for the hMLP stem (``model.video_in="linear"``; experiments/003_frontends): the same
patch grid, token order and learned row / column position embeddings as ``HMLPStem``, so the only
difference is one linear map instead of four MLP stages with LayerNorm. Patches stay independent, so a
frame's tokens do not depend on the batch.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from interaction_jax.vision.hmlp import grid_positions

Dtype = Any


class LinearPatchStem(nn.Module):
    """``[..., H, W, 3]`` float in [-1, 1] -> ``[..., (H/patch)·(W/patch), dim]`` (row-major).

    Params: ``patch_embed`` {kernel [patch·patch·3, dim], bias}, ``row_embed``, ``col_embed``.
    """

    dim: int
    patch: int = 40
    max_rows: int = 16
    max_cols: int = 16
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        if images.ndim < 3 or images.shape[-1] != 3:
            raise ValueError(f"LinearPatchStem expects [..., H, W, 3], got shape {images.shape}")
        height, width = images.shape[-3:-1]
        if height % self.patch or width % self.patch or not height or not width:
            raise ValueError(f"LinearPatchStem: H and W must be positive multiples of {self.patch}, "
                             f"got {height}x{width}")
        rows, cols = height // self.patch, width // self.patch
        if rows > self.max_rows or cols > self.max_cols:
            raise ValueError(f"LinearPatchStem: {rows}x{cols} patch grid exceeds the position tables "
                             f"({self.max_rows}x{self.max_cols})")
        lead = images.shape[:-3]
        nb = len(lead)
        x = images.astype(self.dtype).reshape(*lead, rows, self.patch, cols, self.patch, 3)
        x = x.transpose(*range(nb), nb, nb + 2, nb + 1, nb + 3, nb + 4)
        x = x.reshape(*lead, rows, cols, self.patch * self.patch * 3)
        x = nn.Dense(
            self.dim, dtype=self.dtype, param_dtype=jnp.float32, name="patch_embed",
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
        )(x)
        x = x + grid_positions(self, rows, cols).astype(self.dtype)
        return x.reshape(*lead, rows * cols, self.dim)

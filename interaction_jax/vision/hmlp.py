"""Hierarchical MLP (hMLP) patch stem for 40×40 patches (Touvron et al. 2022, arXiv 2203.09795; DESIGN §2).

A frame becomes ``(H/40)·(W/40)`` VIDEO tokens, one per 40×40 patch, in row-major order. The stem is four
stages whose kernel equals their stride (5, 2, 2, 2 → 40 pixels), so every token depends on its own patch
only. Because kernel == stride, each stage is a reshape that gathers the non-overlapping window into the
feature axis followed by a ``Dense``: no convolution is needed, the same math runs on any backend, and patch
independence holds by construction.

LayerNorm (never BatchNorm) keeps patches and batch elements independent, so a frame's tokens are the same
whether it is encoded alone or in a batch (the serving engine's batch-invariance promise relies on this).
After the stem, learned row and column position embeddings are added, so the token order carries layout.

Parameters are annotated with logical axes (``None``/``"embed"``) so the project's sharding rules can shard
them over ``fsdp``; ``nn.meta.unbox`` (done by ``init`` below) gives plain arrays for users who don't care.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# Patch side = product of the per-stage strides: 5 · 2 · 2 · 2 = 40.
STAGE_STRIDES = (5, 2, 2, 2)


def frames_to_input(frames: jax.Array) -> jax.Array:
    """uint8 RGB ``[..., H, W, 3]`` → float32 in [-1, 1] (x / 127.5 − 1), the range the stem is trained on.

    Insists on uint8 so a float frame already in [0, 1] or [-1, 1] is not silently rescaled twice.
    """
    if frames.dtype != jnp.uint8:
        raise TypeError(f"frames_to_input expects uint8 frames, got dtype {frames.dtype}")
    return jnp.asarray(frames).astype(jnp.float32) / 127.5 - 1.0


def _dense(features: int, dtype: Dtype, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, "embed")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
        name=name,
    )


def _layer_norm(name: str) -> nn.LayerNorm:
    # Statistics in fp32 whatever the compute dtype: cheap here and avoids bf16 variance underflow.
    return nn.LayerNorm(
        epsilon=1e-6,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
        name=name,
    )


def grid_positions(stem: nn.Module, rows: int, cols: int) -> jax.Array:
    """[rows, cols, dim] learned row + column embeddings (params ``row_embed`` / ``col_embed`` of ``stem``,
    which has ``dim``, ``max_rows`` and ``max_cols``), so the token order carries the frame's layout."""
    pos_init = nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), (None, "embed"))
    row_embed = stem.param("row_embed", pos_init, (stem.max_rows, stem.dim), jnp.float32)
    col_embed = stem.param("col_embed", pos_init, (stem.max_cols, stem.dim), jnp.float32)
    return row_embed[:rows, None, :] + col_embed[None, :cols, :]


class HMLPStem(nn.Module):
    """``[..., H, W, 3]`` float in [-1, 1] → ``[..., (H/40)·(W/40), dim]`` patch tokens (row-major).

    Params: ``stage{0..3}_dense`` {kernel, bias}, ``stage{0..3}_norm`` {scale, bias}, ``row_embed``
    [max_rows, dim], ``col_embed`` [max_cols, dim].
    """

    dim: int
    patch: int = 40
    max_rows: int = 16
    max_cols: int = 16
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        rows, cols = self._check(images.shape)
        batch_shape = images.shape[:-3]
        nb = len(batch_shape)
        x = images.astype(self.dtype)

        # Split each spatial axis into (grid, 2, 2, 2, 5): pixel = grid·40 + a·20 + b·10 + c·5 + p.
        # Then put the window axes of the finest stage last: [..., R, C, a_r, a_c, b_r, b_c, c_r, c_c, p_r, p_c, 3]
        # (the first spatial axis is "r", the second "c").
        x = x.reshape(*batch_shape, rows, 2, 2, 2, 5, cols, 2, 2, 2, 5, 3)
        order = (0, 5, 1, 6, 2, 7, 3, 8, 4, 9, 10)
        x = x.transpose(*range(nb), *(nb + i for i in order))

        quarter = self.dim // 4
        widths = (quarter, quarter, quarter, self.dim)
        for stage, width in enumerate(widths):
            # Merge the innermost (row-window, col-window, features) into one feature vector: a conv whose
            # kernel equals its stride, applied to each window independently.
            x = x.reshape(*x.shape[:-3], x.shape[-3] * x.shape[-2] * x.shape[-1])
            x = _dense(width, self.dtype, f"stage{stage}_dense")(x)
            x = _layer_norm(f"stage{stage}_norm")(x)
            if stage < len(widths) - 1:
                x = nn.gelu(x, approximate=False)
            x = x.astype(self.dtype)

        # x: [..., R, C, dim]
        x = x + grid_positions(self, rows, cols).astype(self.dtype)
        return x.reshape(*batch_shape, rows * cols, self.dim)

    def _check(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """Validate the input shape; return the patch grid (rows, cols)."""
        side = 1
        for s in STAGE_STRIDES:
            side *= s
        if self.patch != side:
            raise ValueError(f"HMLPStem supports patch={side} (strides {STAGE_STRIDES}), got patch={self.patch}")
        if self.dim % 4:
            raise ValueError(f"HMLPStem dim must be a multiple of 4 (stages 1-3 emit dim/4), got {self.dim}")
        if len(shape) < 3:
            raise ValueError(f"HMLPStem expects [..., H, W, 3], got shape {shape} (rank {len(shape)})")
        height, width, channels = shape[-3:]
        if channels != 3:
            raise ValueError(f"HMLPStem expects 3 RGB channels in the last axis, got shape {shape}")
        if height % self.patch or width % self.patch or height == 0 or width == 0:
            raise ValueError(
                f"HMLPStem: frame height and width must be positive multiples of {self.patch}, "
                f"got H={height}, W={width} (input shape {shape})"
            )
        rows, cols = height // self.patch, width // self.patch
        if rows > self.max_rows or cols > self.max_cols:
            raise ValueError(
                f"HMLPStem: {rows}x{cols} patch grid (input shape {shape}) exceeds the position tables "
                f"({self.max_rows}x{self.max_cols}); raise max_rows/max_cols"
            )
        return rows, cols


def init(rng: jax.Array, dim: int, height: int, width: int, **kwargs: Any) -> dict[str, Any]:
    """Plain (unboxed) fp32 params for a stem that encodes ``height``×``width`` frames."""
    stem = HMLPStem(dim=dim, **kwargs)
    # jit: one compile instead of one per initializer op in eager mode (seconds on CPU).
    variables = jax.jit(stem.init)(rng, jnp.zeros((1, height, width, 3), jnp.float32))
    return nn.meta.unbox(variables["params"])


def apply(params: dict[str, Any], images: jax.Array, dim: int, **kwargs: Any) -> jax.Array:
    """Pure function form of ``HMLPStem(dim, **kwargs)(images)``; safe under jit, vmap and grad."""
    return HMLPStem(dim=dim, **kwargs).apply({"params": params}, images)

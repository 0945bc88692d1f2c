"""Rotary position embedding driven by explicit integer positions.

Positions are passed in rather than derived from ``arange`` because the model's positions are the flat
micro-turn index ``chunk * S + slot`` and, when serving, every batch row sits at its own offset. The
split-half ("NeoX") layout is used: dimension ``i`` is rotated with dimension ``i + head_dim / 2``, which
needs no interleaving gather. Angles are computed in fp32: at positions of ~1e5 a bf16 angle would be off by
whole radians.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rope_frequencies(head_dim: int, theta: float) -> jax.Array:
    """``theta ** (-2i / head_dim)`` for ``i < head_dim / 2`` (fp32)."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    return 1.0 / (theta**exponents)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotate ``x [B, T, H, D]`` by the angles of integer ``positions [B, T]``; returns x's dtype."""
    half = x.shape[-1] // 2
    angles = positions.astype(jnp.float32)[..., None] * rope_frequencies(x.shape[-1], theta)  # [B, T, D/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., :half], x32[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)

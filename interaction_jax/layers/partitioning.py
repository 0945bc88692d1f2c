"""Logical-axis helpers: the only place layers touch sharding.

Layers name every parameter axis and a few activation axes with *logical* names; the one rules table in
``interaction_jax/sharding.py`` maps them to mesh axes. Without rules (plain CPU tests, a user calling a layer
in their own ``jit``) the constraints are no-ops and the params are ordinary arrays inside ``Partitioned``
boxes, so nothing here requires a mesh.

Parameter names: ``embed, mlp, heads, kv_heads, head_dim, vocab, layers, expert``.
Activation names: ``act_batch, act_len, act_embed, act_heads, act_kv_heads, act_mlp``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Init = Callable[..., Any]

# Activation layouts used at well-defined points; keeping them here makes them greppable.
BATCH_LEN_EMBED = ("act_batch", "act_len", "act_embed")
BATCH_LEN_HEADS = ("act_batch", "act_len", "act_heads", "head_dim")
BATCH_LEN_KV_HEADS = ("act_batch", "act_len", "act_kv_heads", "head_dim")
BATCH_LEN_MLP = ("act_batch", "act_len", "act_mlp")


def with_axes(init: Init, axes: Sequence[str | None]) -> Init:
    """Wrap an initializer so the param carries its logical axis names (read by ``nn.get_partition_spec``)."""
    return nn.with_logical_partitioning(init, tuple(axes))


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Sharding hint for an activation; a no-op unless logical-axis rules and a mesh are active."""
    return nn.with_logical_constraint(x, tuple(axes))


def to_dtype(name: Any) -> jnp.dtype:
    """Config dtypes are strings ("bfloat16") so configs stay jax-free; accept a dtype too."""
    return jnp.dtype(name)

"""Transformer building blocks (DESIGN §4): RMSNorm, RoPE, GQA attention with KV cache, SwiGLU, MoE, stack.

Every module takes only its small config (``TransformerConfig``) or plain sizes, annotates params with logical
axes (see ``partitioning``) and can be used inside a user's own ``jit`` / ``vmap`` / ``grad``.
"""

from interaction_jax.layers.attention import (
    Attention,
    Cache,
    Projection,
    attend,
    attention_mask,
    auto_cached_attention,
    cache_context,
    cache_logical_axes,
    dense_cached_attention,
    filled_blocks,
    flash_cached_attention,
    init_cache,
    resolve_backend,
    update_cache,
)
from interaction_jax.layers.mlp import MLP
from interaction_jax.layers.moe import MoE, load_balance_loss, ragged_dot, route
from interaction_jax.layers.norms import RMSNorm
from interaction_jax.layers.rope import apply_rope, rope_frequencies
from interaction_jax.layers.transformer import REMAT_POLICIES, Block, Transformer

__all__ = [
    "MLP",
    "REMAT_POLICIES",
    "Attention",
    "Block",
    "Cache",
    "MoE",
    "Projection",
    "RMSNorm",
    "Transformer",
    "apply_rope",
    "attend",
    "attention_mask",
    "auto_cached_attention",
    "cache_context",
    "cache_logical_axes",
    "dense_cached_attention",
    "filled_blocks",
    "flash_cached_attention",
    "init_cache",
    "load_balance_loss",
    "ragged_dot",
    "resolve_backend",
    "rope_frequencies",
    "route",
    "update_cache",
]

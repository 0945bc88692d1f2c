"""Pre-norm decoder block and the layer stack (scan + remat).

``Transformer(config)(x, positions, cache=None) -> (y, new_cache | None, aux_loss)``; with ``tap_layer=k``
(>= 0) a fourth output, the residual stream after block k (an auxiliary loss can supervise a middle layer):
  * ``x [B, T, D]`` is cast to ``config.dtype``; params are fp32 and cast at use.
  * ``cache`` is the stacked cache from ``init_cache`` (leading axis L). Every layer gets the whole stack and
    its layer index (``layer_view``; the index is the scanned input) and reads its K/V blocks in place: a
    per-layer slice was a full copy on every call. The layers return just the new tokens' keys/values and
    one scatter writes them into the stacked cache, so a decode step never copies the cache.
  * ``aux_loss`` is the MoE load-balance loss *summed* over layers (fp32; 0 for dense FFNs), so each MoE
    layer is pushed towards balance with the same weight regardless of depth.

Remat policies (``config.remat``):
  * ``none``: keep every activation;
  * ``dots``: ``checkpoint_dots_with_no_batch_dims`` -- saves the projection/FFN matmul outputs (weights have
    no batch dim) but *not* the attention logits/probabilities (batched einsums), so the saved memory is
    linear in T while the expensive matmuls are not recomputed;
  * ``full``: ``nothing_saveable`` -- recompute the whole block in the backward pass.
``prevent_cse`` is only needed outside ``scan`` (scan already stops XLA from merging the recomputation).

Params: scanned -> ``layers/...`` with a leading ``layers`` axis; unrolled -> ``layers_0/...``,
``layers_1/...``; then ``final_norm/scale``. Inside a block: ``attn_norm``, ``attn`` (query, key, value,
out), ``ffn_norm`` and ``mlp`` (wi_0, wi_1, wo) or ``moe``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from interaction_jax.config import TransformerConfig
from interaction_jax.layers.attention import Attention, Cache, layer_view, update_cache
from interaction_jax.layers.mlp import MLP
from interaction_jax.layers.moe import MoE
from interaction_jax.layers.norms import RMSNorm
from interaction_jax.layers.partitioning import BATCH_LEN_EMBED, constrain, to_dtype

REMAT_POLICIES = {
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "full": jax.checkpoint_policies.nothing_saveable,
}


class Block(nn.Module):
    """``x + attn(norm(x))`` then ``x + ffn(norm(x))``; returns ``(x, (new_cache, aux_loss))`` (scan form)."""

    config: TransformerConfig
    emit_hidden: bool = False  # also return the block's output as a scanned output (Transformer.tap_layer)

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, cache: Cache | None = None, layer: Any = None):
        """``cache``: the whole stacked cache, read at ``layer`` (see ``layer_view``)."""
        cfg = self.config
        dtype = to_dtype(cfg.dtype)
        x = constrain(x, BATCH_LEN_EMBED)
        cache = None if cache is None else layer_view(cache, layer)
        h = RMSNorm(cfg.norm_eps, dtype, name="attn_norm")(x)
        h, new_cache = Attention(cfg, return_new_kv=True, name="attn")(h, positions, cache)
        x = x + h
        h = RMSNorm(cfg.norm_eps, dtype, name="ffn_norm")(x)
        if cfg.moe.num_experts > 0:
            h, aux = MoE(cfg, name="moe")(h)
        else:
            h, aux = MLP(cfg.mlp_dim, dtype, name="mlp")(h), jnp.zeros((), jnp.float32)
        x = constrain((x + h).astype(dtype), BATCH_LEN_EMBED)
        if self.emit_hidden:
            return x, (new_cache, aux.astype(jnp.float32), x)
        return x, (new_cache, aux.astype(jnp.float32))


def _block_class(config: TransformerConfig) -> Any:
    if config.remat == "none":
        return Block
    if config.remat not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {config.remat!r}; expected none, dots or full")
    return nn.remat(Block, policy=REMAT_POLICIES[config.remat], prevent_cse=not config.scan_layers)


class Transformer(nn.Module):
    """The decoder stack followed by a final RMSNorm (see module docstring for the contract)."""

    config: TransformerConfig
    tap_layer: int = -1  # >= 0: also return the residual stream after this block (0-based)

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, cache: Cache | None = None):
        cfg = self.config
        dtype = to_dtype(cfg.dtype)
        x = constrain(jnp.asarray(x, dtype), BATCH_LEN_EMBED)
        positions = positions.astype(jnp.int32)
        block = _block_class(cfg)
        tap = self.tap_layer
        if tap >= cfg.num_layers:
            raise ValueError(f"tap_layer={tap}: the stack has {cfg.num_layers} layers")
        tapped = None
        if cfg.scan_layers:
            stack = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast, 0),
                length=cfg.num_layers,
                unroll=cfg.scan_unroll,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            layers = jnp.arange(cfg.num_layers, dtype=jnp.int32)
            x, ys = stack(cfg, emit_hidden=tap >= 0, name="layers")(x, positions, cache, layers)
            new_kv, aux = ys[0], jnp.sum(ys[1])
            tapped = ys[2][tap] if tap >= 0 else None
        else:
            new_layers, aux = [], jnp.zeros((), jnp.float32)
            for i in range(cfg.num_layers):
                x, (layer_new, layer_aux) = block(cfg, name=f"layers_{i}")(x, positions, cache, i)
                new_layers.append(layer_new)
                aux = aux + layer_aux
                tapped = x if i == tap else tapped
            new_kv = None if cache is None else jax.tree.map(lambda *c: jnp.stack(c), *new_layers)
        # Only the new tokens' keys/values leave the layers; one scatter writes them into the stacked cache
        # (in place when the caller donates it), instead of every layer re-emitting its whole cache slice.
        new_cache = None if cache is None else update_cache(cache, new_kv["k"], new_kv["v"], positions)
        y = RMSNorm(cfg.norm_eps, dtype, name="final_norm")(x)
        return (y, new_cache, aux) if tap < 0 else (y, new_cache, aux, tapped)

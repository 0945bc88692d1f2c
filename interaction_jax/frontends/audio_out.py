"""Audio-out heads (``model.audio_out``): hidden state at an AUDIO_OUT slot -> one k x M mel block.

Every head has the ``FlowHead`` interface the model calls, so the transformer, the engine and the eval do
not know which one they drive:

* ``loss(cond, target, rng, weights=None, *, train=True, per_row=False)``: per-row loss [n] with ``per_row``;
* ``sample_with_noise(cond, noise, steps, cfg_scale, solver)``: a block in normalised mel [-1, 1].

=============  ==========================================  =============================================
variant        training loss                               sampling
=============  ==========================================  =============================================
``flow``       rectified-flow CFM, x-prediction            Euler / midpoint ODE from noise (flow_head.py)
``regress``    L1 (or L2, ``model.regress_loss``) to the   the prediction itself: no noise, one pass
               block
``dmel_bins``  cross-entropy of the 16-way dMel bin of     argmax bin per cell, undiscretised, so the
               every (frame, channel) cell                 output representation equals the input one
=============  ==========================================  =============================================

The question they answer (experiments/003_frontends): can the generation head be deleted? ``regress``
returns the conditional mean, which blurs wherever the next block is uncertain; ``dmel_bins`` keeps a
per-cell distribution but no correlation between cells. ``flow_head.width`` / ``depth`` size all three, so
their MLP trunks match; the noise and temperature arguments only reach ``flow``.
"""

from __future__ import annotations

from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from interaction_jax.audio import dmel
from interaction_jax.config import AudioConfig, FlowHeadConfig
from interaction_jax.flow_head import FlowHead, _dense  # the same Dense factory as the flow head

AudioOut = Literal["flow", "regress", "dmel_bins"]
VARIANTS: tuple[str, ...] = ("flow", "regress", "dmel_bins")
Dtype = Any


def check(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"model.audio_out={variant!r}: use one of {', '.join(VARIANTS)}")


class _Trunk(nn.Module):
    """cond [n, C] -> [n, width]: a projection, ``depth`` pre-LN residual SiLU MLP blocks and a final LN."""

    width: int
    depth: int
    dtype: Dtype

    @nn.compact
    def __call__(self, cond: jax.Array) -> jax.Array:
        h = _dense(self.width, self.dtype, "cond_proj")(cond.astype(self.dtype)).astype(jnp.float32)
        for i in range(self.depth):
            x = nn.LayerNorm(dtype=jnp.float32, use_scale=False, use_bias=False, name=f"block{i}_norm")(h)
            x = _dense(self.width, self.dtype, f"block{i}_mlp_in")(x.astype(self.dtype))
            x = _dense(self.width, self.dtype, f"block{i}_mlp_out")(nn.silu(x))
            h = h + x.astype(jnp.float32)
        norm = nn.LayerNorm(dtype=jnp.float32, name="final_norm",
                            scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
                            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)))
        return nn.silu(norm(h))


class RegressHead(nn.Module):
    """Direct regression of the mel block. Params: ``trunk`` and ``output`` (zero-init: starts at mel 0)."""

    config: FlowHeadConfig
    out_dim: int
    loss_kind: Literal["l1", "l2"] = "l1"
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        if self.loss_kind not in ("l1", "l2"):
            raise ValueError(f"model.regress_loss={self.loss_kind!r}: use 'l1' or 'l2'")
        self.trunk = _Trunk(self.config.width, self.config.depth, self.dtype)
        self.output = _dense(self.out_dim, self.dtype, "output", zero=True, axes=("embed", None))

    def predict(self, cond: jax.Array) -> jax.Array:
        lead = cond.shape[:-1]
        h = self.trunk(cond.reshape(-1, cond.shape[-1]))
        return self.output(h.astype(self.dtype)).astype(jnp.float32).reshape(*lead, self.out_dim)

    def loss(self, cond: jax.Array, target: jax.Array, rng: jax.Array, weights: jax.Array | None = None, *,
             train: bool = True, per_row: bool = False) -> jax.Array:
        del rng, train
        err = self.predict(cond) - target.astype(jnp.float32)
        row = jnp.mean(jnp.abs(err) if self.loss_kind == "l1" else jnp.square(err), axis=-1).reshape(-1)
        return row if per_row else _weighted(row, weights)

    def sample_with_noise(self, cond: jax.Array, noise: jax.Array, steps: int = 8, cfg_scale: float = 1.0,
                          solver: str = "euler") -> jax.Array:
        del noise, steps, cfg_scale, solver  # deterministic: the conditional mean
        return self.predict(cond)


class DMelBinsHead(nn.Module):
    """A 16-way softmax per (frame, channel) cell over dMel bins. Params: ``trunk``, ``output`` [width, k*M*16]."""

    config: FlowHeadConfig
    out_dim: int
    audio: AudioConfig
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        self.trunk = _Trunk(self.config.width, self.config.depth, self.dtype)
        self.output = _dense(self.out_dim * self.audio.dmel_bins, self.dtype, "output", axes=("embed", None))

    def logits(self, cond: jax.Array) -> jax.Array:
        lead = cond.shape[:-1]
        h = self.trunk(cond.reshape(-1, cond.shape[-1]))
        out = self.output(h.astype(self.dtype)).astype(jnp.float32)
        return out.reshape(*lead, self.out_dim, self.audio.dmel_bins)

    def target_bins(self, target: jax.Array) -> jax.Array:
        """Normalised mel [..., k*M] -> the dMel bin of every cell (what the input front-end would see)."""
        m = self.audio.n_mels
        log_mel = dmel.denormalize_mel(target.reshape(*target.shape[:-1], -1, m).astype(jnp.float32), self.audio)
        return dmel.discretize(log_mel, self.audio).reshape(target.shape)

    def loss(self, cond: jax.Array, target: jax.Array, rng: jax.Array, weights: jax.Array | None = None, *,
             train: bool = True, per_row: bool = False) -> jax.Array:
        del rng, train
        logits = self.logits(cond)
        bins = self.target_bins(target)
        ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, bins[..., None], -1)[..., 0]
        row = jnp.mean(ce, axis=-1).reshape(-1)
        return row if per_row else _weighted(row, weights)

    def sample_with_noise(self, cond: jax.Array, noise: jax.Array, steps: int = 8, cfg_scale: float = 1.0,
                          solver: str = "euler") -> jax.Array:
        del noise, steps, cfg_scale, solver  # the most likely bin of every cell
        bins = jnp.argmax(self.logits(cond), axis=-1)
        m = self.audio.n_mels
        log_mel = dmel.undiscretize(bins.reshape(*bins.shape[:-1], -1, m), self.audio)
        return dmel.normalize_mel(log_mel, self.audio).reshape(bins.shape)


def _weighted(row: jax.Array, weights: jax.Array | None) -> jax.Array:
    w = jnp.ones_like(row) if weights is None else weights.reshape(-1).astype(jnp.float32)
    return jnp.sum(w * row) / jnp.maximum(jnp.sum(w), 1.0)


def make(variant: str, head: FlowHeadConfig, out_dim: int, audio: AudioConfig, regress_loss: str,
         dtype: Dtype) -> nn.Module:
    check(variant)
    if variant == "flow":
        return FlowHead(config=head, out_dim=out_dim, dtype=dtype)
    if variant == "regress":
        return RegressHead(config=head, out_dim=out_dim, loss_kind=regress_loss, dtype=dtype)
    return DMelBinsHead(config=head, out_dim=out_dim, audio=audio, dtype=dtype)


def flops_multiplier(variant: str, head: FlowHeadConfig) -> int:
    """Head passes per block in one training step: the flow head runs once per CFM noise draw."""
    check(variant)
    return head.noise_multiplier if variant == "flow" else 1

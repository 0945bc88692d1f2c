"""RMSNorm with fp32 statistics.

The mean of squares is taken in fp32 whatever the compute dtype: in bf16 the sum over ``d_model`` loses
enough precision to shift every activation, and the cost is one cast per norm.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from interaction_jax.layers.partitioning import with_axes


class RMSNorm(nn.Module):
    """``x / rms(x) * scale`` over the last axis; learned scale (init 1) with logical axis ``("embed",)``."""

    eps: float = 1e-6
    dtype: Any = jnp.float32  # output (compute) dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = with_axes(nn.initializers.ones_init(), ("embed",))
        scale = self.param("scale", init, (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (y * scale).astype(self.dtype)

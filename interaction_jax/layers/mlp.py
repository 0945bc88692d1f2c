"""SwiGLU feed-forward (Shazeer 2020): ``wo(silu(wi_0 x) * wi_1 x)``, no biases.

Used as the dense FFN and as the MoE shared expert, so it takes its sizes as plain fields rather than the
whole transformer config.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from interaction_jax.layers.partitioning import BATCH_LEN_MLP, constrain, with_axes


def _dense(features: int, axes: tuple[str, str], dtype: Any, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=with_axes(nn.initializers.lecun_normal(), axes),
        name=name,
    )


class MLP(nn.Module):
    """[..., D] -> [..., D]; kernels ``wi_0, wi_1: [embed, mlp]`` and ``wo: [mlp, embed]``."""

    mlp_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        gate = _dense(self.mlp_dim, ("embed", "mlp"), self.dtype, "wi_0")(x)
        up = _dense(self.mlp_dim, ("embed", "mlp"), self.dtype, "wi_1")(x)
        h = nn.silu(gate) * up
        if h.ndim == 3:
            h = constrain(h, BATCH_LEN_MLP)
        return _dense(d, ("mlp", "embed"), self.dtype, "wo")(h)

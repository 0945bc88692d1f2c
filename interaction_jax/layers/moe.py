"""Top-k routed mixture of SwiGLU experts, an optional shared expert, and a load-balance loss.

Routing: fp32 router logits -> softmax over experts -> top-k -> the k weights renormalised to sum to 1.

Load balance (Switch / GShard): ``aux = E * sum_i f_i * P_i`` with ``f_i`` the fraction of the ``N * k``
assignments that went to expert i and ``P_i`` the mean router probability of expert i. It is 1 for uniform
routing and grows with imbalance; the caller multiplies it by ``MoeConfig.aux_loss_weight``.

Three dispatch implementations (``MoeConfig.dispatch``), equal when nothing is dropped:
  * ``onehot``: GShard dispatch/combine einsums with a fixed capacity per expert and *group*; the group is
    one batch row, so a row's output never depends on the other rows (the serving engine promises batch
    invariance) and one decode token per row can never overflow. Capacity is
    ``ceil(capacity_factor * T * k / E)``; slots are handed out first-choice-first, then in token order, so
    the padding at the end of a training window is dropped first.
  * ``sort``: dropless. The ``N * k`` assignments are sorted by expert and run through
    ``jax.lax.ragged_dot`` with per-expert group sizes, then unsorted and combined.
  * ``alltoall``: expert parallelism. Each device ranks its own tokens' assignments by destination shard,
    exchanges them with an all-to-all over the ``expert`` mesh axis inside ``shard_map``, and runs its local
    experts on fixed capacity buffers (``layers/moe_ep.py``). This is the one that scales to 256 experts.

Shared expert: a SwiGLU of width ``expert_mlp_dim`` (the routed experts' width; ``mlp_dim`` when
``expert_mlp_dim`` is 0) applied to every token and added to the routed output (DeepSeek-MoE style).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from interaction_jax.config import TransformerConfig
from interaction_jax.layers.mlp import MLP
from interaction_jax.layers.moe_ep import ep_dispatch
from interaction_jax.layers.partitioning import to_dtype, with_axes


def route(logits: jax.Array, top_k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """fp32 logits ``[N, E]`` -> (probs [N, E], renormalised top-k weights [N, k], expert ids [N, k])."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, experts = jax.lax.top_k(probs, top_k)
    weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return probs, weights, experts


def load_balance_loss(probs: jax.Array, experts: jax.Array) -> jax.Array:
    """``E * sum_i f_i * P_i`` (fp32) from router probs ``[N, E]`` and chosen expert ids ``[N, k]``."""
    num_experts = probs.shape[-1]
    counts = jnp.sum(jax.nn.one_hot(experts, num_experts, dtype=jnp.float32), axis=(0, 1))
    fraction = counts / experts.size
    return num_experts * jnp.sum(fraction * jnp.mean(probs, axis=0))


def capacity(tokens_per_group: int, top_k: int, num_experts: int, capacity_factor: float) -> int:
    return max(1, math.ceil(capacity_factor * tokens_per_group * top_k / num_experts))


def _swiglu_experts(x: jax.Array, wi_0, wi_1, wo, spec: str) -> jax.Array:
    """Batched SwiGLU for dense per-expert inputs; ``spec`` is the einsum of ``x`` with ``[E, D, F]``."""
    h = nn.silu(jnp.einsum(spec, x, wi_0)) * jnp.einsum(spec, x, wi_1)
    return jnp.einsum(spec, h, wo)


def onehot_dispatch(x: jax.Array, weights: jax.Array, experts: jax.Array, params: tuple, cap: int) -> jax.Array:
    """GShard dispatch/combine for ``x [G, S, D]`` with top-k ``weights/experts [G, S, k]``."""
    wi_0, wi_1, wo = params
    num_experts = wi_0.shape[0]
    g, s, k = experts.shape
    expert_mask = jax.nn.one_hot(experts, num_experts, dtype=jnp.int32)  # [G, S, k, E]
    # Slot of each assignment inside its expert's buffer: all first choices queue before second choices.
    by_choice = expert_mask.transpose(0, 2, 1, 3).reshape(g, k * s, num_experts)
    slot = (jnp.cumsum(by_choice, axis=1) - 1).reshape(g, k, s, num_experts).transpose(0, 2, 1, 3)
    kept = expert_mask * (slot < cap)  # [G, S, k, E]
    slot_onehot = jax.nn.one_hot(jnp.sum(slot * kept, axis=-1), cap, dtype=jnp.float32)  # [G, S, k, C]
    dispatch = jnp.einsum("gske,gskc->gsec", kept.astype(jnp.float32), slot_onehot)  # 0/1
    combine = jnp.einsum("gsk,gske,gskc->gsec", weights, kept.astype(jnp.float32), slot_onehot)
    expert_in = jnp.einsum("gsec,gsd->egcd", dispatch.astype(x.dtype), x)
    expert_out = _swiglu_experts(expert_in, wi_0, wi_1, wo, "egcd,edf->egcf")
    return jnp.einsum("egcd,gsec->gsd", expert_out, combine.astype(x.dtype))


# ``jax.lax.ragged_dot`` has no batching rule when only some operands are batched ("vmap over any dim but 0 -
# NYI"), so ``vmap(Transformer.apply)`` would fail on the sort path. Wrapping it in a custom VJP whose forward
# and backward are ``sequential_vmap``s makes vmap run a loop over the mapped axis instead, while ``grad``
# still gets ragged_dot's own transpose (``sequential_vmap`` alone is not differentiable).
@jax.custom_batching.sequential_vmap
def _ragged_fwd(x: jax.Array, w: jax.Array, sizes: jax.Array) -> jax.Array:
    return jax.lax.ragged_dot(x, w, sizes)


@jax.custom_batching.sequential_vmap
def _ragged_bwd(x: jax.Array, w: jax.Array, sizes: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jax.vjp(lambda x, w: jax.lax.ragged_dot(x, w, sizes), x, w)[1](g)


@jax.custom_vjp
def ragged_dot(x: jax.Array, w: jax.Array, sizes: jax.Array) -> jax.Array:
    """``x [M, K] @ w[e] [K, N]`` for consecutive row groups of ``sizes [E]``; vmap- and grad-safe."""
    return _ragged_fwd(x, w, sizes)


def _ragged_dot_vjp_fwd(x, w, sizes):
    return _ragged_fwd(x, w, sizes), (x, w, sizes)


def _ragged_dot_vjp_bwd(res, g):
    x, w, sizes = res
    return (*_ragged_bwd(x, w, sizes, g), None)


ragged_dot.defvjp(_ragged_dot_vjp_fwd, _ragged_dot_vjp_bwd)


def sort_dispatch(x: jax.Array, weights: jax.Array, experts: jax.Array, params: tuple) -> jax.Array:
    """Dropless: sort the ``N*k`` assignments of ``x [N, D]`` by expert and use ``ragged_dot`` per expert."""
    wi_0, wi_1, wo = params
    num_experts = wi_0.shape[0]
    n, k = experts.shape
    flat = experts.reshape(n * k)
    order = jnp.argsort(flat, stable=True)
    sorted_x = x[order // k]
    sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)
    h = nn.silu(ragged_dot(sorted_x, wi_0, sizes)) * ragged_dot(sorted_x, wi_1, sizes)
    out_sorted = ragged_dot(h, wo, sizes)
    out = jnp.zeros_like(out_sorted).at[order].set(out_sorted).reshape(n, k, -1)
    return jnp.einsum("nkd,nk->nd", out, weights.astype(out.dtype))


class MoE(nn.Module):
    """``x [B, T, D] -> (y [B, T, D], aux_loss fp32 scalar)``.

    Params: ``router/kernel [embed, None]`` (fp32), ``wi_0, wi_1 [expert, embed, mlp]``,
    ``wo [expert, mlp, embed]``, and ``shared/`` (an ``MLP``) when ``moe.shared_expert``.
    """

    config: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg, moe = self.config, self.config.moe
        dtype = to_dtype(cfg.dtype)
        b, t, d = x.shape
        e, k = moe.num_experts, moe.top_k
        if not 0 < k <= e:
            raise ValueError(f"moe.top_k must be in [1, num_experts={e}], got {k}")
        f = moe.expert_mlp_dim or cfg.mlp_dim

        router_init = with_axes(nn.initializers.normal(0.02), ("embed", None))
        router = self.param("router", router_init, (d, e), jnp.float32)
        init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=-2, out_axis=-1)
        wi_0 = self.param("wi_0", with_axes(init, ("expert", "embed", "mlp")), (e, d, f), jnp.float32)
        wi_1 = self.param("wi_1", with_axes(init, ("expert", "embed", "mlp")), (e, d, f), jnp.float32)
        wo = self.param("wo", with_axes(init, ("expert", "mlp", "embed")), (e, f, d), jnp.float32)
        params = (wi_0.astype(dtype), wi_1.astype(dtype), wo.astype(dtype))

        logits = jnp.einsum("btd,de->bte", x.astype(jnp.float32), router)
        probs, weights, experts = route(logits, k)
        aux = load_balance_loss(probs.reshape(b * t, e), experts.reshape(b * t, k))

        x = jnp.asarray(x, dtype)
        if moe.dispatch == "onehot":
            y = onehot_dispatch(x, weights, experts, params, capacity(t, k, e, moe.capacity_factor))
        elif moe.dispatch == "alltoall":
            y = ep_dispatch(x, weights, experts, params, capacity_factor=moe.capacity_factor)
        elif moe.dispatch == "sort":
            y = sort_dispatch(x.reshape(b * t, d), weights.reshape(b * t, k), experts.reshape(b * t, k), params)
            y = y.reshape(b, t, d)
        else:
            raise ValueError(f"unknown moe.dispatch {moe.dispatch!r}")
        if moe.shared_expert:
            y = y + MLP(f, dtype=dtype, name="shared")(x)
        return y.astype(dtype), aux


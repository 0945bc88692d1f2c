"""Expert-parallel MoE dispatch: all-to-all over the ``expert`` mesh axis inside ``shard_map``.

Why: GShard one-hot dispatch costs ``O(tokens x E x capacity x D)`` FLOPs, which at ~276B scale is most of
the layer (see docs/tpu.md), and ``ragged_dot`` leaves the expert placement to the SPMD partitioner. Here
each device routes only its own tokens and moves them to the devices that own their experts:

1. **Send.** The ``A = N x k`` assignments of the local ``N`` tokens are ranked within their destination
   shard (``expert // experts_per_shard``), choice-major so first choices and early tokens win a slot, and
   gathered into a fixed ``[ep, C1, D]`` buffer, ``C1 = ceil(cf x A / ep)``.
2. **all-to-all** over ``expert``: every device now holds the rows routed to its own experts.
3. **Expert compute.** Received rows are gathered into per-expert capacity buffers
   ``[E_local, C2, D]``, ``C2 = ceil(cf x A / E_local)``, and run through a batched SwiGLU: dense MXU
   matmuls whose FLOPs are ``cf x`` the analytic count, with no one-hot contraction.
4. **all-to-all back**, then each device scatter-adds ``weight x row`` into its tokens; a ``psum`` over
   ``tensor`` finishes the expert FFN when its hidden dim is split over ``tensor``.

Assignments beyond a capacity are dropped (their contribution is zero), exactly like GShard; with
``capacity_factor >= num_experts``, or at most ``DROPLESS_ASSIGNMENTS`` local assignments (decode), nothing
can drop and the result equals the dropless ``sort`` path.
Without a mesh (or with ``expert = 1``) the same code runs on one device, with no collectives.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


def rank_within_group(ids: jax.Array, num_groups: int) -> jax.Array:
    """For int ``ids [A]``: how many earlier elements share each element's id (stable, 0-based)."""
    order = jnp.argsort(ids, stable=True)
    counts = jnp.bincount(ids, length=num_groups)
    starts = jnp.cumsum(counts) - counts
    ranked = jnp.arange(ids.shape[0], dtype=jnp.int32) - starts[ids[order]].astype(jnp.int32)
    return jnp.zeros_like(ids, dtype=jnp.int32).at[order].set(ranked)


DROPLESS_ASSIGNMENTS = 1024  # at most this many local assignments (decode, small prefills): never drop


def capacities(num_tokens: int, top_k: int, num_experts: int, experts_per_shard: int,
               capacity_factor: float) -> tuple[int, int]:
    """(C1 rows sent to each shard, C2 rows per local expert) for ``num_tokens`` local tokens.

    Few tokens (a decode step: one per session) get dropless buffers, so a session's output never depends
    on which experts the other sessions picked; many tokens (training) get GShard-style capacities.
    """
    assignments = num_tokens * top_k
    shards = num_experts // experts_per_shard
    if assignments <= DROPLESS_ASSIGNMENTS:
        return assignments, shards * assignments
    c1 = max(1, math.ceil(capacity_factor * assignments / shards))
    c2 = max(1, math.ceil(capacity_factor * assignments / experts_per_shard))
    return c1, c2


def _local_dispatch(x, weights, experts, wi_0, wi_1, wo, *, num_experts: int, capacity_factor: float,
                    expert_axis: str | None, tensor_axis: str | None) -> jax.Array:
    """Per-device body: ``x [B, T, D]``, top-k ``weights/experts [B, T, k]``, local expert weights."""
    b, t, d = x.shape
    n, k = b * t, experts.shape[-1]
    e_local = wi_0.shape[0]
    ep = num_experts // e_local
    a = n * k
    c1, c2 = capacities(n, k, num_experts, e_local, capacity_factor)
    x = x.reshape(n, d)
    # Assignment i = (choice, time, row) in that order, so first choices queue before second ones and the
    # padding at the end of every window queues last (x is row-major: token = row * t + time).
    flat_e = experts.transpose(2, 1, 0).reshape(a)
    flat_w = weights.transpose(2, 1, 0).reshape(a)
    token_of = jnp.tile((jnp.arange(b, dtype=jnp.int32)[None, :] * t
                         + jnp.arange(t, dtype=jnp.int32)[:, None]).reshape(n), k)

    dest = flat_e // e_local
    pos1 = rank_within_group(dest, ep)
    slot1 = jnp.where(pos1 < c1, dest * c1 + pos1, ep * c1)  # out of range = dropped
    send_assign = jnp.full((ep * c1,), a, jnp.int32).at[slot1].set(jnp.arange(a, dtype=jnp.int32), mode="drop")
    token = jnp.take(token_of, send_assign, mode="fill", fill_value=n)  # n = empty slot
    send_x = jnp.take(x, token, axis=0, mode="fill", fill_value=0)
    send_e = jnp.where(send_assign < a, jnp.take(flat_e % e_local, send_assign, mode="fill", fill_value=0), e_local)

    def exchange(v: jax.Array) -> jax.Array:
        if expert_axis is None or ep == 1:
            return v
        return jax.lax.all_to_all(v, expert_axis, 0, 0, tiled=True)

    recv_x, recv_e = exchange(send_x), exchange(send_e)
    r = recv_e.shape[0]
    pos2 = rank_within_group(recv_e, e_local + 1)
    slot2 = jnp.where((recv_e < e_local) & (pos2 < c2), recv_e * c2 + pos2, e_local * c2)
    rows = jnp.full((e_local * c2,), r, jnp.int32).at[slot2].set(jnp.arange(r, dtype=jnp.int32), mode="drop")
    expert_in = jnp.take(recv_x, rows, axis=0, mode="fill", fill_value=0).reshape(e_local, c2, d)

    h = nn.silu(jnp.einsum("ecd,edf->ecf", expert_in, wi_0)) * jnp.einsum("ecd,edf->ecf", expert_in, wi_1)
    expert_out = jnp.einsum("ecf,efd->ecd", h, wo).reshape(e_local * c2, d)

    back = exchange(jnp.take(expert_out, slot2, axis=0, mode="fill", fill_value=0))
    gate = jnp.take(flat_w, send_assign, mode="fill", fill_value=0).astype(back.dtype)
    y = jnp.zeros((n, d), back.dtype).at[token].add(back * gate[:, None], mode="drop")
    if tensor_axis is not None:
        y = jax.lax.psum(y, tensor_axis)
    return y.reshape(b, t, d)


def _axis_if_splits(mesh: Any, name: str | None, dim: int) -> str | None:
    if name is None or name not in mesh.axis_names or mesh.shape[name] == 1 or dim % mesh.shape[name]:
        return None
    return name


def ep_dispatch(x: jax.Array, weights: jax.Array, experts: jax.Array, params: tuple, *,
                capacity_factor: float) -> jax.Array:
    """``x [B, T, D]`` with top-k ``weights/experts [B, T, k]`` and expert weights ``(wi_0, wi_1, wo)``.

    Under a mesh, runs :func:`_local_dispatch` per device in ``shard_map``: batch split as the ``act_batch``
    rule says, experts over ``expert``, the expert hidden dim over ``tensor``.
    """
    wi_0, wi_1, wo = params
    num_experts = wi_0.shape[0]
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return _local_dispatch(x, weights, experts, wi_0, wi_1, wo, num_experts=num_experts,
                               capacity_factor=capacity_factor, expert_axis=None, tensor_axis=None)
    (batch_rule,) = nn.logical_to_mesh_axes(("act_batch",))
    if isinstance(batch_rule, str):
        batch_names: tuple[str, ...] = (batch_rule,)
    elif isinstance(batch_rule, tuple | list):
        batch_names = tuple(batch_rule)
    else:  # None, or flax's UNCONSTRAINED when no logical-axis rules are active
        batch_names = ()
    batch_names = tuple(a for a in batch_names if a in mesh.axis_names and mesh.shape[a] > 1)
    if batch_names and x.shape[0] % math.prod(mesh.shape[a] for a in batch_names):
        batch_names = ()
    batch_ax = batch_names or None
    expert_ax = _axis_if_splits(mesh, "expert", num_experts)
    tensor_ax = _axis_if_splits(mesh, "tensor", wi_0.shape[-1])

    act = P(batch_ax, None, None)
    body = jax.shard_map(
        lambda *args: _local_dispatch(*args, num_experts=num_experts, capacity_factor=capacity_factor,
                                      expert_axis=expert_ax, tensor_axis=tensor_ax),
        mesh=mesh,
        in_specs=(act, act, act, P(expert_ax, None, tensor_ax), P(expert_ax, None, tensor_ax),
                  P(expert_ax, tensor_ax, None)),
        out_specs=act,
        check_vma=False,
    )
    return body(x, weights, experts, wi_0, wi_1, wo)

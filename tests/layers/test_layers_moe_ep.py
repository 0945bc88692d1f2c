"""Expert parallelism: all-to-all dispatch on 8 fake devices equals the single-device sort/onehot paths."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interaction_jax import sharding
from interaction_jax.layers import MoE
from interaction_jax.layers.moe_ep import capacities, rank_within_group

D, E, F = 16, 8, 24


def _mesh(devices, fsdp, tensor, expert):
    return jax.sharding.Mesh(
        np.array(devices).reshape(1, fsdp, tensor, expert), ("data", "fsdp", "tensor", "expert"),
        axis_types=(jax.sharding.AxisType.Auto,) * 4,
    )


def test_rank_within_group_counts_earlier_equal_ids():
    ids = jnp.array([2, 0, 2, 1, 0, 2], jnp.int32)
    np.testing.assert_array_equal(rank_within_group(ids, 3), [0, 0, 1, 0, 1, 2])
    assert capacities(1024, 2, 8, 2, 1.25) == (640, 1280)  # training-sized: GShard capacities
    assert capacities(16, 2, 8, 2, 1.25) == (32, 128)  # decode-sized: dropless


@pytest.mark.parametrize("fsdp,tensor,expert,cf", [(2, 1, 4, E), (1, 2, 4, E), (1, 1, 8, E), (1, 1, 8, 1.25)])
def test_alltoall_on_8_devices_equals_sort_values_and_grads(devices, make_cfg, make_params, fast_jit,
                                                              fsdp, tensor, expert, cf):
    """cf = E can never drop; cf = 1.25 with few tokens per device is the dropless decode regime."""
    moe = {"num_experts": E, "top_k": 2, "expert_mlp_dim": F, "shared_expert": True, "capacity_factor": float(cf)}
    ref_cfg = make_cfg(d_model=D, moe={**moe, "dispatch": "sort"})
    ep_cfg = make_cfg(d_model=D, moe={**moe, "dispatch": "alltoall"})
    x = np.random.default_rng(0).normal(size=(8, 6, D)).astype(np.float32)
    params = make_params(MoE(ref_cfg), x, scale=1.0)

    def loss(model):
        def f(p, x):
            y, aux = model.apply({"params": p}, x)
            return jnp.sum(y * jnp.sin(y)) + aux, y
        return jax.value_and_grad(f, has_aux=True)

    (ref_l, ref_y), ref_g = fast_jit(loss(MoE(ref_cfg)))(params, x)
    mesh = _mesh(devices, fsdp, tensor, expert)
    boxed = jax.eval_shape(MoE(ep_cfg).init, jax.random.key(0), x)["params"]
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, sharding.RULES)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        sharded = jax.device_put(params, shardings)
        xs = jax.device_put(x, sharding.batch_sharding(mesh))
        (value, y), g = fast_jit(loss(MoE(ep_cfg)))(sharded, xs)
        hlo = fast_jit(loss(MoE(ep_cfg))).lower(sharded, xs).compile().as_text()
    assert sharded["wi_0"].addressable_shards[0].data.shape[0] == E // expert  # experts really are split
    assert "all-to-all" in hlo
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(value, ref_l, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref_g), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_alltoall_drops_at_low_capacity(devices, make_cfg, make_params, fast_jit, monkeypatch):
    """At a small capacity, kept tokens equal the dropless sort output and dropped ones are 0."""
    from interaction_jax.layers import moe_ep

    monkeypatch.setattr(moe_ep, "DROPLESS_ASSIGNMENTS", 0)  # treat these few tokens like a training batch
    moe = {"num_experts": E, "top_k": 1, "expert_mlp_dim": F, "shared_expert": False}
    x = np.random.default_rng(3).normal(size=(8, 6, D)).astype(np.float32)
    ref_cfg = make_cfg(d_model=D, moe={**moe, "dispatch": "sort"})
    params = make_params(MoE(ref_cfg), x, scale=1.0)
    ref = np.asarray(fast_jit(MoE(ref_cfg).apply)({"params": params}, x)[0])
    small = make_cfg(d_model=D, moe={**moe, "dispatch": "alltoall", "capacity_factor": 0.25})
    with jax.set_mesh(_mesh(devices, 1, 1, 8)), nn.logical_axis_rules(sharding.RULES):
        got = np.asarray(fast_jit(MoE(small).apply)({"params": params}, x)[0])
    kept = np.any(got != 0, axis=-1)
    assert 0 < kept.sum() < kept.size
    np.testing.assert_allclose(got[kept], ref[kept], rtol=1e-5, atol=1e-5)
    _, c2 = capacities(6, 1, E, 1, 0.25)  # one expert per device, 6 local tokens per device
    assert kept.sum() <= E * c2  # every expert ran at most C2 rows

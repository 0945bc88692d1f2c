"""Logical axis names resolve on a real 8-device (data=2, fsdp=4) mesh and do not change the numbers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from interaction_jax import sharding
from interaction_jax.layers import Transformer, init_cache

RULES = sharding.RULES  # the project's one rules table, not a copy


def _mesh(devices):
    return jax.sharding.Mesh(
        np.array(devices).reshape(2, 4, 1, 1), ("data", "fsdp", "tensor", "expert"),
        axis_types=(jax.sharding.AxisType.Auto,) * 4,
    )


def test_sharded_forward_matches_unsharded(devices, make_cfg, make_params, fast_jit):
    cfg = make_cfg()
    model = Transformer(cfg)
    x = np.asarray(jax.random.normal(jax.random.key(0), (8, 4, cfg.d_model)))
    pos = np.broadcast_to(np.arange(4, dtype=np.int32), (8, 4))
    params = make_params(model, x, pos)
    ref_y, _, ref_aux = fast_jit(model.apply)({"params": params}, x, pos)

    boxed = jax.eval_shape(model.init, jax.random.key(0), x, pos)["params"]
    specs = nn.get_partition_spec(boxed)
    assert specs["layers"]["attn"]["query"]["kernel"] == P("layers", "embed", "heads", "head_dim")
    moe = Transformer(make_cfg(moe={"num_experts": 4, "expert_mlp_dim": 16}))
    moe_specs = nn.get_partition_spec(jax.eval_shape(moe.init, jax.random.key(0), x, pos)["params"])
    assert moe_specs["layers"]["moe"]["wi_0"] == P("layers", "expert", "embed", "mlp")
    mesh = _mesh(devices)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, RULES)
    assert shardings["layers"]["attn"]["query"]["kernel"].spec == P(None, "fsdp", "tensor", None)

    with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
        # init under rules traces every boxed initializer's sharding constraint (train.py inits this way)
        jax.eval_shape(model.init, jax.random.key(0), x, pos)
        sharded = jax.device_put(params, shardings)
        fn = fast_jit(lambda p, x: model.apply({"params": p}, x, pos))
        y, _, aux = fn(sharded, x)
    assert {"data", "fsdp"} <= set(y.sharding.spec[0])  # act_batch resolved to the batch axes
    assert sharded["layers"]["attn"]["query"]["kernel"].addressable_shards[0].data.shape[1] == cfg.d_model // 4
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aux, ref_aux, rtol=1e-5)


def test_sharded_decode_step_with_cache(devices, make_cfg, make_params, fast_jit):
    cfg = make_cfg()
    model = Transformer(cfg)
    x = np.asarray(jax.random.normal(jax.random.key(1), (8, 2, cfg.d_model)))
    pos = np.broadcast_to(np.arange(2, dtype=np.int32), (8, 2))
    params = make_params(model, x, pos)
    cache = init_cache(cfg, 8, 4, jnp.float32)
    step = fast_jit(lambda p, x, c: model.apply({"params": p}, x, pos, cache=c))
    ref_y, ref_cache, _ = step(params, x, cache)
    with jax.set_mesh(_mesh(devices)), nn.logical_axis_rules(RULES):
        y, new_cache, _ = step(params, x, cache)
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new_cache["k"], ref_cache["k"], rtol=1e-5, atol=1e-6)

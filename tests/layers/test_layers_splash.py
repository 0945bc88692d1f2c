"""The Pallas splash kernel (interpret mode on CPU) against the dot reference, alone and inside shard_map."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interaction_jax.layers import attend

T = 256  # two 128-row tiles per axis: the kernel skips fully masked blocks and handles partial ones


def _qkv(h=4, hkv=2, b=1, d=32, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, T, h, d)).astype(np.float32)
    k, v = rng.normal(size=(2, b, T, hkv, d)).astype(np.float32)
    pos = np.broadcast_to(np.arange(T, dtype=np.int32), (b, T))
    return q, k, v, pos


@pytest.mark.parametrize("window", [0, 100])
def test_splash_interpret_matches_dot(window):
    q, k, v, pos = _qkv()
    ref = attend(q, k, v, pos, pos, backend="dot", sliding_window=window)
    out = attend(q, k, v, pos, pos, backend="splash", sliding_window=window, interpret=True, block_size=128)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_splash_inside_shard_map_under_a_mesh(devices, fast_jit):
    """Batch over (data, fsdp), heads over tensor; kv heads (1) cannot be split so they are repeated."""
    mesh = jax.sharding.Mesh(
        np.array(devices).reshape(2, 2, 2, 1), ("data", "fsdp", "tensor", "expert"),
        axis_types=(jax.sharding.AxisType.Auto,) * 4,
    )
    rules = [("act_batch", ("data", "fsdp")), ("act_heads", "tensor"), ("act_kv_heads", "tensor")]
    q, k, v, pos = _qkv(h=2, hkv=1, b=4, d=16, seed=1)
    ref = attend(q, k, v, pos, pos, backend="dot")
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        fn = fast_jit(lambda q, k, v: attend(q, k, v, pos, pos, backend="splash", interpret=True))
        out = fn(q, k, v)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_splash_gradients_match_dot(fast_jit):
    """Training runs the kernel's backward (dq and dkv kernels): check it too, with GQA and a window."""
    q, k, v, pos = _qkv(h=2, hkv=1, d=16, seed=2)

    def loss(backend):
        return lambda q, k, v: jnp.sum(
            attend(q, k, v, pos, pos, backend=backend, sliding_window=130, interpret=True) ** 2
        )

    ref = fast_jit(jax.grad(loss("dot"), argnums=(0, 1, 2)))(q, k, v)
    got = fast_jit(jax.grad(loss("splash"), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)

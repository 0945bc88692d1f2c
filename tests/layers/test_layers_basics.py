"""RMSNorm, RoPE and the SwiGLU MLP against direct numpy formulas."""

import jax
import jax.numpy as jnp
import numpy as np

from interaction_jax.layers import MLP, RMSNorm, apply_rope


def test_rmsnorm_matches_formula_and_uses_fp32_stats():
    x = np.random.default_rng(0).normal(size=(2, 3, 16)).astype(np.float32) * 3
    norm = RMSNorm(eps=1e-6)
    params = norm.init(jax.random.key(0), x)
    assert params["params"]["scale"].names == ("embed",)
    y = norm.apply(params, x)
    ref = x / np.sqrt(np.mean(x**2, -1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    # bf16 input: statistics in fp32 keep the result within bf16 rounding of the fp32 answer.
    yb = RMSNorm(dtype=jnp.bfloat16).apply(params, jnp.asarray(x, jnp.bfloat16))
    assert yb.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(yb, np.float32), ref, rtol=2e-2, atol=2e-2)


def _rope_reference(x, pos, theta):
    d = x.shape[-1]
    freqs = theta ** (-np.arange(0, d, 2) / d)
    ang = pos[..., None, None].astype(np.float64) * freqs  # [B, T, 1, D/2]
    z = (x[..., : d // 2] + 1j * x[..., d // 2 :]) * np.exp(1j * ang)
    return np.concatenate([z.real, z.imag], -1)


def test_rope_matches_complex_rotation_at_arbitrary_positions():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 3, 8)).astype(np.float32)
    pos = np.array([[0, 7, 8, 40, 41], [100, 3, 5, 2, 1000]], np.int32)
    np.testing.assert_allclose(apply_rope(x, pos, 10_000.0), _rope_reference(x, pos, 10_000.0), atol=1e-4)


def test_rope_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(2)
    q, k = rng.normal(size=(2, 1, 1, 1, 8)).astype(np.float32)

    def score(pq, pk):
        a = apply_rope(q, jnp.array([[pq]]), 500.0)
        b = apply_rope(k, jnp.array([[pk]]), 500.0)
        return float(jnp.sum(a * b))

    assert abs(score(10, 3) - score(107, 100)) < 1e-4
    assert abs(score(10, 3) - score(10, 4)) > 1e-3


def test_mlp_is_swiglu(make_params):
    x = np.random.default_rng(3).normal(size=(2, 3, 8)).astype(np.float32)
    mlp = MLP(mlp_dim=12)
    boxed = jax.eval_shape(mlp.init, jax.random.key(0), x)["params"]
    assert boxed["wi_0"]["kernel"].names == ("embed", "mlp")
    assert boxed["wo"]["kernel"].names == ("mlp", "embed")
    p = make_params(mlp, x, scale=1.0)
    gate = x @ p["wi_0"]["kernel"]
    ref = (gate / (1 + np.exp(-gate)) * (x @ p["wi_1"]["kernel"])) @ p["wo"]["kernel"]
    np.testing.assert_allclose(jax.jit(mlp.apply)({"params": p}, x), ref, rtol=1e-5, atol=1e-5)


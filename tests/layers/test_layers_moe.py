"""MoE: routing against a naive per-token loop, onehot == sort when nothing drops, capacity drops, aux loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from interaction_jax.layers import MoE, load_balance_loss, route

D, E, F = 16, 4, 24


def _cfg(make_cfg, **moe):
    base = {"num_experts": E, "top_k": 2, "expert_mlp_dim": F, "shared_expert": True, "capacity_factor": 8.0}
    return make_cfg(d_model=D, moe={**base, **moe})


def _naive(params, x, top_k, shared):
    """Loop over tokens: softmax router, top-k, renormalise, weighted sum of that token's expert SwiGLUs."""
    p = jax.tree.map(np.asarray, params)
    xs = np.asarray(x, np.float64).reshape(-1, D)
    out = np.zeros_like(xs)

    def swiglu(v, w0, w1, wo):
        g = v @ w0
        return (g / (1 + np.exp(-g)) * (v @ w1)) @ wo

    for n, v in enumerate(xs):
        logits = v @ p["router"]
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        chosen = np.argsort(-probs)[:top_k]
        weights = probs[chosen] / probs[chosen].sum()
        for e, w in zip(chosen, weights, strict=True):
            out[n] += w * swiglu(v, p["wi_0"][e], p["wi_1"][e], p["wo"][e])
        if shared:
            s = p["shared"]
            out[n] += swiglu(v, s["wi_0"]["kernel"], s["wi_1"]["kernel"], s["wo"]["kernel"])
    return out.reshape(x.shape)


@pytest.mark.parametrize("dispatch", ["onehot", "sort"])
def test_moe_matches_naive_loop(make_cfg, make_params, fast_jit, dispatch):
    cfg = _cfg(make_cfg, dispatch=dispatch)
    x = np.random.default_rng(0).normal(size=(2, 6, D)).astype(np.float32)
    params = make_params(MoE(cfg), x, scale=1.0)
    y, aux = fast_jit(MoE(cfg).apply)({"params": params}, x)
    np.testing.assert_allclose(y, _naive(params, x, 2, True), rtol=1e-5, atol=1e-5)
    assert aux.dtype == jnp.float32 and aux.shape == ()


def test_moe_param_axes(make_cfg):
    cfg = _cfg(make_cfg)
    boxed = jax.eval_shape(MoE(cfg).init, jax.random.key(0), jnp.ones((1, 2, D)))["params"]
    assert boxed["wi_0"].names == ("expert", "embed", "mlp")
    assert boxed["wo"].names == ("expert", "mlp", "embed")
    assert boxed["shared"]["wi_0"]["kernel"].value.shape == (D, F)


def test_onehot_equals_sort_without_drops_and_drops_with_small_capacity(make_cfg, make_params, fast_jit):
    x = np.random.default_rng(1).normal(size=(2, 8, D)).astype(np.float32)
    cfgs = {
        name: _cfg(make_cfg, dispatch=d, capacity_factor=cf, shared_expert=False, top_k=1)
        for name, d, cf in [("sort", "sort", 1.0), ("big", "onehot", 8.0), ("small", "onehot", 0.5)]
    }
    params = make_params(MoE(cfgs["sort"]), x, scale=1.0)
    out = {n: np.asarray(fast_jit(MoE(c).apply)({"params": params}, x)[0]) for n, c in cfgs.items()}
    np.testing.assert_allclose(out["big"], out["sort"], rtol=1e-5, atol=1e-6)
    # capacity ceil(0.5 * 8 * 1 / 4) = 1 per expert and row: at most E tokens per row get an expert.
    kept = np.any(out["small"] != 0, axis=-1)
    assert kept.sum(axis=1).max() <= E and kept.sum() < kept.size
    np.testing.assert_allclose(out["small"][kept], out["sort"][kept], rtol=1e-5, atol=1e-6)
    # the first token of each row always fits, so dropping is by arrival order
    assert kept[:, 0].all()


def test_aux_loss_is_one_when_uniform_and_larger_when_skewed():
    n = 64
    uniform = jnp.full((n, E), 1.0 / E)
    balanced = jnp.stack([jnp.arange(n) % E, (jnp.arange(n) + 1) % E], axis=1)
    assert abs(float(load_balance_loss(uniform, balanced)) - 1.0) < 1e-6
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(n, E)), jnp.float32).at[:, 0].add(3.0)
    probs, weights, experts = route(logits, 2)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
    assert float(load_balance_loss(probs, experts)) > 1.3


def test_optimising_aux_loss_alone_reduces_imbalance(make_cfg, make_params, fast_jit):
    cfg = _cfg(make_cfg, shared_expert=False)
    x = (np.random.default_rng(2).normal(size=(4, 16, D)) + 1.0).astype(np.float32)
    params = make_params(MoE(cfg), x)
    params["router"][:, 0] += 0.5  # every token (mean +1 per dim) strongly prefers expert 0
    model = MoE(cfg)
    aux_of = lambda p: model.apply({"params": p}, x)[1]
    aux_fn = fast_jit(aux_of)
    opt = optax.adam(0.05)
    state = opt.init(params)

    @fast_jit
    def step(p, s):
        g = jax.grad(aux_of)(p)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s

    def max_fraction(p):
        logits = np.asarray(x).reshape(-1, D) @ np.asarray(p["router"])
        top = np.argsort(-logits, axis=-1)[:, :2]
        return np.bincount(top.ravel(), minlength=E).max() / top.size

    before, frac_before = float(aux_fn(params)), max_fraction(params)
    for _ in range(30):
        params, state = step(params, state)
    assert before > 1.3
    assert float(aux_fn(params)) < before - 0.2
    assert max_fraction(params) < frac_before


def test_sort_gradients_under_vmap_match_onehot(make_cfg, make_params, fast_jit):
    """ragged_dot's transpose == the einsums' one, and vmap works although ragged_dot has no batching rule
    for partly batched operands (our wrapper loops instead)."""
    x = np.random.default_rng(3).normal(size=(2, 5, D)).astype(np.float32)
    params = make_params(MoE(_cfg(make_cfg)), x, scale=1.0)

    def loss_fn(dispatch):
        model = MoE(_cfg(make_cfg, dispatch=dispatch))
        return lambda p, x: jnp.sum(jnp.sin(model.apply({"params": p}, x)[0]))

    ref = fast_jit(jax.grad(loss_fn("onehot")))(params, x)
    xs = np.stack([x, x[::-1]])
    got = fast_jit(jax.vmap(jax.grad(loss_fn("sort")), in_axes=(None, 0)))(params, xs)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
        assert a.shape[0] == 2 and np.all(np.isfinite(a))
        np.testing.assert_allclose(a[0], b, rtol=1e-4, atol=1e-5)

"""The layer stack: scan vs unrolled, remat policies, bf16 compute, and jit/vmap/grad composition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interaction_jax.layers import Transformer

B, T = 2, 8
MOE = {"num_experts": 4, "top_k": 2, "expert_mlp_dim": 16, "capacity_factor": 4.0}


def _inputs(cfg, seed=1):
    x = np.asarray(jax.random.normal(jax.random.key(seed), (B, T, cfg.d_model)))
    pos = np.broadcast_to(np.arange(T, dtype=np.int32) + 3, (B, T))
    return x, pos


def _unstack(params, num_layers):
    """Scanned params (``layers/...`` with a leading L axis) -> unrolled ``layers_i/...``."""
    out = {k: v for k, v in params.items() if k != "layers"}
    for i in range(num_layers):
        out[f"layers_{i}"] = jax.tree.map(lambda a, i=i: a[i], params["layers"])
    return out


def _restack(params, num_layers):
    out = {k: v for k, v in params.items() if not k.startswith("layers_")}
    out["layers"] = jax.tree.map(lambda *a: jnp.stack(a), *[params[f"layers_{i}"] for i in range(num_layers)])
    return out


def _loss_fn(cfg, pos):
    model = Transformer(cfg)

    def loss(p, x):
        y, _, aux = model.apply({"params": p}, x, pos)
        return jnp.mean(jnp.sin(y) ** 2) + 0.01 * aux

    return loss


@pytest.fixture(scope="module")
def reference(make_cfg, make_params, fast_jit):
    """Dense scanned model, no remat: params, inputs and its (loss, grads); shared to save compilations."""
    cfg = make_cfg()
    x, pos = _inputs(cfg)
    params = make_params(Transformer(cfg), x, pos)
    value, grads = fast_jit(jax.value_and_grad(_loss_fn(cfg, pos)))(params, x)
    return params, x, pos, value, grads


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-5):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=atol)


def test_scan_equals_unrolled(make_cfg, make_params, fast_jit):
    scanned = make_cfg(moe=MOE)
    unrolled = make_cfg(moe=MOE, scan_layers=False)
    x, pos = _inputs(scanned)
    params = make_params(Transformer(scanned), x, pos)
    assert params["layers"]["attn"]["query"]["kernel"].shape == (2, 32, 4, 8)
    y1, _, aux1 = fast_jit(Transformer(scanned).apply)({"params": params}, x, pos)
    y2, _, aux2 = fast_jit(Transformer(unrolled).apply)({"params": _unstack(params, 2)}, x, pos)
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aux1, aux2, rtol=1e-6)
    assert aux1.dtype == jnp.float32 and float(aux1) > 1.8  # summed over 2 layers, each >= ~1


@pytest.mark.parametrize("remat,scan", [("dots", True), ("full", False)])
def test_remat_policies_give_equal_gradients(make_cfg, fast_jit, reference, remat, scan):
    """``dots`` under scan, ``full`` unrolled (the prevent_cse path); both against no remat."""
    params, x, pos, _, ref_grads = reference
    cfg = make_cfg(remat=remat, scan_layers=scan)
    grad_fn = jax.grad(_loss_fn(cfg, pos))
    p = params if scan else _unstack(params, cfg.num_layers)
    assert "remat" in str(jax.make_jaxpr(grad_fn)(p, x))  # the policy really wraps the block
    got = fast_jit(grad_fn)(p, x)
    _assert_trees_close(got if scan else _restack(got, cfg.num_layers), ref_grads)


def test_no_remat_means_no_checkpoint_and_unknown_policy_is_rejected(make_cfg, reference):
    params, x, pos, _, _ = reference
    assert "remat" not in str(jax.make_jaxpr(jax.grad(_loss_fn(make_cfg(), pos)))(params, x))
    with pytest.raises(ValueError, match="remat"):
        jax.eval_shape(Transformer(make_cfg(remat="some")).init, jax.random.key(0), x, pos)


def test_jit_vmap_grad_compose(make_cfg, fast_jit, reference):
    """vmap(value_and_grad(apply)) under jit matches the per-example result (MoE sort: test_layers_moe)."""
    params, x, pos, value, grads = reference
    xs = np.stack([x, 2 * x])
    vals, vgrads = fast_jit(jax.vmap(jax.value_and_grad(_loss_fn(make_cfg(), pos)), in_axes=(None, 0)))(params, xs)
    np.testing.assert_allclose(vals[0], value, rtol=1e-5)
    assert abs(float(vals[1]) - float(vals[0])) > 1e-4
    _assert_trees_close(jax.tree.map(lambda g: g[0], vgrads), grads, rtol=1e-4, atol=1e-6)


def test_bf16_compute_is_finite_and_close_to_fp32(make_cfg, make_params, fast_jit):
    cfg32 = make_cfg(moe=MOE)
    cfg16 = make_cfg(moe=MOE, dtype="bfloat16")
    x, pos = _inputs(cfg32)
    params = make_params(Transformer(cfg32), x, pos)
    y32, _, aux32 = fast_jit(Transformer(cfg32).apply)({"params": params}, x, pos)
    y16, _, aux16 = fast_jit(Transformer(cfg16).apply)({"params": params}, x, pos)
    assert y16.dtype == jnp.bfloat16 and aux16.dtype == jnp.float32
    y16 = np.asarray(y16, np.float32)
    assert np.all(np.isfinite(y16))
    rel = np.linalg.norm(y16 - np.asarray(y32)) / np.linalg.norm(y32)
    assert rel < 5e-2, rel
    assert abs(float(aux16) - float(aux32)) < 0.1


@pytest.mark.parametrize("scan", [True, False])
def test_tap_layer_returns_that_blocks_residual_stream(make_cfg, make_params, reference, scan):
    """``tap_layer=k`` adds the residual stream after block k and changes nothing else: tapping the last block
    and applying the final norm gives the output; another block gives another stream; a block past the stack
    is an error."""
    import dataclasses

    from interaction_jax.layers.norms import RMSNorm

    params, x, pos, _, _ = reference
    cfg = make_cfg()
    if not scan:
        cfg = dataclasses.replace(cfg, scan_layers=False)
        params = _unstack(params, cfg.num_layers)
    y, _, _ = Transformer(cfg).apply({"params": params}, x, pos)
    last = cfg.num_layers - 1
    y2, _, _, tapped = Transformer(cfg, tap_layer=last).apply({"params": params}, x, pos)
    np.testing.assert_array_equal(np.asarray(y2), np.asarray(y))
    norm = RMSNorm(cfg.norm_eps, jnp.float32).apply({"params": params["final_norm"]}, tapped)
    np.testing.assert_allclose(np.asarray(norm), np.asarray(y), rtol=1e-5, atol=1e-5)
    first = Transformer(cfg, tap_layer=0).apply({"params": params}, x, pos)[3]
    assert not np.allclose(np.asarray(first), np.asarray(tapped))
    with pytest.raises(ValueError, match="tap_layer"):
        Transformer(cfg, tap_layer=cfg.num_layers).apply({"params": params}, x, pos)

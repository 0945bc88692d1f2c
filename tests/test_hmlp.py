"""hMLP stem: shapes, exact patch locality, batch invariance, shape errors, jax transforms."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interaction_jax.vision import hmlp

DIM = 32

# Eager mode compiles every op separately (slow on CPU); the tests call the stem through one jit.
_apply = jax.jit(hmlp.apply, static_argnums=2)


@pytest.fixture(scope="module")
def params():
    # rbg keys: their draws compile much faster than threefry on CPU; the stem accepts any key type.
    return hmlp.init(jax.random.key(0, impl="rbg"), DIM, 80, 80)


def _frames(seed, shape):
    # numpy, not jax.random: eager jax.random compiles each op, which costs seconds on CPU.
    return np.random.default_rng(seed).uniform(-1.0, 1.0, shape).astype(np.float32)


@pytest.mark.parametrize(("height", "width", "tokens"), [(80, 80, 4), (240, 320, 48)])
def test_output_shape(params, height, width, tokens):
    out = _apply(params, _frames(1, (2, height, width, 3)), DIM)
    assert out.shape == (2, tokens, DIM)
    assert out.dtype == jnp.float32


def test_param_tree_and_logical_axes():
    # Shapes only: no need to compile an init to read the tree and its logical axes.
    variables = jax.eval_shape(hmlp.HMLPStem(dim=DIM).init, jax.random.key(0), jnp.zeros((1, 80, 80, 3)))
    specs = nn.get_partition_spec(variables)["params"]
    assert tuple(specs["stage0_dense"]["kernel"]) == (None, "embed")
    assert tuple(specs["stage3_norm"]["scale"]) == ("embed",)
    assert tuple(specs["row_embed"]) == (None, "embed")
    plain = nn.meta.unbox(variables["params"])
    assert plain["stage0_dense"]["kernel"].shape == (75, DIM // 4)
    assert plain["stage1_dense"]["kernel"].shape == (DIM, DIM // 4)
    assert plain["stage3_dense"]["kernel"].shape == (DIM, DIM)
    assert plain["row_embed"].shape == (16, DIM) and plain["col_embed"].shape == (16, DIM)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(plain))


def test_patch_locality_is_exact(params):
    # 120x160 -> 3x4 grid. Perturb patch (row 1, col 2) = token 1*4 + 2 = 6.
    frame = _frames(2, (120, 160, 3))
    changed = frame.copy()
    changed[40:80, 80:120] = _frames(3, (40, 40, 3))
    a = np.asarray(_apply(params, frame, DIM))
    b = np.asarray(_apply(params, changed, DIM))
    differs = np.any(a != b, axis=-1)
    assert differs.tolist() == [i == 6 for i in range(12)]
    # A single pixel at the patch corner is enough to change only that token.
    one_px = frame.copy()
    one_px[79, 119, 0] += 0.5
    c = np.asarray(_apply(params, one_px, DIM))
    assert np.any(a != c, axis=-1).tolist() == [i == 6 for i in range(12)]


def test_batch_invariance_is_exact(params):
    frames = _frames(4, (3, 80, 120, 3))
    batched = np.asarray(_apply(params, frames, DIM))
    for i in range(3):
        alone = np.asarray(_apply(params, frames[i : i + 1], DIM))[0]
        np.testing.assert_array_equal(alone, batched[i])


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((1, 81, 80, 3), "H=81, W=80"),
        ((1, 80, 100, 3), "H=80, W=100"),
        ((1, 80, 80, 4), "3 RGB channels"),
        ((80, 3), "rank 2"),
        ((1, 680, 80, 3), "exceeds the position tables"),
    ],
)
def test_bad_shapes_raise(params, shape, match):
    with pytest.raises(ValueError, match=match):
        _apply(params, np.zeros(shape, np.float32), DIM)


def test_bad_dim_raises():
    with pytest.raises(ValueError, match="multiple of 4"):
        hmlp.init(jax.random.key(0), 30, 80, 80)


def test_frames_to_input():
    frames = np.array([[[[0, 255, 127]]]], dtype=np.uint8)
    out = hmlp.frames_to_input(frames)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out).ravel(), [-1.0, 1.0, 127 / 127.5 - 1], atol=1e-7)
    with pytest.raises(TypeError, match="uint8"):
        hmlp.frames_to_input(frames.astype(np.float32))


def test_jit_vmap_grad(params):
    frames = _frames(5, (2, 80, 80, 3))
    batched = _apply(params, frames, DIM)
    vmapped = jax.jit(jax.vmap(lambda f: hmlp.apply(params, f, DIM)))(frames)
    np.testing.assert_allclose(vmapped, batched, rtol=1e-5, atol=1e-5)

    def loss(p, x):
        return jnp.mean(hmlp.apply(p, x, DIM) ** 2)

    grads, dx = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, frames)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["stage0_dense"]["kernel"]).sum()) > 0
    assert dx.shape == frames.shape and float(jnp.abs(dx).sum()) > 0
    # Rows/cols beyond the grid get no gradient: 80x80 uses only the first 2 of 16.
    assert float(jnp.abs(grads["row_embed"][2:]).sum()) == 0.0


def test_bf16_compute_keeps_fp32_params(params):
    stem = hmlp.HMLPStem(dim=DIM, dtype=jnp.bfloat16)
    shapes = jax.eval_shape(stem.init, jax.random.key(0), jnp.zeros((1, 80, 80, 3)))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nn.meta.unbox(shapes)))
    frames = _frames(6, (1, 80, 80, 3))
    out = jax.jit(stem.apply)({"params": params}, frames)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), _apply(params, frames, DIM), atol=0.1, rtol=0.05)

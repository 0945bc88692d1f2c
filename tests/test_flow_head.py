"""Flow-matching head: learns a class-conditional 2-D Gaussian family; zero-init, masking, CFG, transforms.

Error measures used by the distribution test (per class c, 4000 samples):
- mean error  = ||mean_hat − μ_c||₂ / ||μ_c||₂ (every μ_c has norm ≥ 1.5, so a relative error is meaningful);
- cov error   = ||Σ_hat − Σ_ref||_F / ||Σ_ref||_F.
Both must be ≤ 0.10.

Why two references for the covariance: with x0 ~ N(0, I) independent of x1, the marginal rectified flow is
curved, and 8 uniform Euler steps shrink a Gaussian's variance by ≥ 27% *with the exact velocity field*, for
any data scale (``test_euler8_bias_is_intrinsic`` checks this in closed form). So for the default sampler
(Euler, steps=8) Σ_ref is the closed-form Euler-8 image of the true flow (the model must reproduce what the
exact field would give), and with ``solver="midpoint"`` at 8 steps Σ_ref is the true Σ_c.

CPU cost: on CPU every compile costs seconds, far more than running this tiny head, so the tests share one
config and shapes and one jitted entry point per variant, and use ``rbg`` PRNG keys, whose draws compile
much faster than threefry's on CPU (the head accepts any key type).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from interaction_jax import flow_head as fh
from interaction_jax.config import FlowHeadConfig

CONFIG = FlowHeadConfig(width=64, depth=3)  # noise_multiplier 4, cfg_dropout 0.1, sample_steps 8: defaults
OUT = 2  # the 2-D toy targets
COND = 3  # one-hot class
KW = dict(config=CONFIG, out_dim=OUT)


def _key(seed: int) -> jax.Array:
    return jax.random.key(seed, impl="rbg")


MU = np.array([[1.5, 0.5], [-1.0, 1.2], [0.2, -1.5]])
SIGMA = np.array([[[1.0, 0.5], [0.5, 0.6]], [[0.4, -0.3], [-0.3, 0.9]], [[0.5, 0.25], [0.25, 0.3]]])

_loss = jax.jit(fh.loss, static_argnames=("config", "out_dim", "train"))
_loss_and_grad = jax.jit(jax.value_and_grad(fh.loss, argnums=(0, 1)), static_argnames=("config", "out_dim", "train"))
_sample = jax.jit(fh.sample, static_argnames=("config", "out_dim", "steps", "cfg_scale", "solver"))
_sample_with_noise = jax.jit(fh.sample_with_noise, static_argnames=("config", "out_dim", "steps", "solver"))
# cfg_scale traced: always the batched cond + null path.
_sample_guided = jax.jit(lambda p, c, z, s: fh.sample_with_noise(p, c, z, cfg_scale=s, **KW))


@pytest.fixture(scope="module")
def params():
    return fh.init(_key(0), CONFIG, OUT, COND)


@pytest.fixture(scope="module")
def perturbed(params):
    """Params with the zero-initialised layers made non-zero, so the field is not trivially 0."""
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(0)
    return jax.tree.unflatten(tree, [x + 0.1 * rng.standard_normal(x.shape).astype(np.float32) for x in leaves])


def _normal(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Structure and invariants
# ----------------------------------------------------------------------------------------------------------


def test_param_tree_and_zero_init(params):
    assert set(params) == {
        "input_proj",
        "time_in",
        "time_out",
        "cond_proj",
        "block0",
        "block1",
        "block2",
        "final_adaln",
        "output",
        "null_cond",
    }
    assert set(params["block0"]) == {"adaln", "mlp_in", "mlp_out"}
    assert params["null_cond"].shape == (COND,)
    assert params["cond_proj"]["kernel"].shape == (COND, CONFIG.width)
    assert params["output"]["kernel"].shape == (CONFIG.width, OUT)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    zero = [params["final_adaln"], params["output"]] + [params[f"block{i}"]["adaln"] for i in range(3)]
    for layer in zero:
        assert not np.any(layer["kernel"]) and not np.any(layer["bias"])
    # Zero-init output layer: the predicted clean block is exactly 0, so the field is -x_t / (1 - t).
    x, t = 5 * _normal((7, OUT)), np.random.default_rng(3).uniform(size=(7,)).astype(np.float32)
    v = jax.jit(fh.velocity, static_argnames=("config", "out_dim"))(params, x, t, _normal((7, COND)), **KW)
    np.testing.assert_allclose(np.asarray(v), -x / np.maximum(1 - t, CONFIG.min_one_minus_t)[:, None], rtol=1e-5)
    # A velocity-predicting head starts as the zero field.
    vcfg = FlowHeadConfig(width=CONFIG.width, depth=3, prediction="velocity")
    vparams = fh.init(_key(0), vcfg, OUT, COND)
    v = jax.jit(fh.velocity, static_argnames=("config", "out_dim"))(vparams, x, t, _normal((7, COND)), config=vcfg,
                                                                    out_dim=OUT)
    assert v.shape == (7, OUT) and not np.any(np.asarray(v))


def test_a_velocity_head_narrower_than_its_output_is_refused():
    with pytest.raises(ValueError, match="rank-deficient"):
        fh.init(_key(0), FlowHeadConfig(width=256, prediction="velocity"), 320, 8)
    with pytest.raises(ValueError, match="unknown prediction"):
        fh.init(_key(0), FlowHeadConfig(width=256, prediction="eps"), 320, 8)


def test_narrow_head_samples_clean_silence_on_real_mel_blocks():
    """The learning issue's toy: tiny's 256-wide head, 4x80 = 320-value blocks of real silence and DTMF tone.

    A velocity head this narrow cannot see 64 of the 320 noise directions: it plateaued at CFM loss 0.25 and
    left noise of std 0.47 on sampled silence (which scores 0 on every task). x-prediction is full-rank.
    """
    from interaction_jax.config import load_config
    from interaction_jax.data import synthetic
    from interaction_jax.data.pipeline import episode_arrays

    config = load_config("configs/tiny.py")
    blocks = np.concatenate([episode_arrays(synthetic.generate("repeat", s), config)["mel_out"].reshape(-1, 320)
                             for s in range(4)])
    silent = blocks[np.all(blocks == -1.0, axis=1)][:32]
    voiced = blocks[blocks.max(1) > -0.3]
    rng = np.random.default_rng(0)
    targets = np.concatenate([silent, voiced[rng.choice(len(voiced), 32, replace=False)]]).astype(np.float32)
    assert len(silent) == 32
    conds = rng.standard_normal((64, 64)).astype(np.float32)
    head = FlowHeadConfig(width=256, depth=3)
    kw = dict(config=head, out_dim=320)
    opt = optax.adam(1e-3)
    keys = jax.random.split(_key(1), 400)

    @jax.jit
    def train(params):
        def step(carry, key):
            p, o = carry
            loss, g = jax.value_and_grad(fh.loss)(p, conds, targets, key, **kw)
            u, o = opt.update(g, o, p)
            return (optax.apply_updates(p, u), o), loss

        (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), keys)
        return params, losses

    params, losses = train(fh.init(_key(0), head, 320, 64))
    sample = np.asarray(jax.jit(lambda p: fh.sample(p, conds, _key(9), **kw))(params))
    err_silence = float(np.std(sample[:32] - targets[:32]))
    assert float(losses[-50:].mean()) < 0.1, float(losses[-50:].mean())
    assert err_silence <= 0.05, err_silence


def test_logical_axes():
    shapes = jax.eval_shape(
        fh.FlowHead(CONFIG, OUT).init,
        _key(0),
        jnp.zeros((1, OUT)),
        jnp.zeros((1,)),
        jnp.zeros((1, COND)),
    )
    specs = nn.get_partition_spec(shapes)["params"]
    assert tuple(specs["cond_proj"]["kernel"]) == (None, "embed")
    assert tuple(specs["block0"]["adaln"]["kernel"]) == (None, "embed")
    assert tuple(specs["output"]["kernel"]) == ("embed", None)
    assert tuple(specs["null_cond"]) == ("embed",)


def test_loss_weights_and_grad(perturbed):
    cond, target, key = _normal((8, COND)), _normal((8, OUT), seed=2), _key(4)
    ones, mask = np.ones(8, np.float32), np.array([1, 1, 1, 0, 1, 1, 1, 1], np.float32)
    full, (grad_p, grad_c) = _loss_and_grad(perturbed, cond, target, key, weights=ones, **KW)
    assert float(full) > 0
    assert float(_loss(perturbed, cond, target, key, **KW)) == float(full)  # weights=None == all ones
    assert float(_loss_and_grad(perturbed, cond, target, key, weights=0 * ones, **KW)[0]) == 0.0
    # A row with weight 0 does not influence the loss, whatever its target.
    changed = target.copy()
    changed[3] += 100.0
    masked = float(_loss_and_grad(perturbed, cond, target, key, weights=mask, **KW)[0])
    assert masked != float(full)
    assert float(_loss_and_grad(perturbed, cond, changed, key, weights=mask, **KW)[0]) == masked
    # grad flows to every param group and to the condition.
    assert jax.tree.structure(grad_p) == jax.tree.structure(perturbed)
    assert all(np.all(np.isfinite(g)) and np.any(g) for g in jax.tree.leaves(grad_p))
    assert np.any(grad_c)


def test_cfg_dropout_only_when_training(perturbed):
    always = FlowHeadConfig(width=CONFIG.width, depth=CONFIG.depth, cfg_dropout=1.0)
    cond, target, key = _normal((8, COND)), _normal((8, OUT), seed=2), _key(5)

    def value(c, train):
        return float(_loss(perturbed, c, target, key, config=always, out_dim=OUT, train=train))

    # Training with every condition dropped: the loss no longer sees the condition.
    assert value(cond, True) == value(3.0 * cond, True)
    # Not training: no dropout, so the condition matters again.
    assert value(cond, False) != value(3.0 * cond, False)
    assert value(cond, False) != value(cond, True)


def test_sampling_determinism_and_noise_replay(perturbed):
    cond = _normal((2, 3, COND))  # leading dims are preserved
    a = _sample(perturbed, cond, _key(7), **KW)
    assert a.shape == (2, 3, OUT) and a.dtype == jnp.float32
    np.testing.assert_array_equal(a, _sample(perturbed, cond, _key(7), **KW))
    assert not np.allclose(a, _sample(perturbed, cond, _key(8), **KW))
    # sample == sample_with_noise(normal(rng)): the serving engine can replay a sample exactly.
    noise = jax.random.normal(_key(7), (2, 3, OUT))
    np.testing.assert_array_equal(a, _sample_with_noise(perturbed, cond, noise, **KW))
    # temperature 0 starts from x0 = 0: sampling no longer depends on the rng.
    np.testing.assert_array_equal(
        _sample(perturbed, cond, _key(1), temperature=0.0, **KW),
        _sample(perturbed, cond, _key(2), temperature=0.0, **KW),
    )


def test_cfg_scale(perturbed):
    cond, noise = _normal((2, 3, COND)), _normal((2, 3, OUT), seed=3)
    plain = _sample_with_noise(perturbed, cond, noise, **KW)
    # cfg_scale=1 (single pass, no guidance) == the guided formula v_null + s(v_cond - v_null) at s=1.
    np.testing.assert_allclose(_sample_guided(perturbed, cond, noise, 1.0), plain, rtol=1e-5, atol=1e-5)
    # s=0 gives the unconditional sample: the same as conditioning on null_cond directly.
    null = np.broadcast_to(perturbed["null_cond"], cond.shape)
    unconditional = _sample_with_noise(perturbed, null, noise, **KW)
    np.testing.assert_allclose(_sample_guided(perturbed, cond, noise, 0.0), unconditional, rtol=1e-5, atol=1e-5)
    assert not np.allclose(_sample_guided(perturbed, cond, noise, 2.0), plain)


def test_vmap_over_rows(perturbed):
    """A row's sample is the same alone (vmap) or in the batch."""
    cond, noise = _normal((2, 3, COND)), _normal((2, 3, OUT), seed=3)
    per_row = jax.jit(jax.vmap(lambda c, z: fh.sample_with_noise(perturbed, c, z, **KW)))
    np.testing.assert_allclose(per_row(cond, noise), _sample_with_noise(perturbed, cond, noise, **KW), atol=1e-5)


def test_methods_inside_a_parent_module():
    """The main model calls ``self.flow_head.loss`` / ``.sample`` from its own methods, in bf16 on TPU."""
    mel_block = 320  # k=4 frames x 80 mels

    class Parent(nn.Module):
        def setup(self):
            self.trunk = nn.Dense(16)
            self.flow_head = fh.FlowHead(CONFIG, mel_block, dtype=jnp.bfloat16)

        def train_loss(self, x, target, rng):
            return self.flow_head.loss(self.trunk(x), target, rng)

        def generate(self, x, rng):
            return self.flow_head.sample(self.trunk(x), rng, steps=3, cfg_scale=1.5)

    model = Parent()
    x, target = _normal((4, 5)), _normal((4, mel_block), seed=2)
    # Shapes only (no compile): the parent's init must create the head's params, null_cond included.
    shapes = jax.eval_shape(lambda k: model.init(k, x, target, k, method=Parent.train_loss), _key(0))
    assert shapes["params"]["flow_head"]["null_cond"].value.shape == (16,)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nn.meta.unbox(shapes)))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: 0.05 * rng.standard_normal(s.shape).astype(np.float32), nn.meta.unbox(shapes))
    value = jax.jit(lambda v: model.apply(v, x, target, _key(1), method=Parent.train_loss))(variables)
    assert np.isfinite(float(value)) and float(value) > 0
    out = jax.jit(lambda v: model.apply(v, x, _key(2), method=Parent.generate))(variables)
    assert out.shape == (4, mel_block) and out.dtype == jnp.float32 and np.all(np.isfinite(out))


def test_bad_arguments(params):
    with pytest.raises(ValueError, match="target"):
        fh.loss(params, _normal((4, COND)), _normal((4, OUT + 1)), _key(0), **KW)
    with pytest.raises(ValueError, match="solver"):
        fh.sample_with_noise(params, _normal((4, COND)), _normal((4, OUT)), solver="rk4", **KW)
    with pytest.raises(ValueError, match="noise"):
        fh.sample_with_noise(params, _normal((4, COND)), _normal((3, OUT)), **KW)


# ----------------------------------------------------------------------------------------------------------
# Learning a conditional distribution
# ----------------------------------------------------------------------------------------------------------


def _euler_cov(sigma: np.ndarray, steps: int) -> np.ndarray:
    """Covariance after ``steps`` uniform Euler steps of the *exact* rectified flow N(0, I) → N(μ, Σ).

    The exact marginal velocity is affine in x: v = μ + A(t)(x − tμ), A(t) = (tΣ − (1−t)I)((1−t)²I + t²Σ)⁻¹,
    so each Euler step multiplies the centred state by (I + dt·A(t)) and the mean stays exact.
    """
    eye = np.eye(len(sigma))
    prod = eye
    for k in range(steps):
        t = k / steps
        a = (t * sigma - (1 - t) * eye) @ np.linalg.inv((1 - t) ** 2 * eye + t * t * sigma)
        prod = (eye + a / steps) @ prod
    return prod @ prod.T


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_euler8_bias_is_intrinsic():
    """Even the exact field, integrated by 8 Euler steps, misses Σ by > 20% (so Σ_ref must account for it)."""
    for c in range(3):
        assert _rel(_euler_cov(SIGMA[c], 8), SIGMA[c]) > 0.2
        assert _rel(_euler_cov(SIGMA[c], 512), SIGMA[c]) < 0.01


def test_learns_class_conditional_gaussians(params):
    batch, chunk, chunks = 64, 400, 4  # 1600 adam steps of 64 conditions x 4 noise draws
    # Data and per-step keys made up front with numpy: the jitted step then holds a single RNG draw (the loss's
    # own), which keeps its compile short.
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 3, (chunks, chunk, batch))
    chol = np.linalg.cholesky(SIGMA)[classes]
    points = MU[classes] + np.einsum("...ij,...j->...i", chol, rng.standard_normal((*classes.shape, 2)))
    points = points.astype(np.float32)
    onehot = np.eye(3, dtype=np.float32)[classes]
    key_data = rng.integers(0, 2**32, (chunks, chunk, 4), dtype=np.uint32)  # rbg key data
    opt = optax.adam(optax.cosine_decay_schedule(2e-3, chunk * chunks, alpha=0.05))

    def step(carry, inputs):
        params, opt_state = carry
        cond, x, key = inputs
        value, grads = jax.value_and_grad(fh.loss)(params, cond, x, jax.random.wrap_key_data(key, impl="rbg"), **KW)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    @jax.jit
    def train_chunk(params, opt_state, cond, x, keys):
        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (cond, x, keys))
        return params, opt_state, losses.mean()

    opt_state = opt.init(params)
    for i in range(chunks):
        params, opt_state, _ = train_chunk(params, opt_state, onehot[i], points[i], key_data[i])

    n = 4000
    cond = np.repeat(np.eye(3, dtype=np.float32), n, axis=0)
    # Explicit N(0, I) noise: sample == sample_with_noise(normal(rng)) is checked above, and this skips
    # compiling another RNG draw.
    noise = _normal((3 * n, 2), seed=10)
    report = []
    for solver in ("euler", "midpoint"):
        x = np.asarray(_sample_with_noise(params, cond, noise, solver=solver, **KW))
        for c in range(3):
            xs = x[c * n : (c + 1) * n]
            ref = _euler_cov(SIGMA[c], 8) if solver == "euler" else SIGMA[c]
            mean_err, cov_err = _rel(xs.mean(0), MU[c]), _rel(np.cov(xs.T), ref)
            report.append(f"{solver}-8 class {c}: mean err {mean_err:.3f}, cov err {cov_err:.3f}")
            assert mean_err <= 0.10 and cov_err <= 0.10, report[-1]
    print("\n" + "\n".join(report))

"""Front-end switches (model.audio_in / video_in / audio_out): every variant trains, streams exactly like it
trains, evaluates, and is counted exactly by the FLOP accounting. The default variants are covered by the
rest of the suite; these tests fail if a switch is ignored, miswired between data and serving, or miscounted.
"""

import dataclasses
from pathlib import Path

import flax.linen as nn
import jax
import jax.extend.core as jax_core
import jax.numpy as jnp
import numpy as np
import pytest

from interaction_jax import flops
from interaction_jax import model as model_lib
from interaction_jax.audio import dmel
from interaction_jax.config import ConfigError, load_config
from interaction_jax.data import pipeline, synthetic
from interaction_jax.evals.teacher_forced import mel_l1
from interaction_jax.frontends import audio_in as audio_in_lib
from interaction_jax.frontends import audio_out as audio_out_lib
from interaction_jax.layout import Layout, SlotType
from interaction_jax.model import InteractionModel, Sampling
from interaction_jax.serve.engine import Engine
from tests.small import small_overrides

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = [("audio_in", "mel_linear"), ("audio_in", "wave_linear"), ("video_in", "linear"),
            ("audio_out", "regress"), ("audio_out", "dmel_bins")]
FRONT_END_PARAMS = {"mel_linear": "audio_in_linear", "wave_linear": "audio_in_linear", "linear": "video_stem",
                    "regress": "regress_head", "dmel_bins": "dmel_bins_head"}


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """This module compiles ~40 small programs in-process; drop them when it ends, so the rest of the suite
    does not carry them (a full run once segfaulted inside XLA in the next module, test_model)."""
    yield
    jax.clear_caches()


def small(field: str, value: str, *extra: str):
    return load_config(ROOT / "configs/tiny.py", small_overrides(2, f"model.{field}={value}", *extra))


@pytest.mark.parametrize("variant", audio_in_lib.VARIANTS)
def test_training_features_equal_the_streaming_features(variant):
    """The data pipeline and the serving engine compute each audio-in feature the same way."""
    cfg = load_config(ROOT / "configs/tiny.py", [f"model.audio_in={variant}"])
    ep = synthetic.generate("repeat", 5)
    batch_feats = pipeline.episode_arrays(ep, cfg)["audio_in"]
    shape, dtype = audio_in_lib.feature_spec(variant, cfg.audio)
    assert batch_feats.shape == (ep.num_chunks, *shape) and batch_feats.dtype == dtype
    wave = np.pad(ep.user_audio, (0, ep.num_chunks * 3200 - ep.user_audio.size)).astype(np.float32)
    state, streamed = dmel.stream_init(), []
    for n in range(ep.num_chunks):
        chunk = wave[None, n * 3200 : (n + 1) * 3200]
        state, mel = dmel.stream_step(state, chunk[0])
        streamed.append(np.asarray(audio_in_lib.features(variant, mel[None], chunk, cfg.audio))[0])
    streamed = np.stack(streamed)
    if variant == "dmel":
        assert (streamed == batch_feats).mean() > 0.999  # a value exactly on a bin edge may round either way
    else:
        np.testing.assert_allclose(streamed, batch_feats, atol=2e-4)
    if variant == "wave_linear":  # causal: chunk n's feature is exactly the microphone's chunk n
        np.testing.assert_array_equal(batch_feats[3], wave[3 * 3200 : 4 * 3200])


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ConfigError, match="must be one of dmel, mel_linear, wave_linear"):
        load_config(ROOT / "configs/tiny.py", ["model.audio_in=mfcc"])
    with pytest.raises(ValueError, match=r"model\.audio_out='gan'"):
        audio_out_lib.check("gan")


@pytest.mark.parametrize("field,value", VARIANTS)
def test_variant_trains_and_streams_exactly_like_it_trains(field, value):
    """jit + grad reach the variant's own params; the KV-cache engine reproduces the training forward."""
    cfg = small(field, value)
    params = nn.unbox(model_lib.init(jax.random.key(1), cfg))
    assert FRONT_END_PARAMS[value] in params
    batch = jax.tree.map(jnp.asarray, model_lib.dummy_batch(cfg, 2, 3))
    grad_fn = jax.jit(jax.grad(lambda p, b: model_lib.loss_fn(p, b, jax.random.key(0), config=cfg)[0]))
    grads = grad_fn(params, batch)
    g = jax.tree.leaves(grads[FRONT_END_PARAMS[value]])
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(grads))
    assert sum(float(jnp.abs(x).sum()) for x in g) > 0

    n = 4
    engine = Engine(cfg, params, batch_slots=1, cache_chunks=6, sampling=Sampling(temperature=0.9, top_k=50))
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((n, 1, 3200))).astype(np.float32)
    frames = rng.integers(0, 256, (n, 1, 80, 80, 3), dtype=np.uint8)
    text = rng.integers(0, 264, (n, 1, 2)).astype(np.int32)
    state = engine.reset(engine.init_state(), np.ones(1, bool), np.array([3]))
    outs = []
    for i in range(n):
        state, out = engine.step(state, audio[i], frames[i], np.ones(1, bool), text[i])
        outs.append(out)
    mel = np.stack([o["mel"][0] for o in outs])
    assert np.isfinite(mel).all() and mel.min() >= -1.0 and mel.max() <= 1.0
    full = InteractionModel.from_config(cfg).apply({"params": params}, jax.tree.map(jnp.asarray, {
        "audio_in": np.stack([o["audio_in"][0] for o in outs])[None],
        "frames": frames[:, 0][None], "frame_mask": np.ones((1, n), bool), "text_in": text[:, 0][None],
        "text_out": np.stack([o["text_tokens"][0] for o in outs])[None],
        "text_out_weight": np.ones((1, n, 2), np.float32), "mel_out": mel[None],
        "mel_out_weight": np.ones((1, n), np.float32)}))
    np.testing.assert_allclose(np.stack([o["text_logits"][0] for o in outs]), full["text_logits"][0], atol=1e-5)
    np.testing.assert_allclose(np.stack([o["flow_cond"][0] for o in outs]), full["flow_cond"][0], atol=1e-5)


def _matmul_flops(fn, *args) -> float:
    """Matmul FLOPs of ``fn``: 2 x output size x contracted size of every dot_general in its jaxpr (nested
    jaxprs included). The accounting counts matmuls only (elementwise work is excluded by convention)."""

    def count(jaxpr) -> float:
        total = 0.0
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                (lhs_contract, _), _ = eqn.params["dimension_numbers"]
                lhs = eqn.invars[0].aval.shape
                total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[i] for i in lhs_contract])
            for sub in jax_core.jaxprs_in_params(eqn.params):  # pjit, custom_jvp, remat...
                total += count(sub)
        return total

    return count(jax.make_jaxpr(fn)(*args).jaxpr)


@pytest.mark.parametrize("field,value", [("audio_in", "dmel"), *VARIANTS, ("video_in", "hmlp"), ("audio_out", "flow")])
def test_flop_accounting_counts_each_variant_as_xla_does(field, value):
    """The analytic matmul params of the switched component, times 2 per forward token, against XLA's count of
    the component's own forward pass (elementwise work and the slot-embedding adds make up the slack)."""
    cfg = load_config(ROOT / "configs/tiny.py", [f"model.{field}={value}"])
    params = nn.unbox(model_lib.init(jax.random.key(0), cfg))
    rep = flops.report(cfg, params)
    lay = Layout.from_config(cfg.audio, cfg.vision, cfg.text)
    model = InteractionModel.from_config(cfg)
    per_token = rep["matmul_params_per_token"]
    s = lay.slots_per_chunk
    b = model_lib.dummy_batch(cfg, 1, 2)
    if field == "audio_in":
        analytic = 2 * per_token[f"audio_in_{value}"] * s  # per chunk
        xla = _matmul_flops(lambda p, x: model.apply({"params": p}, x, method=InteractionModel.embed_audio_in),
                         params, jnp.asarray(b["audio_in"][0, :1]))
    elif field == "video_in":
        analytic = 2 * per_token["video_stem"] * s
        xla = _matmul_flops(lambda p, x: model.apply({"params": p}, x, method=InteractionModel.video_patches),
                         params, jnp.asarray(b["frames"][0, :1]))
    else:
        head = f"{value}_head"
        rows = 64
        analytic = 2 * per_token[head] * s / lay.num_audio * rows  # per_token spreads A blocks over S tokens
        cond = jnp.ones((rows, cfg.model.transformer.d_model))
        target = jnp.zeros((rows, lay.mel_block))
        xla = _matmul_flops(lambda p, c, t: model.apply(
            {"params": p}, c, t, jax.random.key(0), method=lambda m, c, t, r: m.audio_head.loss(c, t, r)),
            params, cond, target)
    assert 0.97 < xla / analytic < 1.03, (xla, analytic)  # the analytic count also holds the (tiny) biases
    assert rep["total"] == model_lib.count_params(params)


def test_regress_and_dmel_bins_heads_can_represent_their_targets():
    """Trained alone on two blocks (silence and a tone), each head must return them: regress within 0.05
    (its L1 target), dmel_bins exactly the bin-quantised block (the most it can express)."""
    import optax

    from interaction_jax.config import AudioConfig, FlowHeadConfig

    audio = AudioConfig(frames_per_token=4)
    out_dim = 4 * audio.n_mels
    tone = np.full((4, audio.n_mels), -1.0, np.float32)
    tone[:, 20:23] = 0.4
    targets = jnp.asarray(np.stack([np.full(out_dim, -1.0, np.float32), tone.reshape(-1)]))
    cond = jnp.eye(2, 16)
    for head in (audio_out_lib.RegressHead(FlowHeadConfig(width=64, depth=1), out_dim),
                 audio_out_lib.DMelBinsHead(FlowHeadConfig(width=64, depth=1), out_dim, audio)):
        params = nn.unbox(head.init(jax.random.key(0), cond, targets, jax.random.key(1), method=head.loss))
        opt = optax.adam(3e-3)
        state = opt.init(params)

        @jax.jit
        def step(p, s, head=head, opt=opt):
            loss, g = jax.value_and_grad(lambda p: head.apply(p, cond, targets, jax.random.key(1),
                                                              method=head.loss))(p)
            u, s = opt.update(g, s)
            return optax.apply_updates(p, u), s, loss

        for _ in range(300):
            params, state, _ = step(params, state)
        out = head.apply(params, cond, jnp.zeros_like(targets), method=head.sample_with_noise)
        if isinstance(head, audio_out_lib.RegressHead):
            assert float(jnp.max(jnp.abs(out - targets))) < 0.05
        else:
            quantised = dmel.normalize_mel(dmel.undiscretize(head.apply(
                params, targets, method=head.target_bins).reshape(2, 4, -1), audio), audio).reshape(2, -1)
            np.testing.assert_allclose(out, quantised, atol=1e-5)
            assert float(jnp.max(jnp.abs(out[0] + 1.0))) < 1e-5  # silence comes back as exact silence


def test_linear_video_stem_keeps_patches_independent():
    """A stride-40 linear embedding: changing one patch's pixels changes that token only."""
    cfg = small("video_in", "linear")
    params = nn.unbox(model_lib.init(jax.random.key(0), cfg))
    model = InteractionModel.from_config(cfg)
    frames = np.random.default_rng(0).integers(0, 256, (1, 80, 80, 3), dtype=np.uint8)
    other = frames.copy()
    other[0, 40:, :40] = 255 - other[0, 40:, :40]  # patch (1, 0) = token 2
    f = jax.jit(lambda p, x: model.apply({"params": p}, x, method=InteractionModel.video_patches))
    a, b = np.asarray(f(params, frames)), np.asarray(f(params, other))
    changed = np.abs(a - b).max(axis=-1)[0]
    assert changed[2] > 0 and np.all(changed[[0, 1, 3]] == 0)
    assert cfg.model.video_in == "linear" and "patch_embed" in params["video_stem"]


def test_every_variant_starts_at_a_comparable_token_scale():
    """A -20 dBFS tone enters every audio-in variant at an RMS within 4x of dMel's (the 40x gap of the old
    init stopped learning; a raw-waveform projection at fan-in init would start ~15x quieter)."""
    t = np.arange(3200) / 16000
    wave = (0.1 * np.sin(2 * np.pi * 697 * t) + 0.1 * np.sin(2 * np.pi * 1209 * t)).astype(np.float32) / 1.41
    rms = {}
    for variant in audio_in_lib.VARIANTS:
        cfg = load_config(ROOT / "configs/tiny.py", [f"model.audio_in={variant}"])
        params = nn.unbox(model_lib.init(jax.random.key(0), cfg))
        mel = dmel.log_mel(np.concatenate([np.zeros(712, np.float32), wave, np.zeros(112, np.float32)]),
                           center=False)[:16]
        feats = audio_in_lib.features(variant, mel[None], wave[None], cfg.audio)
        model = InteractionModel.from_config(cfg)
        tokens = model.apply({"params": params}, feats, method=InteractionModel.embed_audio_in)
        lay = Layout.from_config(cfg.audio, cfg.vision, cfg.text)
        bare = tokens - params["slot_type_embed"][int(SlotType.AUDIO_IN)] - params["slot_index_embed"][
            lay.slot_range(SlotType.AUDIO_IN)]
        rms[variant] = float(jnp.sqrt(jnp.mean(jnp.square(bare))))
    assert all(0.25 < value / rms["dmel"] < 4.0 for value in rms.values()), rms


def test_eval_runs_free_running_with_switched_front_ends(tmp_path):
    """The eval drives every non-default switch at once (mel-in, linear stem, dMel-bin voice) end to end."""
    from interaction_jax.evals.run import evaluate
    from interaction_jax.evals.teacher_forced import teacher_forced

    cfg = load_config(ROOT / "configs/tiny.py", small_overrides(
        1, "model.audio_in=wave_linear", "model.video_in=linear", "model.audio_out=dmel_bins"))
    params = nn.unbox(model_lib.init(jax.random.key(0), cfg))
    out = evaluate(cfg, params, ("repeat",), 1, progress=False)
    assert "content" in out["repeat"], out
    cfg2 = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, audio_in="mel_linear", audio_out="regress"))
    params2 = nn.unbox(model_lib.init(jax.random.key(0), cfg2))
    assert "content" in evaluate(cfg2, params2, ("repeat",), 1, progress=False)["repeat"]
    tf = teacher_forced(cfg, params, ("repeat",), 1)["repeat"]
    assert np.isfinite(tf["mel_l1_voiced"]) and np.isfinite(tf["flow_loss"])


def test_teacher_forced_mel_l1_measures_log_mel_error():
    cfg = load_config(ROOT / "configs/tiny.py")
    target = np.full((2, 3, 4, 320), -1.0, np.float32)
    target[0, 1, :, :40] = 0.5  # voiced blocks
    valid = np.ones((2, 3, 4), bool)
    assert mel_l1(target, target, valid, cfg) == (0.0, 0.0)
    floor, ceiling = dmel.mel_range(cfg.audio)
    shifted = np.clip(target + 0.1, -1, 1)  # +0.1 normalised = 0.05 x (ceiling - floor) in log10-mel
    voiced, silent = mel_l1(shifted, target, valid, cfg)
    np.testing.assert_allclose(silent, 0.05 * float(np.mean(ceiling - floor)), rtol=1e-4)
    assert voiced > 0 and np.isnan(mel_l1(shifted, target, valid & False, cfg)[0])


ABLATIONS = sorted((ROOT / "experiments/003_frontends").glob("*.py"))
# Round 2 (copy_600/): its own baseline, dmel.py
ABLATIONS_COPY = sorted((ROOT / "experiments/003_frontends/copy_600").glob("*.py"))
BASELINES = ("audio_dmel_flow", "video_hmlp", "dmel")


@pytest.mark.parametrize("path", [p for p in ABLATIONS + ABLATIONS_COPY if p.stem not in ("summarize",)],
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_each_ablation_config_switches_exactly_one_front_end(path):
    """A variant's run answers its question only if nothing but that switch differs from its baseline."""
    from interaction_jax.config import flatten

    cfg = load_config(path)
    doc = path.read_text().split('"""')[1]
    assert f"--config {path.relative_to(ROOT)}" in doc and "Expected" in doc
    if path.parent.name == "copy_600":
        base = load_config(path.parent / "dmel.py")
    else:
        base = load_config(path.parent / (
            "video_hmlp.py" if cfg.model.video_in != "hmlp" or "video" in path.stem else "audio_dmel_flow.py"))
    diff = {k for k, v in flatten(cfg).items() if flatten(base)[k] != v} - {"name"}
    switched = {"audio_in", "video_in", "audio_out"} & {k.split(".")[-1] for k in diff}
    assert len(diff) == (0 if path.stem in BASELINES else 1), diff
    assert len(switched) == len(diff)


def test_round_two_baseline_is_the_quickstart_recipe():
    """Round 2's dMel baseline trains exactly what the README quickstart trains (plus periodic evaluations,
    which touch no training state), so its seed 0 is the quickstart's run step for step (losses identical,
    measured) and seed 1 a second quickstart seed; a drift between the two would make that claim false."""
    from interaction_jax.config import flatten
    from interaction_jax.demo import QUICKSTART_OVERRIDES

    copy = flatten(load_config(ROOT / "experiments/003_frontends/copy_600/dmel.py"))
    quick = flatten(load_config(ROOT / "configs/tiny.py", QUICKSTART_OVERRIDES))
    assert {k for k in copy if copy[k] != quick[k]} == {"name", "train.eval_every"}


@pytest.mark.tpu
@pytest.mark.parametrize("path", sorted((ROOT / "configs/ablations").glob("*.py")), ids=lambda p: p.stem)
def test_tpu_ablation_configs_switch_one_front_end_of_tpu_v5e_1b(path):
    from interaction_jax.config import flatten

    cfg, base = load_config(path), load_config(ROOT / "configs/tpu_v5e_1b.py")
    diff = {k for k, v in flatten(cfg).items() if flatten(base)[k] != v} - {"name"}
    assert len(diff) == 1 and diff.pop().split(".")[-1] in ("audio_in", "video_in", "audio_out")

"""Streaming engine: equals the teacher-forced training forward, batch invariance, join/leave, cache limits."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from interaction_jax import model as model_lib
from interaction_jax.audio import dmel
from interaction_jax.config import load_config
from interaction_jax.model import InteractionModel, Sampling
from interaction_jax.serve.engine import DelegateTracker, Engine, SessionEnded, TextInQueue
from interaction_jax.text import tokenizer
from tests.small import small_overrides

ROOT = Path(__file__).resolve().parents[2]
SMALL = small_overrides(2)
SAMPLING = Sampling(temperature=0.9, top_k=50)


@pytest.fixture(scope="module")
def setup():
    cfg = load_config(ROOT / "configs/tiny.py", SMALL)
    params = nn.unbox(model_lib.init(jax.random.key(3), cfg))
    # make the random model actually speak: bias text-out away from PAD so sampling is non-trivial
    return cfg, params


def inputs(n_chunks, batch, seed):
    rng = np.random.default_rng(seed)
    audio = (0.1 * rng.standard_normal((n_chunks, batch, 3200))).astype(np.float32)
    frames = rng.integers(0, 256, (n_chunks, batch, 80, 80, 3), dtype=np.uint8)
    text = rng.integers(0, 264, (n_chunks, batch, 2)).astype(np.int32)
    return audio, frames, text


def run(engine, audio, frames, text, seeds, rows_mask=None):
    b = engine.batch_slots
    state = engine.reset(engine.init_state(), np.ones(b, bool), seeds)
    outs = []
    for n in range(audio.shape[0]):
        state, out = engine.step(state, audio[n], frames[n], np.ones(b, bool), text[n])
        outs.append(out)
    return state, outs


@pytest.mark.parametrize("text_to_voice,slot_embedding", [("first", "type"), ("all", "type"), ("all", "slot")])
def test_streaming_equals_teacher_forced_forward(setup, text_to_voice, slot_embedding):
    cfg, _ = setup
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, text_to_voice=text_to_voice,
                                                             slot_embedding=slot_embedding))
    params = nn.unbox(model_lib.init(jax.random.key(3), cfg))
    if slot_embedding == "slot":  # one more table: the decode path must add the row of each slot it feeds
        assert params["slot_index_embed"].shape == (17, cfg.model.transformer.d_model)
    n = 6
    engine = Engine(cfg, params, batch_slots=1, cache_chunks=8, sampling=SAMPLING)
    audio, frames, text = inputs(n, 1, 0)
    _, outs = run(engine, audio, frames, text, np.array([7]))
    tokens = np.stack([o["text_tokens"][0] for o in outs])
    assert len(np.unique(tokens)) > 2  # sampling really happened
    batch = {
        "audio_in": np.stack([o["audio_in_bins"][0] for o in outs])[None],
        "frames": frames[:, 0][None],
        "frame_mask": np.ones((1, n), bool),
        "text_in": text[:, 0][None],
        "text_out": tokens[None],
        "text_out_weight": np.ones((1, n, 2), np.float32),
        "mel_out": np.stack([o["mel"][0] for o in outs])[None],
        "mel_out_weight": np.ones((1, n), np.float32),
    }
    full = InteractionModel.from_config(cfg).apply({"params": params}, jax.tree.map(jnp.asarray, batch))
    stream_logits = np.stack([o["text_logits"][0] for o in outs])
    stream_cond = np.stack([o["flow_cond"][0] for o in outs])
    np.testing.assert_allclose(stream_logits, full["text_logits"][0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(stream_cond, full["flow_cond"][0], atol=1e-5, rtol=0)


def test_streaming_dmel_matches_offline_analysis(setup):
    cfg, params = setup
    engine = Engine(cfg, params, batch_slots=1, cache_chunks=4)
    audio, frames, text = inputs(3, 1, 1)
    _, outs = run(engine, audio, frames, text, np.array([0]))
    wave = audio[:, 0].reshape(-1)
    offline = dmel.discretize(dmel.log_mel(np.concatenate([np.zeros(712), wave, np.zeros(112)]).astype(np.float32),
                                           center=False))
    streamed = np.concatenate([o["audio_in_bins"][0] for o in outs])
    assert (np.asarray(offline) == streamed).mean() > 0.999


def assert_same_session(outs_a, row_a, outs_b, row_b):
    for oa, ob in zip(outs_a, outs_b, strict=True):
        for key in ("text_logits", "text_tokens", "mel", "audio"):
            np.testing.assert_array_equal(oa[key][row_a], ob[key][row_b], err_msg=key)


@pytest.mark.parametrize("batch", [4, 8])
def test_session_alone_and_in_a_batch_are_bit_identical(setup, batch):
    """Row-invariant mode: a session in a 1-slot engine == the same session in a 4- or 8-slot batch."""
    cfg, params = setup
    n = 3
    audio, frames, text = inputs(n, batch, 2)
    seeds = np.arange(batch) + 100
    alone = Engine(cfg, params, batch_slots=1, cache_chunks=8, sampling=SAMPLING, row_invariant=True)
    together = Engine(cfg, params, batch_slots=batch, cache_chunks=8, sampling=SAMPLING, row_invariant=True)
    _, outs_b = run(together, audio, frames, text, seeds)
    row = batch - 1
    _, outs_1 = run(alone, audio[:, row : row + 1], frames[:, row : row + 1], text[:, row : row + 1], seeds[row:])
    assert_same_session(outs_1, 0, outs_b, row)


def test_batched_mode_session_ignores_its_neighbours(setup):
    """Default (batched) mode: a session's outputs do not depend on what the other slots are doing."""
    cfg, params = setup
    engine = Engine(cfg, params, batch_slots=4, cache_chunks=8, sampling=SAMPLING)
    audio, frames, text = inputs(3, 4, 5)
    seeds = np.arange(4) + 7
    _, busy = run(engine, audio, frames, text, seeds)
    quiet_audio, quiet_frames, quiet_text = audio.copy(), frames.copy(), text.copy()
    quiet_audio[:, 1:] = 0
    quiet_frames[:, 1:] = 0
    quiet_text[:, 1:] = tokenizer.PAD
    _, alone = run(engine, quiet_audio, quiet_frames, quiet_text, np.array([7, 0, 0, 0]))
    assert_same_session(alone, 0, busy, 0)


def test_sessions_join_and_leave_without_disturbing_others(setup):
    cfg, params = setup
    engine = Engine(cfg, params, batch_slots=2, cache_chunks=8, sampling=SAMPLING)
    audio, frames, text = inputs(4, 2, 3)
    seeds = np.array([5, 6])
    _, ref = run(engine, audio, frames, text, seeds)
    state = engine.reset(engine.init_state(), np.ones(2, bool), seeds)
    got = []
    for n in range(4):
        if n == 2:  # a new session takes row 1; row 0 must not notice
            state = engine.reset(state, np.array([False, True]), np.array([0, 99]))
        state, out = engine.step(state, audio[n], frames[n], np.ones(2, bool), text[n])
        got.append(out)
    for r, g in zip(ref, got, strict=True):
        np.testing.assert_array_equal(r["audio"][0], g["audio"][0])
    assert int(state.chunk_index[1]) == 2 and int(state.chunk_index[0]) == 4
    # rows that do not advance keep their state exactly
    before = jax.tree.map(np.asarray, state)
    state, _ = engine.step(state, audio[0], frames[0], np.ones(2, bool), text[0], advance=np.array([True, False]))
    after = jax.tree.map(np.asarray, state)
    for name in ("k", "v", "pos"):
        np.testing.assert_array_equal(before.cache[name][:, 1], after.cache[name][:, 1])
    assert not np.array_equal(before.cache["pos"][:, 0], after.cache["pos"][:, 0])  # the live row did write
    for name in ("prev_text", "prev_mel", "seed"):
        np.testing.assert_array_equal(getattr(before, name)[1], getattr(after, name)[1])
    assert int(after.chunk_index[1]) == 2 and int(after.chunk_index[0]) == 5


def test_cache_end_is_a_clear_error_or_a_rolling_window(setup):
    cfg, params = setup
    engine = Engine(cfg, params, batch_slots=1, cache_chunks=2)
    audio, frames, text = inputs(3, 1, 4)
    with pytest.raises(SessionEnded, match="reached the KV cache length"):
        run(engine, audio, frames, text, np.array([0]))
    rolling_cfg = model_lib.replace_transformer(cfg, sliding_window=20)
    rolling = Engine(rolling_cfg, params, batch_slots=1, cache_chunks=2)
    _, outs = run(rolling, *inputs(5, 1, 4), np.array([0]))
    assert all(np.isfinite(o["audio"]).all() for o in outs)
    with pytest.raises(ValueError, match="sliding_window"):
        Engine(model_lib.replace_transformer(cfg, sliding_window=100), params, batch_slots=1, cache_chunks=2)


def test_bad_audio_is_rejected(setup):
    cfg, params = setup
    engine = Engine(cfg, params, batch_slots=1, cache_chunks=2)
    state = engine.init_state()
    with pytest.raises(ValueError, match=r"float32 \[1, 3200\]"):
        engine.step(state, np.zeros((1, 1600), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        engine.step(state, np.full((1, 3200), np.nan, np.float32))


def test_text_queue_and_delegate_spans():
    q = TextInQueue(slots=2)
    q.push("abc")
    assert tokenizer.decode(q.pop_chunk()) == "ab"
    assert q.pop_chunk().tolist() == [ord("c"), tokenizer.PAD]
    tracker = DelegateTracker()
    stream = [tokenizer.PAD, tokenizer.DELEGATE_START, *tokenizer.encode("wea"), tokenizer.PAD]
    assert tracker.feed(np.array(stream)) == []
    assert tracker.feed(np.array([*tokenizer.encode("ther"), tokenizer.DELEGATE_END])) == ["weather"]


def test_sampling_is_greedy_at_zero_temperature():
    logits = jnp.array([[0.1, 3.0, -1.0], [2.0, 0.0, 1.0]])
    keys = jax.random.split(jax.random.key(0), 2)
    assert model_lib.sample_tokens(logits, keys, Sampling()).tolist() == [1, 0]
    top1 = model_lib.sample_tokens(logits, keys, dataclasses.replace(SAMPLING, top_k=1))
    assert top1.tolist() == [1, 0]


def test_sampling_defaults_come_from_the_config(setup):
    """`--set model.flow_head.cfg_scale=2` must reach eval/stream/serve (they all build an Engine)."""
    cfg, params = setup
    head = dataclasses.replace(cfg.model.flow_head, cfg_scale=2.0, sample_steps=4)
    guided = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, flow_head=head))
    engine = Engine(guided, params, batch_slots=1, cache_chunks=4)
    assert (engine.sampling.cfg_scale, engine.sampling.flow_steps) == (2.0, 4)
    explicit = Engine(guided, params, batch_slots=1, cache_chunks=4, sampling=SAMPLING)
    assert explicit.sampling == SAMPLING


def test_second_step_and_steps_after_a_reset_hit_the_compile_cache(setup):
    """A fresh server compiled twice (6 s each on CPU): the fresh state was uncommitted and a checkpoint's
    1-device-mesh params made the step return a differently sharded state."""
    cfg, params = setup
    mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
    params = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    engine = Engine(cfg, params, batch_slots=2, cache_chunks=7, sampling=SAMPLING)  # a key no other test uses
    state, _ = engine.warm_up(engine.init_state())
    assert engine._step._cache_size() == 1
    audio, frames, text = inputs(2, 2, 11)
    state = engine.reset(state, np.array([True, False]), np.array([3, 0]))
    for n in range(2):
        state, _ = engine.step(state, audio[n], frames[n], np.ones(2, bool), text[n])
    assert engine._step._cache_size() == 1


@pytest.mark.parametrize("chunks,cache_chunks", [(3, 8), (11, 8)])
def test_bench_filled_state_holds_a_session_of_that_age(setup, chunks, cache_chunks):
    """The bench times decode at a filled context: its state must hold exactly the positions a session of
    that age keeps (slot p % C; the newest C once the rolling cache wrapped)."""
    from interaction_jax.bench.stream import filled_state

    cfg, params = setup
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, transformer=dataclasses.replace(
        cfg.model.transformer, sliding_window=8 * 17)))
    engine = Engine(cfg, params, batch_slots=2, cache_chunks=cache_chunks, sampling=SAMPLING)
    state = filled_state(engine, engine.init_state(), chunks)
    pos = np.asarray(state.cache["pos"])
    tokens, size = chunks * engine.layout.slots_per_chunk, engine.cache_len
    held = np.sort(pos[0, 0][pos[0, 0] >= 0])
    np.testing.assert_array_equal(held, np.arange(max(0, tokens - size), tokens))
    assert np.all(pos[0, 0][pos[0, 0] >= 0] % size == np.flatnonzero(pos[0, 0] >= 0))
    assert (pos == pos[:1, :1]).all() and int(state.chunk_index[0]) == chunks


def test_flash_and_dense_decode_agree_inside_the_engine(setup):
    """The whole micro-turn (prefill, text and flow decode) with flash-decoding equals the dense cache read."""
    from interaction_jax.bench.stream import filled_state

    cfg, params = setup
    outs = {}
    for mode in ("flash", "dense"):
        c = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, transformer=dataclasses.replace(
            cfg.model.transformer, decode_attention=mode, decode_block=16)))
        engine = Engine(c, params, batch_slots=2, cache_chunks=9, sampling=Sampling())
        state = filled_state(engine, engine.init_state(), 5)
        audio, frames, text = inputs(1, 2, 4)
        _, outs[mode] = engine.step(state, audio[0], frames[0], np.ones(2, bool), text[0])
    np.testing.assert_allclose(outs["flash"]["text_logits"], outs["dense"]["text_logits"], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(outs["flash"]["mel"], outs["dense"]["mel"], atol=1e-4)


def test_stream_cost_model_counts_weights_once_per_call_and_cache_per_session(setup):
    from interaction_jax.bench.stream import micro_turn_cost

    cfg, params = setup
    one, two = micro_turn_cost(cfg, params, 1, 1000), micro_turn_cost(cfg, params, 2, 1000)
    assert one["weight_bytes"] == two["weight_bytes"] > 0  # weights are shared by the batch
    assert two["cache_bytes"] == 2 * one["cache_bytes"]
    longer = micro_turn_cost(cfg, params, 1, 2000)
    assert longer["cache_bytes"] == 2 * one["cache_bytes"] and longer["flops"] > one["flops"]
    t = cfg.model.transformer
    per_token = t.num_layers * (2 * t.num_kv_heads * t.head_dim * 4 + 4)
    assert one["cache_bytes"] == one["transformer_calls"] * per_token * 1000


def test_the_micro_turn_never_copies_the_kv_cache(setup):
    """Cost must follow the filled context, not the allocation: in the compiled micro-turn the stacked cache is
    only read in place and written by scatters. It used to be copied per layer (each scanned layer's
    ``[B, Hkv, C, D]`` slice) and selected whole against the old cache for idle rows (bench stream: 32
    sessions cost 2.9 ms more per allocated chunk, with 5 chunks filled)."""
    import re

    cfg, params = setup
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, transformer=dataclasses.replace(
        cfg.model.transformer, decode_attention="flash", decode_block=16)))  # tiles much smaller than the cache
    # (a tile is a copy; "auto" may also read a small (<= 4 MiB) layer whole, a bounded copy by design)
    engine = Engine(cfg, params, batch_slots=2, cache_chunks=13, sampling=SAMPLING)  # a cache length of its own
    state = engine.init_state()
    audio, frames, text = inputs(1, 2, 5)
    hlo = engine._step.lower(engine.params, state, audio[0], frames[0], np.ones(2, bool), text[0],
                             np.array([True, False])).compile().as_text()
    t = cfg.model.transformer
    stack = f"f32[{t.num_layers},2,{t.num_kv_heads},{engine.cache_len},{t.head_dim}]"
    layer = f"f32[2,{t.num_kv_heads},{engine.cache_len},{t.head_dim}]"
    made = []  # (shape, op, called computation) of every instruction
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%[\w.-]+ = (f32\[[\d,]*\])\{[\d,]*\} ([\w-]+)\(", line)
        if m:
            calls = re.search(r"calls=%([\w.-]+)", line)
            made.append((m.group(1), m.group(2), calls.group(1) if calls else "", line.strip()[:160]))
    assert any(shape == stack for shape, *_ in made)  # the parse sees the cache at all
    layer_copies = [text for shape, _, _, text in made if shape == layer]
    assert not layer_copies, layer_copies
    for shape, op, calls, text in made:
        if shape == stack:
            assert op in ("parameter", "get-tuple-element", "scatter", "bitcast") or (
                op == "fusion" and "scatter" in calls), text

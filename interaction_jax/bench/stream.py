"""bench stream: real-time factors of the streaming engine, its cost model against a measured roofline, and a
profile of one micro-turn.

Every figure is a ratio measured in this run (machines here differ 6x in peak and are noisy):
  * ``rtf_tiny``: tiny, 1 session, at a 40 s *filled* context (median step / 200 ms; goal <= 0.05);
  * ``rtf_tiny_batch_{B}`` and ``max_realtime_sessions_tiny``: the largest batch (of 8, 16, 24, 32, 48, 64)
    whose step stays <= 200 ms at a 20 s context (goal >= 32);
  * ``rtf_small``: small (~100M), 1 session, 10 s filled (goal <= 0.5);
  * ``kv_speedup_60s``: recomputing the 60 s prefix for one chunk / one cached step at 60 s (goal >= 50);
  * ``step_ms_ctx_{1,10,40}s_{flash,dense,auto}``: step time against filled context, flash-decoding, the dense
    cache read and the default switch between them (plotted to ``--plot``, default: the JSON path with
    ``.png``); the other figures use the config's default (``auto``);
  * the cost model: ``bytes_*`` / ``flops_*`` a micro-turn must move / compute, the measured
    ``mem_bandwidth_bytes_s`` and ``matmul_peak_flops``, and ``roofline_fraction_*`` = (bytes / bandwidth) /
    measured step time, at 1 session and at the largest real-time batch;
  * ``profile_{tiny,small}_*_ms``: dMel, prefill, one decode call (x calls), flow sampling, Griffin-Lim.
Every timed step is a whole micro-turn, Griffin-Lim included (rows advance; before session 12 the rows
were held idle, which skipped the vocoder). Weights are random: speed does not depend on them. The cache is
filled with keys at real positions, so flash-decoding reads exactly what a session of that age would make
it read.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from interaction_jax import model as model_lib
from interaction_jax.bench import timeit
from interaction_jax.config import Config, load_config
from interaction_jax.layout import Layout, SlotType
from interaction_jax.model import InteractionModel, Sampling
from interaction_jax.perf import measured_matmul_peak, measured_memory_bandwidth

CONTEXTS_S = (1, 10, 40)
MODES = ("flash", "dense", "auto")  # transformer.decode_attention


def _params(cfg: Config) -> Any:
    return nn.unbox(jax.jit(lambda: model_lib.init(jax.random.key(0), cfg))())


def filled_state(engine: Any, state: Any, chunks: int) -> Any:
    """``state`` as if every slot had streamed ``chunks`` chunks: cache slots 0..chunks*S-1 hold keys at
    those positions (random values; the cost does not depend on them)."""
    tokens = chunks * engine.layout.slots_per_chunk
    if tokens > engine.cache_len and not engine.config.model.transformer.sliding_window:
        raise ValueError(f"{chunks} chunks do not fit a {engine.cache_chunks}-chunk cache")
    cache = state.cache
    slots = jnp.arange(engine.cache_len)
    # the last `cache_len` positions, in slot p % C (a rolling cache that wrapped holds the newest ones)
    pos = jnp.where(slots < tokens, slots, -1) if tokens <= engine.cache_len else \
        tokens - engine.cache_len + (slots - tokens) % engine.cache_len
    key = jax.random.key(1)
    new = {
        "k": (0.1 * jax.random.normal(key, cache["k"].shape)).astype(cache["k"].dtype),
        "v": (0.1 * jax.random.normal(jax.random.fold_in(key, 1), cache["v"].shape)).astype(cache["v"].dtype),
        "pos": jnp.broadcast_to(pos.astype(jnp.int32), cache["pos"].shape),
    }
    new = jax.device_put(new, jax.tree.map(lambda x: x.sharding, cache))
    index = jax.device_put(jnp.full_like(state.chunk_index, chunks), state.chunk_index.sharding)
    return state.replace(cache=new, chunk_index=index)


def step_seconds(cfg: Config, params: Any, batch: int, *, filled_chunks: int, cache_chunks: int,
                 steps: int = 6) -> float:
    """Median wall time of one whole micro-turn (vocoder included) for ``batch`` sessions at ``filled_chunks``
    chunks of context. Every row advances (an idle row would skip Griffin-Lim), so the context grows by one
    chunk per timed step: ``cache_chunks`` must leave room for ``steps + 1`` more."""
    from interaction_jax.serve.engine import Engine

    engine = Engine(cfg, params, batch_slots=batch, cache_chunks=cache_chunks)
    state = filled_state(engine, engine.init_state(), filled_chunks)
    rng = np.random.default_rng(0)
    times = []
    for _ in range(steps + 1):
        audio = (0.05 * rng.standard_normal((batch, cfg.audio.chunk_samples))).astype(np.float32)
        state, out = engine.step(state, audio)
        times.append(out["step_s"])
    return float(np.median(times[1:]))


def recompute_seconds(cfg: Config, params: Any, chunks: int) -> float:
    """Time to recompute the teacher-forced forward over ``chunks`` chunks (what a cache-less server does)."""
    batch = jax.tree.map(jnp.asarray, model_lib.dummy_batch(cfg, 1, chunks))
    fwd = jax.jit(lambda p, b: InteractionModel.from_config(cfg).apply({"params": p}, b)["text_logits"])
    return timeit(lambda: jax.block_until_ready(fwd(params, batch)), repeats=3)


# ------------------------------------------------------------------------------------------ cost model


def micro_turn_cost(cfg: Config, params: Any, batch: int, filled_tokens: int) -> dict[str, float]:
    """Bytes a micro-turn must move and FLOPs it must do for ``batch`` sessions at ``filled_tokens`` of
    context: every transformer call reads all transformer weights once (shared by the batch) and each
    session's filled K/V; every flow-head evaluation reads the head's weights."""
    lay = Layout.from_config(cfg.audio, cfg.vision, cfg.text)
    t = cfg.model.transformer
    sampling = Sampling.from_config(cfg)
    calls = 1 + (lay.num_text_out - 1) + lay.num_audio  # prefill, then one call per decoded slot
    flow_evals = lay.num_audio * (sampling.flow_steps * (1 if sampling.cfg_scale == 1.0 else 2)
                                  if cfg.model.audio_out == "flow" else 1)  # regress / dmel_bins: one pass
    n_transformer = model_lib.count_params(params["transformer"])
    n_flow = model_lib.count_params(params[f"{cfg.model.audio_out}_head"])
    param_bytes = 4  # params are float32, cast at use
    cache_elem = jnp.dtype(t.cache_dtype or t.dtype).itemsize
    kv_per_token = t.num_layers * (2 * t.num_kv_heads * t.head_dim * cache_elem + 4)  # k, v and pos
    weight_bytes = param_bytes * (n_transformer * calls + n_flow * flow_evals)
    cache_bytes = batch * calls * kv_per_token * filled_tokens
    tokens = lay.slots_per_chunk * batch
    flops = (2 * n_transformer * tokens + 4 * t.num_layers * t.num_heads * t.head_dim * filled_tokens * tokens
             + 2 * n_flow * flow_evals * batch)
    return {"bytes": float(weight_bytes + cache_bytes), "weight_bytes": float(weight_bytes),
            "cache_bytes": float(cache_bytes), "flops": float(flops), "transformer_calls": float(calls)}


# ------------------------------------------------------------------------------------------ profile


def profile_micro_turn(cfg: Config, params: Any, batch: int, filled_chunks: int, cache_chunks: int
                       ) -> dict[str, float]:
    """Milliseconds of each part of a micro-turn, each part jitted and timed alone (so the parts' sum next to
    the whole step shows the fusion/dispatch overhead). Before session 12 the transformer parts were timed
    without donating the cache, so each included a copy of the whole cache (7.4 / 3.2 ms prefill / decode
    call, tiny at 40 s)."""
    from interaction_jax.audio import dmel
    from interaction_jax.serve.engine import Engine, vocode_rows

    engine = Engine(cfg, params, batch_slots=batch, cache_chunks=cache_chunks)
    state = filled_state(engine, engine.init_state(), filled_chunks)
    model, lay, sampling = engine.model, engine.layout, engine.sampling
    p = engine.params
    d = cfg.model.transformer.d_model
    base = filled_chunks * lay.slots_per_chunk
    n_pre = lay.offset(SlotType.TEXT_OUT) + 1  # the world slots and the first TEXT_OUT (decode_chunk)
    audio = jnp.asarray(np.random.default_rng(0).normal(0, 0.05, (batch, cfg.audio.chunk_samples)), jnp.float32)

    def transformer(n):
        """One transformer call on ``n`` new tokens, its cache donated and threaded through as in the step
        (without donation every timed call also copied the whole cache for its write)."""
        x = jnp.zeros((batch, n, d), jnp.float32)
        pos = jnp.broadcast_to(base + jnp.arange(n, dtype=jnp.int32), (batch, n))
        f = jax.jit(lambda p, x, pos, c: model.apply({"params": p}, x, pos, c,
                                                     method=InteractionModel.run_transformer)[:2],
                    donate_argnums=3)
        cache = [jax.tree.map(jnp.copy, state.cache)]

        def call():
            hidden, cache[0] = f(p, x, pos, cache[0])  # rewrites the same slots every time
            jax.block_until_ready(hidden)
        return call

    dmel_fn = jax.jit(lambda s, a: dmel.discretize(dmel.stream_step(s, a)[1]))
    cond = jnp.zeros((batch, d), jnp.float32)
    noise = jnp.zeros((batch, lay.mel_block), jnp.float32)
    flow_fn = jax.jit(lambda p, c, z: model.apply(
        {"params": p}, c, z, sampling.flow_steps, sampling.cfg_scale, sampling.flow_solver,
        method=lambda m, *a: m.audio_head.sample_with_noise(*a)))
    mel = jnp.zeros((batch, cfg.audio.frames_per_chunk, cfg.audio.n_mels), jnp.float32)
    voc_fn = jax.jit(lambda s, m: vocode_rows(s, m, cfg.audio)[1])
    parts = {
        "dmel": lambda: jax.block_until_ready(dmel_fn(state.dmel_state, audio)),
        "prefill": transformer(n_pre),
        "decode_call": transformer(1),
        "flow_sample": lambda: jax.block_until_ready(flow_fn(p, cond, noise)),
        "griffin_lim": lambda: jax.block_until_ready(voc_fn(state.vocoder_state, mel)),
    }
    ms = {f"{k}_ms": 1e3 * timeit(f, repeats=5) for k, f in parts.items()}
    calls = (lay.num_text_out - 1) + lay.num_audio
    ms["decode_calls"], ms["flow_samples"] = float(calls), float(lay.num_audio)
    ms["sum_of_parts_ms"] = (ms["dmel_ms"] + ms["prefill_ms"] + calls * ms["decode_call_ms"]
                             + lay.num_audio * ms["flow_sample_ms"] + ms["griffin_lim_ms"])
    ms["whole_step_ms"] = 1e3 * step_seconds(cfg, params, batch, filled_chunks=filled_chunks,
                                             cache_chunks=cache_chunks)
    return ms


# ------------------------------------------------------------------------------------------ the benchmark


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for mode, style in zip(MODES, ("o-", "s--", "^:"), strict=True):
        ax.plot(CONTEXTS_S, [results[f"step_ms_ctx_{c}s_{mode}"] for c in CONTEXTS_S], style, label=mode)
    ax.axhline(200, color="grey", lw=0.8, ls=":", label="real time (200 ms)")
    ax.set_xlabel("filled context (s)")
    ax.set_ylabel("micro-turn step (ms)")
    ax.set_title("tiny, 1 session, 40 s cache")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    tiny = load_config("configs/tiny.py", ["model.pad_multiple=1"])
    small = load_config("configs/small.py", ["model.pad_multiple=1"])
    results: dict[str, Any] = {}
    bandwidth, peak = measured_memory_bandwidth(), measured_matmul_peak()
    results["mem_bandwidth_bytes_s"], results["matmul_peak_flops"] = bandwidth, peak
    print(f"[bench stream] measured: memory bandwidth {bandwidth / 1e9:.1f} GB/s, matmul peak "
          f"{peak / 1e9:.0f} GFLOP/s", flush=True)
    p_tiny = _params(tiny)
    s = Layout.from_config(tiny.audio, tiny.vision, tiny.text).slots_per_chunk
    cache = tiny.model.max_chunks + 8  # 40 s sessions plus the steps the timing takes

    def decode_mode(mode: str) -> Config:
        return dataclasses.replace(tiny, model=dataclasses.replace(tiny.model, transformer=dataclasses.replace(
            tiny.model.transformer, decode_attention=mode)))

    for ctx in CONTEXTS_S:
        for mode in MODES:
            ms = 1e3 * step_seconds(decode_mode(mode), p_tiny, 1, filled_chunks=5 * ctx, cache_chunks=cache)
            results[f"step_ms_ctx_{ctx}s_{mode}"] = ms
        print(f"[bench stream] tiny, 1 session, {ctx:>2} s filled: " + ", ".join(
            f"{m} {results[f'step_ms_ctx_{ctx}s_{m}']:.1f} ms" for m in MODES), flush=True)
    step_1 = results[f"step_ms_ctx_40s_{tiny.model.transformer.decode_attention}"] / 1e3  # the default mode
    results["rtf_tiny"] = step_1 / 0.2
    cost_1 = micro_turn_cost(tiny, p_tiny, 1, 200 * s)
    results["bytes_tiny_1"], results["flops_tiny_1"] = cost_1["bytes"], cost_1["flops"]
    results["roofline_fraction_tiny_1"] = cost_1["bytes"] / bandwidth / step_1

    best, best_step = 0, None
    for b in (8, 16, 24, 32, 48, 64):
        step = step_seconds(tiny, p_tiny, b, filled_chunks=100, cache_chunks=108, steps=4)
        results[f"rtf_tiny_batch_{b}"] = step / 0.2
        print(f"[bench stream] tiny, {b} sessions at 20 s: step {step * 1e3:.0f} ms (rtf {step / 0.2:.2f})", flush=True)
        if step > 0.2:
            break
        best, best_step = b, step
    results["max_realtime_sessions_tiny"] = best
    if best:
        cost_b = micro_turn_cost(tiny, p_tiny, best, 100 * s)
        results[f"bytes_tiny_{best}"], results[f"flops_tiny_{best}"] = cost_b["bytes"], cost_b["flops"]
        results["roofline_fraction_tiny_best_batch"] = cost_b["bytes"] / bandwidth / best_step
        results["compute_fraction_tiny_best_batch"] = cost_b["flops"] / peak / best_step

    inc = step_seconds(tiny, p_tiny, 1, filled_chunks=300, cache_chunks=308)
    full = recompute_seconds(tiny, p_tiny, 301)
    results["kv_step_s_60s"], results["recompute_s_60s"], results["kv_speedup_60s"] = inc, full, full / inc
    print(f"[bench stream] 60 s context: cached step {inc * 1e3:.1f} ms vs recompute {full * 1e3:.1f} ms", flush=True)

    for name, cfg, params in (("tiny", tiny, p_tiny), ("small", small, None)):
        params = params if params is not None else _params(small)
        filled = 200 if name == "tiny" else 50
        prof = profile_micro_turn(cfg, params, 1, filled, filled + 8)
        results.update({f"profile_{name}_{k}": v for k, v in prof.items()})
        print(f"[bench stream] {name} micro-turn at {filled // 5} s filled: " + ", ".join(
            f"{k} {v:.1f}" for k, v in prof.items()), flush=True)
        if name == "small":
            step = prof["whole_step_ms"] / 1e3
            results["rtf_small"] = step / 0.2
            cost = micro_turn_cost(cfg, params, 1, filled * Layout.from_config(cfg.audio, cfg.vision,
                                                                               cfg.text).slots_per_chunk)
            results["bytes_small_1"], results["flops_small_1"] = cost["bytes"], cost["flops"]
            results["roofline_fraction_small_1"] = cost["bytes"] / bandwidth / step
    results["device_kind"] = jax.devices()[0].device_kind
    plot = getattr(args, "plot", None) or (str(Path(args.json).with_suffix(".png")) if args.json else None)
    if plot:
        _plot(results, Path(plot))
        results["plot"] = plot
        print(f"[bench stream] step time vs context -> {plot}", flush=True)
    return results


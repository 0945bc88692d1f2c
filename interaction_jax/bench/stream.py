"""bench stream: real-time factors of the streaming engine, batch scaling, and what the KV cache buys.

Keys: ``rtf_tiny`` / ``rtf_small`` (median step time / 200 ms, one session; goals <= 0.05 / <= 0.5),
``max_realtime_sessions_tiny`` (largest batch tried whose step stays under 200 ms; goal >= 32),
``rtf_tiny_batch_{B}`` for each batch tried, ``kv_speedup_60s`` (recomputing the full 60 s prefix for one
chunk / one incremental cached step at 60 s of context; goal >= 20). Weights are random: speed does not
depend on them.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from interaction_jax import model as model_lib
from interaction_jax.config import load_config
from interaction_jax.model import InteractionModel


def _params(cfg):
    return nn.unbox(jax.jit(lambda: model_lib.init(jax.random.key(0), cfg))())


def step_seconds(cfg, params, batch: int, steps: int = 6, cache_chunks: int = 320, start_chunk: int = 0) -> float:
    """Median wall time of one micro-turn for ``batch`` sessions at ``start_chunk`` chunks of context."""
    from interaction_jax.serve.engine import Engine

    engine = Engine(cfg, params, batch_slots=batch, cache_chunks=cache_chunks)
    state = engine.init_state()
    if start_chunk:
        state = state.replace(chunk_index=jnp.full((batch,), start_chunk, jnp.int32))
    rng = np.random.default_rng(0)
    times = []
    for _ in range(steps + 1):
        audio = (0.05 * rng.standard_normal((batch, cfg.audio.chunk_samples))).astype(np.float32)
        state, out = engine.step(state, audio)
        times.append(out["step_s"])
    return float(np.median(times[1:]))


def recompute_seconds(cfg, params, chunks: int) -> float:
    """Time to recompute the teacher-forced forward over ``chunks`` chunks (what a cache-less server does)."""
    batch = jax.tree.map(jnp.asarray, model_lib.dummy_batch(cfg, 1, chunks))
    fwd = jax.jit(lambda p, b: InteractionModel.from_config(cfg).apply({"params": p}, b)["text_logits"])
    jax.block_until_ready(fwd(params, batch))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(fwd(params, batch))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def run(args: argparse.Namespace) -> dict[str, Any]:
    tiny = load_config("configs/tiny.py", ["model.pad_multiple=1"])
    small = load_config("configs/small.py", ["model.pad_multiple=1"])
    results: dict[str, Any] = {}
    p_tiny = _params(tiny)
    results["rtf_tiny"] = step_seconds(tiny, p_tiny, 1) / 0.2
    print(f"[bench stream] tiny, 1 session: rtf {results['rtf_tiny']:.3f}", flush=True)
    best = 0
    for b in (8, 16, 32, 64):
        rtf = step_seconds(tiny, p_tiny, b, steps=4) / 0.2
        results[f"rtf_tiny_batch_{b}"] = rtf
        print(f"[bench stream] tiny, {b} sessions: rtf {rtf:.3f}", flush=True)
        if rtf < 1.0:
            best = b
        else:
            break
    results["max_realtime_sessions_tiny"] = best
    context = 300  # 60 s
    inc = step_seconds(tiny, p_tiny, 1, cache_chunks=context + 8, start_chunk=context)
    full = recompute_seconds(tiny, p_tiny, context + 1)
    results["kv_step_s_60s"] = inc
    results["recompute_s_60s"] = full
    results["kv_speedup_60s"] = full / inc
    print(f"[bench stream] 60 s context: cached step {inc * 1e3:.1f} ms vs recompute {full * 1e3:.1f} ms", flush=True)
    p_small = _params(small)
    results["rtf_small"] = step_seconds(small, p_small, 1, steps=4) / 0.2
    print(f"[bench stream] small, 1 session: rtf {results['rtf_small']:.3f}", flush=True)
    results["device_kind"] = jax.devices()[0].device_kind
    return results

"""bench train: training throughput and MFU against this machine's matmul peak, measured in the same run.

Keys: ``mfu`` (model FLOPs/s / (peak x devices)), ``peak_flops`` (per device; measured fp32 matmul peak on
CPU/GPU, datasheet on TPU), ``peak_source``, ``tokens_per_s``, ``step_s``, ``flops_per_step``,
``attention_backend``, ``config``, ``batch``. Model FLOPs follow ``interaction_jax/flops.py``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import jax

from interaction_jax import flops, perf, sharding
from interaction_jax.config import load_config
from interaction_jax.layers import resolve_backend
from interaction_jax.model import dummy_batch


def run(args: argparse.Namespace) -> dict[str, Any]:
    from interaction_jax.train import Trainer

    cfg = load_config(getattr(args, "config", None) or "configs/tiny.py", getattr(args, "set", []) or [])
    steps = int(getattr(args, "steps", 0) or 5)
    mesh = sharding.make_mesh(cfg.mesh)
    trainer = Trainer(cfg, mesh)
    state = trainer.init_state()
    batch = trainer.device_batch(dummy_batch(cfg, cfg.data.batch_size, cfg.data.window_chunks))
    print(f"[bench train] {cfg.name}: compiling...", flush=True)
    with trainer.activate():
        for _ in range(2):
            state, metrics = trainer.step_fn(state, batch)
        jax.block_until_ready(metrics)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            state, metrics = trainer.step_fn(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
    times.sort()
    step_s = times[len(times) // 2]
    peak, source = perf.peak_flops_per_device(cfg.model.transformer.dtype)
    rep = flops.report(cfg)
    tokens = flops.tokens_per_step(cfg)
    flops_per_step = rep["flops_per_token"] * tokens
    t = cfg.model.transformer
    return {
        "config": cfg.name,
        "batch": f"{cfg.data.batch_size}x{rep['seq_len']} tokens",
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "attention_backend": resolve_backend(t.attention_backend, rep["seq_len"], rep["seq_len"], t.dtype),
        "step_s": step_s,
        "tokens_per_s": tokens / step_s,
        "flops_per_step": flops_per_step,
        "peak_flops": peak,
        "peak_source": source,
        "mfu": flops_per_step / step_s / (peak * jax.device_count()),
    }

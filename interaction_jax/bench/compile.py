"""bench compile: scan keeps compile time flat in depth; plus the tiny config's forward+backward time.

Keys: ``compile_s_4``, ``compile_s_32`` (seconds to lower+compile the train gradient at 4 and 32 layers),
``ratio`` (= compile_s_32 / compile_s_4; goal <= 1.5), ``fwd_bwd_s`` (median step of the base config),
``unrolled_compile_s_8`` and ``unrolled_ratio_8_vs_scan`` (what scan saves at only 8 layers).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import jax
import jax.numpy as jnp

from interaction_jax import model as model_lib
from interaction_jax.bench import timeit
from interaction_jax.config import load_config


def _grad_fn(cfg):
    def fn(params, batch):
        return jax.value_and_grad(lambda p: model_lib.loss_fn(p, batch, jax.random.key(0), config=cfg)[0])(params)

    return fn


def compile_seconds(cfg, batch_size: int = 2, num_chunks: int = 8) -> float:
    params = jax.eval_shape(lambda: model_lib.init(jax.random.key(0), cfg))
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    from flax import linen as nn

    params = nn.unbox(params)
    batch = model_lib.batch_spec(cfg, batch_size, num_chunks)
    start = time.perf_counter()
    jax.jit(_grad_fn(cfg)).lower(params, batch).compile()
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict[str, Any]:
    base = load_config(getattr(args, "config", None) or "configs/tiny.py")
    results: dict[str, Any] = {"config": base.name}
    for layers in (4, 32):
        cfg = model_lib.replace_transformer(base, num_layers=layers, scan_layers=True)
        results[f"compile_s_{layers}"] = compile_seconds(cfg)
        print(f"[bench compile] {layers} layers (scan): {results[f'compile_s_{layers}']:.2f} s", flush=True)
    results["ratio"] = results["compile_s_32"] / results["compile_s_4"]
    unrolled = model_lib.replace_transformer(base, num_layers=8, scan_layers=False)
    results["unrolled_compile_s_8"] = compile_seconds(unrolled)
    results["unrolled_ratio_8_vs_scan"] = results["unrolled_compile_s_8"] / results["compile_s_4"]

    from flax import linen as nn

    params = nn.unbox(model_lib.init(jax.random.key(0), base))
    batch = jax.tree.map(jnp.asarray, model_lib.dummy_batch(base, base.data.batch_size, base.data.window_chunks))
    step = jax.jit(_grad_fn(base))
    results["fwd_bwd_s"] = timeit(lambda: jax.block_until_ready(step(params, batch)), warmup=1, repeats=3)
    results["fwd_bwd_batch"] = f"{base.data.batch_size}x{base.data.window_chunks} chunks"
    return results

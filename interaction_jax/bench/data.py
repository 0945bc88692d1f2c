"""bench data: can the input pipeline feed the trainer? Windows/s from shards and on the fly vs consumption.

Keys: ``shard_windows_per_s``, ``synthetic_windows_per_s`` (pipeline rates, in-process, after warm-up),
``train_windows_per_s`` (the tiny train step's consumption: batch / step time, measured in the same run),
``ratio`` (slower pipeline rate / consumption; goal >= 5), ``num_workers``.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

from interaction_jax.config import load_config


def _rate(iterator, batches: int, batch_size: int) -> float:
    next(iterator)  # warm-up (first episode generation, jit of the analysis)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from interaction_jax.bench import train as train_bench
    from interaction_jax.data import pipeline, synthetic
    from interaction_jax.data.episode import write_shard

    cfg = load_config(getattr(args, "config", None) or "configs/tiny.py")
    workers = int(getattr(args, "workers", 0) or 0)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_workers=workers))
    batches = 4
    results: dict[str, Any] = {"config": cfg.name, "num_workers": workers, "batch_size": cfg.data.batch_size}
    print("[bench data] on-the-fly synthetic episodes...", flush=True)
    results["synthetic_windows_per_s"] = _rate(pipeline.make_iterator(cfg), batches, cfg.data.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        n = (batches + 1) * cfg.data.batch_size
        eps = [synthetic.generate(cfg.data.tasks[i % len(cfg.data.tasks)], 10_000 + i) for i in range(n)]
        write_shard(Path(tmp) / "bench-00000.array_record", eps)
        shard_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, shards=f"{tmp}/*.array_record"))
        print("[bench data] ArrayRecord shards...", flush=True)
        results["shard_windows_per_s"] = _rate(pipeline.make_iterator(shard_cfg), batches, cfg.data.batch_size)
    print("[bench data] train-step consumption...", flush=True)
    train = train_bench.run(argparse.Namespace(config=getattr(args, "config", None), steps=3, set=[]))
    results["train_windows_per_s"] = cfg.data.batch_size / train["step_s"]
    slower = min(results["synthetic_windows_per_s"], results["shard_windows_per_s"])
    results["ratio"] = slower / results["train_windows_per_s"]
    return results

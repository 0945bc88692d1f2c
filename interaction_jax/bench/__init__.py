"""Benchmarks: ``python -m interaction_jax bench NAME [--json PATH]``.

Each benchmark is a module in this package with ``run(args) -> dict`` returning flat ``{key: number|str}``
results. Results are ratios measured in the same run on the same machine (speed-ups, MFU against a peak
measured now, real-time factors), because absolute seconds on shared machines are noise.
``report`` prints a markdown table and writes the JSON, so every benchmark follows one convention.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

NAMES = ("dmel", "compile", "train", "data", "stream")


def environment() -> dict[str, Any]:
    """Machine facts stored beside every result so figures are never quoted without their context."""
    import jax

    dev = jax.devices()[0]
    return {
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "jax_version": jax.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def markdown_table(results: dict[str, Any]) -> str:
    lines = ["| key | value |", "|---|---|"]
    for key, value in results.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        lines.append(f"| {key} | {value} |")
    return "\n".join(lines)


def report(name: str, results: dict[str, Any], json_path: str | None) -> dict[str, Any]:
    payload = {"benchmark": name, "results": results, "environment": environment()}
    print(f"\n## bench {name}\n")
    print(markdown_table(results))
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        flat = dict(results)
        flat["benchmark"] = name
        flat["environment"] = payload["environment"]
        path.write_text(json.dumps(flat, indent=2) + "\n")
        print(f"\nwrote {path}")
    return results


def timeit(fn, *, warmup: int = 1, repeats: int = 5) -> float:
    """Median wall time of ``fn()`` in seconds; ``fn`` must block until its work is done."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]

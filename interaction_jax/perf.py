"""Peak FLOP/s for MFU: measured matmul peak on CPU/GPU (in the same run), datasheet table on TPU."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

# bf16 dense peak per chip, FLOP/s (public datasheets). MFU on TPU is quoted against these.
TPU_PEAK_FLOPS = {
    "v4": 275e12,
    "v5e": 197e12,
    "v5 lite": 197e12,
    "v5p": 459e12,
    "v6e": 918e12,
    "v6 lite": 918e12,
}
# bytes of HBM per chip as libtpu reports it available to programs.
TPU_HBM_BYTES = {"v5e": int(15.75 * 2**30), "v6e": int(31.25 * 2**30), "v5p": int(95.74 * 2**30)}


def tpu_generation(device_kind: str) -> str | None:
    kind = device_kind.lower()
    for name in sorted(TPU_PEAK_FLOPS, key=len, reverse=True):
        if name in kind:
            return name
    return None


@functools.lru_cache(maxsize=8)
def measured_matmul_peak(n: int = 1024, dtype: str = "float32", repeats: int = 5) -> float:
    """FLOP/s of a chain of n x n matmuls on device 0, best of ``repeats``: this machine's practical peak.

    Several matmuls run inside one jit so dispatch overhead does not hide the arithmetic rate.
    """
    chain = 8
    dev = jax.local_devices()[0]  # in multi-process runs devices()[0] may belong to another process
    a = jax.device_put(jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype)) / n**0.5, dev)

    @jax.jit
    def f(x, w):
        for _ in range(chain):
            x = x @ w
        return x

    x = f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        x = f(x, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * chain / best


@functools.lru_cache(maxsize=4)
def measured_memory_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes/s that a reduction streams from memory on device 0, best of ``repeats`` (the roofline a decode
    step, which reads weights and cache once, is measured against). Larger than any CPU cache."""
    dev = jax.local_devices()[0]
    x = jax.device_put(jnp.ones((megabytes * 2**20 // 4,), jnp.float32), dev)
    total = jax.jit(jnp.sum)
    total(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        total(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return x.nbytes / best


def peak_flops_per_device(dtype: str = "float32") -> tuple[float, str]:
    """(peak FLOP/s of one device, where the figure comes from)."""
    dev = jax.local_devices()[0]
    if dev.platform == "tpu":
        gen = tpu_generation(dev.device_kind)
        if gen:
            return TPU_PEAK_FLOPS[gen], f"datasheet {gen} bf16"
    return measured_matmul_peak(dtype=dtype), f"measured {dtype} matmul on {dev.device_kind}"

"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere."""

import os

# 8 simulated devices for sharding tests; LLVM opt level 0 because the suite is compile-bound (XLA:CPU spends
# seconds per small program) and the level changes code generation speed, not the math.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def devices():
    devs = jax.devices()
    assert len(devs) == 8, f"expected 8 simulated CPU devices, got {len(devs)}; XLA_FLAGS set too late?"
    return devs

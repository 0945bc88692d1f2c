"""Shared tiny configs for the layer tests (the parent conftest already forces 8 CPU devices)."""

import dataclasses
import functools

import jax
import pytest

from interaction_jax.config import MoeConfig, TransformerConfig


def tiny_config(**changes) -> TransformerConfig:
    moe = changes.pop("moe", None)
    base = TransformerConfig(
        d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=48, attention_backend="dot"
    )
    if moe is not None:
        base = dataclasses.replace(base, moe=moe if isinstance(moe, MoeConfig) else MoeConfig(**moe))
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="session")
def make_cfg():
    return tiny_config


def random_params(module, *args, seed: int = 0, scale: float = 0.3):
    """Params with the module's tree/shapes but filled from numpy (no jitted init to compile: tests stay fast).

    Norm scales are drawn around 1, everything else around 0 with a std of ``scale / sqrt(fan_in)``.
    """
    import flax.linen as nn
    import numpy as np

    shapes = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), *args))["params"]
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            return (1.0 + 0.1 * rng.normal(size=leaf.shape)).astype(np.float32)
        fan_in = leaf.shape[-2] if len(leaf.shape) >= 2 else 1
        return (scale / np.sqrt(fan_in) * rng.normal(size=leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="session")
def make_params():
    return random_params


# The layer tests are compile-bound (XLA:CPU spends seconds per tiny grad program); LLVM opt level 0 halves
# that and leaves the math unchanged.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@pytest.fixture(scope="session")
def fast_jit():
    return functools.partial(jax.jit, compiler_options=FAST_COMPILE)

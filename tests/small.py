"""The one small model the training and serving tests share: the tiny config's code paths, shrunk to compile
and run in seconds. Tests add only what they vary (layers, window, cache length)."""

SMALL_MODEL = (
    "model.transformer.d_model=64", "model.transformer.num_heads=2", "model.transformer.num_kv_heads=1",
    "model.transformer.head_dim=32", "model.transformer.mlp_dim=128",
    "model.flow_head.width=64", "model.flow_head.depth=1", "model.pad_multiple=1",
)


def small_overrides(num_layers: int = 2, *extra: str) -> list[str]:
    """``--set`` overrides for ``configs/tiny.py``: the small model with ``num_layers`` plus ``extra``."""
    return [*SMALL_MODEL, f"model.transformer.num_layers={num_layers}", *extra]

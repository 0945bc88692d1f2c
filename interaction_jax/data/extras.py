"""Optional dependencies (the speech, asr and beam extras): import them with one clear message if missing."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """``import module``, or raise MissingExtra saying ``pip install 'interaction_jax[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtra(f"{what} needs {module.split('.')[0]}: pip install 'interaction_jax[{extra}]' "
                           f"({e})") from e

"""Thin orbax wrapper: async composite checkpoints (train state + grain iterator), restore onto any mesh.

Each step directory holds ``state`` (orbax standard, sharded arrays) and ``data`` (the grain iterator
state). The run's resolved config is written once as ``config.json`` next to the steps, so a restore can
say *which* setting differs instead of failing deep inside orbax with a shape error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from interaction_jax.config import Config, ConfigError, dumps, flatten, from_dict
from interaction_jax.paths import as_path, is_remote


class CheckpointError(RuntimeError):
    """Missing, corrupt or incompatible checkpoint; the message says which and what to do."""


def _manager(directory: str | Path, keep: int = 3, async_save: bool = True) -> ocp.CheckpointManager:
    import grain

    directory = str(directory)
    if not is_remote(directory):
        directory = str(Path(directory).absolute())
    return ocp.CheckpointManager(
        directory,
        item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()},
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True),
    )


class Checkpointer:
    """Save/restore ``(state, data_iterator)`` pairs under ``directory`` (local path or ``gs://``)."""

    def __init__(self, directory: str | Path, *, keep: int = 3, async_save: bool = True):
        self.directory = str(directory)
        self.manager = _manager(directory, keep, async_save)

    def write_config(self, config: Config) -> None:
        if jax.process_index() == 0:
            target = as_path(self.directory)
            target.mkdir(parents=True, exist_ok=True)
            (target / "config.json").write_text(dumps(config) + "\n")

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iterator: Any = None, *, force: bool = False) -> bool:
        import grain

        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def restore(self, abstract_state: Any, data_iterator: Any = None, step: int | None = None) -> tuple[int, Any]:
        """Restore onto the shardings carried by ``abstract_state`` (ShapeDtypeStructs); returns (step, state)."""
        import grain

        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint found in {self.directory} (missing or empty directory)")
        self._check_shapes(step, abstract_state)
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # orbax raises many types for unreadable files
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} is corrupt or unreadable "
                f"({type(e).__name__}: {str(e)[:300]}); delete that step directory to fall back to an older one"
            ) from e
        return step, restored["state"]

    def _check_shapes(self, step: int, abstract_state: Any) -> None:
        try:
            meta = self.manager.item_metadata(step)["state"]
        except Exception as e:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} is corrupt: its metadata cannot be read "
                f"({type(e).__name__}: {str(e)[:200]})"
            ) from e
        if meta is None:
            raise CheckpointError(f"checkpoint step {step} in {self.directory} is corrupt: no state metadata")
        want = _shapes(abstract_state)
        have = _shapes(meta)
        missing = sorted(set(want) - set(have))
        extra = sorted(set(have) - set(want))
        differ = sorted(k for k in set(want) & set(have) if want[k] != have[k])
        if missing or extra or differ:
            lines = [f"checkpoint step {step} in {self.directory} does not match the current model:"]
            lines += [f"  shape {k}: checkpoint {have[k]} vs model {want[k]}" for k in differ[:8]]
            lines += [f"  missing in checkpoint: {k}" for k in missing[:8]]
            lines += [f"  unexpected in checkpoint: {k}" for k in extra[:8]]
            lines.append(self.config_diff_hint())
            raise CheckpointError("\n".join(lines))

    def config_diff_hint(self) -> str:
        path = as_path(self.directory) / "config.json"
        return (f"  (the run's config is in {path}; compare it with yours, e.g. "
                f"`python -m interaction_jax config --config ...`)") if path.exists() else ""


def _path_name(path: tuple) -> str:
    """``opt_state/1/0/mu/dmel_table``: the same for attribute, dict and index keys, so a restored metadata
    tree (plain dicts/lists) and the live state (dataclasses, namedtuples) compare by name."""
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {_path_name(path): tuple(getattr(leaf, "shape", np.shape(leaf))) for path, leaf in flat}


def load_run_config(directory: str | Path) -> Config:
    """The config a checkpoint directory was trained with (``config.json`` beside the steps)."""
    path = as_path(directory) / "config.json"
    if not path.exists():
        raise CheckpointError(f"{directory} has no config.json: is it a training workdir's checkpoint folder?")
    try:
        return from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, ConfigError, TypeError) as e:
        raise CheckpointError(f"{path} is not a valid interaction_jax config: {e}") from e


def config_differences(a: Config, b: Config, prefix: str = "model.") -> list[str]:
    fa, fb = flatten(a), flatten(b)
    return [f"{k}: {fa[k]} vs {fb[k]}" for k in fa if k.startswith(prefix) and fa[k] != fb.get(k)]


# ------------------------------------------------------------------------------------------ exported models

EXPORT_FILE = "params.npz"


def export_params(params: Any, config: Config, out_dir: str | Path, dtype: str = "float16") -> Path:
    """Write ``params.npz`` (one array per parameter path, ``dtype``) and ``config.json`` to ``out_dir``.

    The export is what a user needs to run a model, without optimizer state or orbax: a 7M-parameter tiny
    model is 14 MB in float16 instead of ~85 MB for the full train state. ``load_exported`` reads it back
    (as float32), and ``stream`` / ``eval`` / ``serve --checkpoint`` accept the folder.
    """
    if dtype not in ("float16", "float32"):
        raise CheckpointError(f"export dtype must be float16 or float32, got {dtype!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    flat = {"/".join(_key_name(k) for k in path): np.asarray(v).astype(dtype)
            for path, v in jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]}
    np.savez(out / EXPORT_FILE, **flat)
    (out / "config.json").write_text(dumps(config) + "\n")
    return out / EXPORT_FILE


def _key_name(key: Any) -> str:
    return str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))


def load_exported(directory: str | Path) -> tuple[Config, Any]:
    """``(config, float32 params)`` of an ``export_params`` folder."""
    directory = Path(directory)
    config = load_run_config(directory)
    try:
        with np.load(directory / EXPORT_FILE) as data:
            flat = {k: data[k].astype(np.float32) for k in data.files}
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{directory / EXPORT_FILE}: not a readable params export ({e})") from None
    params: dict[str, Any] = {}
    for name, value in flat.items():
        node = params
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return config, params

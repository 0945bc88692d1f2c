"""Local or remote (``gs://``) paths for workdirs, checkpoints and data shards, through ``etils.epath``.

Why: ``pathlib.Path("gs://bucket/run")`` silently becomes the *local* directory ``gs:/bucket/run``. Every
user-supplied location goes through :func:`as_path` instead, which keeps the scheme (GCS needs ``gcsfs``,
installed by the ``[tpu]`` extra). Appending to objects is not possible on GCS, so files that grow during a
run (``metrics.jsonl``, TensorBoard events) are written to a local staging directory and copied to the
remote workdir by :class:`Mirror` at every checkpoint and at exit.
"""

from __future__ import annotations

import glob as _glob
import os
import shutil
import tempfile
from pathlib import Path

from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def as_path(path: str | os.PathLike) -> epath.Path:
    """A path object that keeps ``gs://`` (``epath``); local paths behave like ``pathlib.Path``."""
    return epath.Path(path)


def glob(pattern: str) -> list[str]:
    """Sorted matches of a glob; remote patterns glob their parent directory with ``epath``."""
    if not is_remote(pattern):
        return sorted(_glob.glob(pattern))
    parent, _, name = pattern.rpartition("/")
    return sorted(str(p) for p in as_path(parent).glob(name))


class Mirror:
    """A local directory whose files are copied to ``remote`` on :meth:`sync` (a no-op for local workdirs).

    ``local`` is the workdir itself when it is local; otherwise a fresh staging directory, seeded with the
    remote's existing files of ``seed_names`` so a resumed run appends to its own history.
    """

    def __init__(self, workdir: str | os.PathLike, seed_names: tuple[str, ...] = ("metrics.jsonl",),
                 remote: bool | None = None):
        self.remote = as_path(workdir) if (is_remote(workdir) if remote is None else remote) else None
        if self.remote is None:
            self.local = Path(str(workdir))
            self.local.mkdir(parents=True, exist_ok=True)
            return
        self.local = Path(tempfile.mkdtemp(prefix="interaction_jax-staging-"))
        for name in seed_names:
            src = self.remote / name
            if src.exists():
                (self.local / name).write_bytes(src.read_bytes())

    def sync(self) -> None:
        if self.remote is None:
            return
        for path in sorted(self.local.rglob("*")):
            if path.is_file():
                dst = self.remote / str(path.relative_to(self.local))
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(path.read_bytes())

    def close(self) -> None:
        self.sync()
        if self.remote is not None:
            shutil.rmtree(self.local, ignore_errors=True)

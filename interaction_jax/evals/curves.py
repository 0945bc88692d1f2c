"""Loss curves from a run's ``metrics.jsonl``: the PNG an experiment README shows, and a tested reader.

    python -m interaction_jax curves runs/001 --out experiments/001_tiny_all_tasks/loss_curve.png
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from interaction_jax.paths import as_path

PANELS = (
    ("loss", "total loss"),
    ("text_loss", "text-out cross-entropy"),
    ("flow_loss", "flow-matching loss (CFM)"),
    ("text_out_acc_word", "text-out accuracy on word tokens"),
)


class MetricsError(ValueError):
    """The metrics file is missing, corrupt or empty."""


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of ``metrics.jsonl`` (a run dir or the file), sorted by step; the last row wins for a repeated
    step (a resumed run re-logs from its checkpoint)."""
    path = as_path(path)  # local or gs://
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.exists():
        raise MetricsError(f"no metrics file at {path} (train writes WORKDIR/metrics.jsonl)")
    rows: dict[int, dict[str, Any]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise MetricsError(f"{path}:{n}: not a JSON line ({e.msg})") from e
        if "step" in row:
            rows[int(row["step"])] = row
    if not rows:
        raise MetricsError(f"{path} holds no logged steps")
    return [rows[s] for s in sorted(rows)]


def plot(rows: list[dict[str, Any]], out: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.2))
    steps = [r["step"] for r in rows]
    for ax, (key, label) in zip(axes, PANELS, strict=True):
        ax.plot(steps, [r.get(key, float("nan")) for r in rows])
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

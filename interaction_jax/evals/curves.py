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
    step (a resumed run re-logs from its checkpoint). The final evaluation (``eval/results.json`` beside
    the file) joins the last step, so score curves end where training ended."""
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
        if "step" in row:  # eval rows share the step of a train row: merge them
            rows.setdefault(int(row["step"]), {}).update(row)
    if not rows:
        raise MetricsError(f"{path} holds no logged steps")
    last = rows[max(rows)]
    final = path.parent / "eval" / "results.json"  # the evaluation `train` runs after its last step
    if final.exists() and not any(k.startswith("eval/") for k in last):
        try:
            results = json.loads(final.read_text())
        except json.JSONDecodeError as e:
            raise MetricsError(f"{final}: not JSON ({e.msg})") from e
        last.update({f"eval/{task}/{k}": v for task, m in results.items() if isinstance(m, dict)
                     for k, v in m.items()})
    return [rows[s] for s in sorted(rows)]


def task_series(rows: list[dict[str, Any]], prefix: str) -> dict[str, tuple[list[int], list[float]]]:
    """``{"eval/repeat/content": (steps, values), ...}`` for the keys of ``prefix`` (eval or tf)."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for r in rows:
        for k, v in r.items():
            if k.startswith(prefix + "/") and isinstance(v, int | float):
                steps, vals = out.setdefault(k, ([], []))
                steps.append(int(r["step"]))
                vals.append(float("nan") if v is None else float(v))
    return out


def plot(rows: list[dict[str, Any]], out: str | Path, title: str = "") -> Path:
    """Loss panels, plus (when the run logged periodic evals) free-running task scores and teacher-forced
    word accuracy per task over training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from interaction_jax.data.synthetic.scoring import HEADLINE

    train_rows = [r for r in rows if "loss" in r]
    free = {k: v for k, v in task_series(rows, "eval").items() if k.split("/")[-1] == HEADLINE.get(k.split("/")[1])}
    voice = {k: v for k, v in task_series(rows, "eval").items() if k.endswith("/voice_match")}
    forced = {k: v for k, v in task_series(rows, "tf").items() if k.endswith("/word_acc")}
    panels = len(PANELS) + bool(free) + bool(voice) + bool(forced)
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.2))
    steps = [r["step"] for r in train_rows]
    for ax, (key, label) in zip(axes, PANELS, strict=False):
        ax.plot(steps, [r.get(key, float("nan")) for r in train_rows])
        ax.set_title(label, fontsize=9)
    extra = [("free-running task score (held out)", free), ("voice says what its text says (voice_match)", voice),
             ("teacher-forced word accuracy per task", forced)]
    for ax, (label, series) in zip(axes[len(PANELS):], [e for e in extra if e[1]], strict=True):
        for key, (s, v) in sorted(series.items()):
            ax.plot(s, v, marker="o", ms=3, label=f"{key.split('/')[1]} {key.split('/')[2]}")
        ax.set_ylim(-0.05, 1.05)
        ax.legend(fontsize=7)
        ax.set_title(label, fontsize=9)
    for ax in axes:
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

"""Tables and plots of experiment 003 from the runs of run_all.sh.

    python experiments/003_frontends/summarize.py runs/003 [--spectrogram]
    python experiments/003_frontends/summarize.py experiments/003_frontends/runs   # from the committed copies
    python experiments/003_frontends/summarize.py runs/003_copy --round copy_600   # round 2 (its own folder)

Writes results.md / results.json (mean and spread over seeds of every metric, per variant), curves_*.png
(training curves of each question's variants side by side) and, with --spectrogram, spectrogram.png (the
audio-out variants' free-running mel on one held-out repeat episode, against its target).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
QUESTIONS = {
    "audio_in": ["audio_dmel_flow", "audio_in_mel_linear", "audio_in_wave_linear"],
    "video_in": ["video_hmlp", "video_linear"],
    "audio_out": ["audio_dmel_flow", "audio_out_regress", "audio_out_dmel_bins"],
}
# the metrics each question is read on (task/metric; tf/ = teacher-forced)
COLUMNS = {
    "audio_in": ["repeat/digit_acc", "repeat/latency_s", "interrupt/yield_rate", "tf/repeat/word_acc",
                 "tf/repeat/word_acc_pos0", "tf/repeat/word_acc_pos1", "tf/interrupt/epad_acc",
                 "tf/interrupt/word_acc"],
    "video_in": ["cuespeak/on_time", "repcount/obo", "repcount/mae", "tf/cuespeak/epad_acc",
                 "tf/cuespeak/word_acc", "tf/repcount/epad_acc", "tf/repcount/word_acc"],
    "audio_out": ["repeat/digit_acc", "repeat/voice_match", "timespeak/voice_match", "interrupt/voice_match",
                  "tf/repeat/mel_l1_voiced", "tf/repeat/mel_l1_silent", "tf/timespeak/mel_l1_voiced",
                  "tf/repeat/word_acc"],
}

# Round 2 (copy_600/: 600 steps at 1e-3 with the heard auxiliaries, where repeat's copy forms): audio in only,
# read also on whole-reply content and on the stop (teacher-forced), which round 1 never reached.
ROUNDS = {
    "": (QUESTIONS, COLUMNS),
    "copy_600": ({"audio_in": ["dmel", "mel_linear", "wave_linear"]},
                 {"audio_in": ["repeat/content", "repeat/digit_acc", "repeat/latency_s", "interrupt/yield_rate",
                               "tf/repeat/word_acc", "tf/repeat/stop_acc", "tf/repeat/word_acc_pos3",
                               "tf/interrupt/epad_acc", "train/heard_text_acc_last50"]}),
}


def load_run(path: Path) -> dict[str, float]:
    """Flat metrics of one run: final free-running eval, teacher-forced eval, wall time and last train logs."""
    out: dict[str, float] = {}
    final = path / "eval" / "results.json"  # a training workdir; the copies in runs/ keep it at the top
    for task, m in json.loads((final if final.exists() else path / "results.json").read_text()).items():
        out.update({f"{task}/{k}": (np.nan if v is None else float(v)) for k, v in m.items()})
    for task, m in json.loads((path / "tf.json").read_text()).items():
        out.update({f"tf/{task}/{k}": (np.nan if v is None else float(v)) for k, v in m.items()})
    wall = path / "wall.json"
    if wall.exists():
        out.update({k: float(v) for k, v in json.loads(wall.read_text()).items()})
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r]
    out["median_step_time_s"] = float(np.median([r["step_time_s"] for r in train[1:]]))
    last = [r for r in train if r["step"] > train[-1]["step"] - 50]
    out["train/text_ce_word_last50"] = float(np.mean([r["text_ce_word"] for r in last]))
    if "heard_text_acc" in last[-1]:
        out["train/heard_text_acc_last50"] = float(np.mean([r["heard_text_acc"] for r in last]))
    return out


def accounting(name: str, folder: Path = HERE) -> dict[str, float]:
    from interaction_jax import flops
    from interaction_jax.config import load_config

    rep = flops.report(load_config(folder / f"{name}.py"))
    return {"params": rep["total"], "flops_per_token": rep["flops_per_token"]}


def summarize(runs: Path, questions: dict[str, list[str]] = QUESTIONS, folder: Path = HERE
              ) -> dict[str, dict[str, dict[str, float]]]:
    """``{variant: {metric: {"mean", "spread", "n"}}}``; spread = (max - min) / 2 over seeds."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    names = sorted({n for q in questions.values() for n in q})
    for name in names:
        seeds = sorted(p for p in runs.glob(f"{name}_s*") if (p / "tf.json").exists())
        if not seeds:
            continue
        per = [load_run(p) for p in seeds]
        keys = sorted(set().union(*per))
        stats = {}
        for k in keys:
            vals = np.array([r.get(k, np.nan) for r in per], float)
            vals = vals[np.isfinite(vals)]
            if vals.size:
                stats[k] = {"mean": float(vals.mean()), "spread": float((vals.max() - vals.min()) / 2),
                            "n": float(vals.size)}
        stats.update({k: {"mean": float(v), "spread": 0.0, "n": 1.0} for k, v in accounting(name, folder).items()})
        out[name] = stats
    return out


def _cell(stats: dict[str, dict[str, float]], key: str) -> str:
    if key not in stats:
        return "—"
    s = stats[key]
    return f"{s['mean']:.2f} ± {s['spread']:.2f}" if s["n"] > 1 else f"{s['mean']:.2f}"


def markdown(summary: dict[str, dict[str, dict[str, float]]], questions: dict[str, list[str]] = QUESTIONS,
             columns: dict[str, list[str]] = COLUMNS) -> str:
    lines = []
    for question, names in questions.items():
        cols = columns[question]
        lines += [f"### {question}", "",
                  "| variant | seeds | params | GFLOPs/token | s/step | min (train+eval) | " + " | ".join(cols) + " |",
                  "|---|---:|---:|---:|---:|---:|" + "---:|" * len(cols)]
        for name in names:
            if name not in summary:
                lines.append(f"| {name} | 0 | (not run) |")
                continue
            st = summary[name]
            seeds = int(max(v["n"] for v in st.values()))
            wall = st.get("total_wall_s", {"mean": np.nan})["mean"] / 60
            lines.append(f"| {name} | {seeds} | {st['params']['mean'] / 1e6:.2f}M | "
                         f"{st['flops_per_token']['mean'] / 1e9:.3f} | {st['median_step_time_s']['mean']:.2f} | "
                         f"{wall:.1f} | "
                         + " | ".join(_cell(st, c) for c in cols) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_curves(runs: Path, question: str, out: Path, questions: dict[str, list[str]] = QUESTIONS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("text_ce_word", "train: word cross-entropy"), ("text_out_acc_word", "train: word accuracy"),
              ("text_ce_epad", "train: EPAD cross-entropy"), ("flow_loss", "train: audio-out head loss (own units)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(questions[question]):
        for run in sorted(runs.glob(f"{name}_s*")):
            rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
            rows = [r for r in rows if "loss" in r]
            steps = np.array([r["step"] for r in rows])
            style = "-" if run.name.endswith("_s0") else "--"
            for ax, (key, title) in zip(axes, panels, strict=True):
                v = np.array([r.get(key, np.nan) for r in rows], float)
                smooth = np.convolve(v, np.ones(3) / 3, mode="same") if v.size > 3 else v
                ax.plot(steps, smooth, style, color=colors[i], label=f"{name} ({run.name[-2:]})")
                ax.set_title(title, fontsize=9)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.suptitle(f"experiment 003: {question} variants (solid seed 0, dashed seed 1)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_spectrogram(runs: Path, out: Path) -> None:
    """Free-running mel of each audio-out variant (seed 0) on held-out repeat episode 0, with the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from flax import linen as nn

    from interaction_jax.evals.run import run_task
    from interaction_jax.serve.engine import load_params

    mels, titles = [], []
    for name in QUESTIONS["audio_out"]:
        run = runs / f"{name}_s0"
        if not run.exists():
            continue
        config, params = load_params(str(run))
        res = run_task(config, nn.unbox(params), "repeat", 1, progress=False)
        n = res["episodes"][0].num_chunks
        if not mels:
            mels.append(np.asarray(res["target_mel"][0]).reshape(-1, 80)[: n * 16])
            titles.append("target")
        mels.append(np.asarray(res["mel"][0, :n]).reshape(-1, 80))
        digits = res["per_episode"][0].get("digit_acc", float("nan"))
        titles.append(f"{name} (digit acc {digits:.2f})")
    fig, axes = plt.subplots(len(mels), 1, figsize=(10, 1.6 * len(mels)), sharex=True)
    for ax, mel, title in zip(np.atleast_1d(axes), mels, titles, strict=True):
        ax.imshow(mel.T, origin="lower", aspect="auto", vmin=-1, vmax=1, cmap="magma")
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("mel")
    np.atleast_1d(axes)[-1].set_xlabel("frame (12.5 ms)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path)
    ap.add_argument("--spectrogram", action="store_true")
    ap.add_argument("--round", default="", choices=sorted(ROUNDS), help="round 2: copy_600 (its own folder)")
    args = ap.parse_args()
    questions, columns = ROUNDS[args.round]
    folder = HERE / args.round
    summary = summarize(args.runs, questions, folder)
    table = markdown(summary, questions, columns)
    (folder / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    (folder / "results.md").write_text(table + "\n")
    print(table)
    for question in questions:
        plot_curves(args.runs, question, folder / f"curves_{question}.png", questions)
    if args.spectrogram and not args.round:
        plot_spectrogram(args.runs, HERE / "spectrogram.png")


if __name__ == "__main__":
    main()

"""Demos: the front-end tour (``demo-frontends``) and the README's main command (``quickstart``)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

SR = 16_000


def test_signal(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """A speech-like test signal: a gliding harmonic tone with formant-ish amplitude, noise bursts, gaps."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 140 + 60 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voiced = sum(np.sin(h * phase) / h for h in range(1, 12))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 2.5 * t)) * (t % 1.0 < 0.8)
    fricative = rng.standard_normal(t.size) * ((t % 1.0) > 0.85) * 0.05
    return (0.2 * voiced * envelope + fricative).astype(np.float32)


def test_frame(height: int = 80, width: int = 80) -> np.ndarray:
    """A frame with a digit in one patch and noise elsewhere, so the hMLP token norms show structure."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (30, 30, 60))
    draw = ImageDraw.Draw(img)
    draw.text((8, 4), "7", fill=(250, 230, 40), font_size=32)
    draw.ellipse((48, 48, 72, 72), fill=(200, 40, 40))
    return np.asarray(img, dtype=np.uint8)


def demo_frontends(out: Path) -> dict[str, Path]:
    """Write log-mel vs dMel PNG, the Griffin-Lim re-synthesis WAV, and an hMLP token-norm PNG."""
    import jax
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import soundfile as sf

    from interaction_jax.audio import dmel, vocoder
    from interaction_jax.vision.hmlp import HMLPStem, frames_to_input

    out.mkdir(parents=True, exist_ok=True)
    wave = test_signal()
    print(f"[demo] {wave.size / SR:.1f} s test signal -> log-mel, dMel, Griffin-Lim", flush=True)
    mel = np.asarray(dmel.log_mel(wave))
    bins = np.asarray(dmel.discretize(mel))
    recon_mel = np.asarray(dmel.undiscretize(bins))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5), sharey=True)
    for ax, img, title in ((axes[0], mel, "log10 mel"), (axes[1], recon_mel, "dMel (16 bins)")):
        im = ax.imshow(img.T, origin="lower", aspect="auto", vmin=-7, vmax=2, cmap="magma")
        ax.set_title(title)
        ax.set_xlabel("frame (12.5 ms)")
    axes[0].set_ylabel("mel bin")
    fig.colorbar(im, ax=axes, shrink=0.8)
    paths = {"mel_png": out / "logmel_vs_dmel.png"}
    fig.savefig(paths["mel_png"], dpi=110)
    plt.close(fig)

    t0 = time.perf_counter()
    audio = np.asarray(vocoder.griffin_lim(recon_mel, length=wave.size))
    print(f"[demo] Griffin-Lim (32 iters) of the dMel took {time.perf_counter() - t0:.2f} s", flush=True)
    paths["wav_original"] = out / "original.wav"
    paths["wav_dmel_griffin_lim"] = out / "dmel_griffin_lim.wav"
    sf.write(paths["wav_original"], wave, SR)
    sf.write(paths["wav_dmel_griffin_lim"], audio, SR)

    frame = test_frame(160, 160)
    stem = HMLPStem(dim=64)
    x = frames_to_input(frame)
    params = stem.init(jax.random.key(0), x)
    tokens = np.asarray(stem.apply(params, x))
    norms = np.linalg.norm(tokens, axis=-1).reshape(frame.shape[0] // 40, frame.shape[1] // 40)
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.5))
    axes[0].imshow(frame)
    axes[0].set_title("frame (40x40 patches)")
    axes[1].imshow(norms, cmap="viridis")
    axes[1].set_title("hMLP token norm (random init)")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    paths["hmlp_png"] = out / "hmlp_token_norms.png"
    fig.savefig(paths["hmlp_png"], dpi=110)
    plt.close(fig)
    for name, path in paths.items():
        print(f"[demo] wrote {name}: {path}")
    return paths


# The Quickstart is sized to finish in ~15 minutes on 2 CPU cores. It trains the tiny model on the two
# turn-taking skills that fit that budget: listen, wait for the end, and answer (repeat), and stop talking when
# barged in on (interrupt), with the heard-text auxiliaries that speed up repeat's copy (docs/architecture.md,
# departure 28). Measured (session 13, faster 2-core machine): 9.1 min, repeat content 0.50 (digit accuracy
# 0.82), latency 0.36 s, interrupt yield 1.00; at data.seed=1 (session 14) repeat content 0.00 (digit accuracy
# 0.55): the copy forms around step 600, so the repeat goal is met on the threshold at this seed only. All
# five tasks need ~1800 steps (experiments/002_learning, ~30 min); at 350 steps of the five-task mix repeat
# content was 0.00 (README, Quickstart).
QUICKSTART_STEPS = 600
QUICKSTART_OVERRIDES = (
    f"train.steps={QUICKSTART_STEPS}", "data.batch_size=4", "train.warmup_steps=50", "train.log_every=10",
    f"train.checkpoint_every={QUICKSTART_STEPS // 3}", "train.eval_episodes=8",
    "data.tasks=repeat,interrupt", "data.task_weights=3,1",
    "model.heard_text_weight=1.0", "model.heard_onset_weight=1.0", "model.heard_prev_weight=1.0",
)
# What the quickstart must reach (the learning issue), and what the full 60-minute run must.
QUICKSTART_GOALS = {("repeat", "content"): ">= 0.5", ("interrupt", "yield_rate"): ">= 0.5"}
GOALS = {("repeat", "content"): ">= 0.9", ("repeat", "latency_s"): "<= 0.4", ("timespeak", "on_time"): ">= 0.8",
         ("cuespeak", "on_time"): ">= 0.8", ("repcount", "obo"): ">= 0.8", ("interrupt", "yield_rate"): ">= 0.9"}


def goal_table(results: dict[str, dict[str, float]]) -> str:
    """The headline metric of every evaluated task next to its quickstart and 60-minute goals (markdown)."""
    lines = ["| task | metric | score | quickstart goal | goal (60-min run) | voice says its text |",
             "|---|---|---:|---|---|---:|"]
    for (task, metric), goal in GOALS.items():
        if task in results:
            r = results[task]
            lines.append(f"| {task} | {metric} | {r.get(metric, float('nan')):.2f} | "
                         f"{QUICKSTART_GOALS.get((task, metric), '')} | {goal} | "
                         f"{r.get('voice_match', float('nan')):.2f} |")
    return "\n".join(lines)


def quickstart(workdir: Path) -> int:
    """README main command: front-end demo, train the tiny config on synthetic data, evaluate it."""
    from flax import linen as nn

    from interaction_jax.config import load_config
    from interaction_jax.evals.run import evaluate
    from interaction_jax.train import train

    start = time.perf_counter()
    config_path = Path(__file__).resolve().parents[1] / "configs" / "tiny.py"
    config = load_config(config_path, QUICKSTART_OVERRIDES)
    demo_frontends(workdir / "frontends")
    print(f"[quickstart] training {config.name} for {config.train.steps} steps in {workdir}", flush=True)
    result = train(config, workdir)
    print(f"[quickstart] evaluating {config.train.eval_episodes} held-out episodes per task (free-running)",
          flush=True)
    results = evaluate(config, nn.unbox(result["state"].params), config.data.tasks, config.train.eval_episodes,
                       workdir / "eval")
    print(goal_table(results))
    print(f"[quickstart] done in {(time.perf_counter() - start) / 60:.1f} min: metrics {workdir}/metrics.jsonl, "
          f"TensorBoard {workdir}/tb, eval {workdir}/eval/ (results.md, WAVs, mel PNGs)")
    return 0

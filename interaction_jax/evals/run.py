"""Interactivity evaluation: free-running generation on held-out synthetic episodes, scored exactly.

For each task, N held-out episodes run together as N sessions of the streaming engine, chunk by chunk:
the user side (dry microphone, frames, typed text) comes from the episode; the model's text-out is sampled
and its audio-out comes from the flow head; both feed back autoregressively (never teacher-forced), and the
echo of the *generated* voice is mixed into the microphone with the episode's own gain and delay. The
vocoded output is scored by the task scorers (DTMF decoding: no ASR).

``source="oracle"`` (``eval --oracle``) skips the model: each episode's own target mel (optionally plus
Gaussian noise of ``oracle_noise``, in normalised units) goes through the same streaming Griffin-Lim and
the same scorers, with the target text as the transcript. It is the ceiling of every score, and with noise
it shows how much output noise the vocoder and scorers tolerate.

Sessions are decoded together (the fast batched path). A session's outputs never depend on what the other
rows hold; ``row_invariant=True`` decodes row by row so that they are also bit-identical across different
numbers of sessions (``stream --task`` uses it to reproduce one episode of an eval exactly).

Metrics (``eval --json``) are ``{task: {metric: value}}``; rates are fractions in [0, 1]:
repeat.content, repeat.latency_s, timespeak.on_time, cuespeak.on_time, repcount.mae, repcount.obo,
interrupt.yield_rate, interrupt.yield_latency_s (see data/synthetic/scoring.py for each definition).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from interaction_jax.config import Config
from interaction_jax.model import Sampling
from interaction_jax.text import tokenizer

HELD_OUT_SEED = 1_000_000_007  # training draws seeds below 2**31 from a hash; eval uses a disjoint range


def text_events(tokens: np.ndarray, chunk_s: float = 0.2) -> list[tuple[float, str]]:
    """Text-out tokens [N, To] -> [(time_s, word)]: a word starts at a non-special token after PAD/EPAD.

    Chunk n's text-out describes interval n+1, so its tokens are stamped (n + 1) * 0.2 s.
    """
    events: list[tuple[float, str]] = []
    current: list[int] = []
    start = 0.0
    for n, row in enumerate(np.asarray(tokens)):
        for t in row.tolist():
            if t < 256:
                if not current:
                    start = round((n + 1) * chunk_s, 6)
                current.append(t)
            elif current:
                events.append((start, tokenizer.decode(current)))
                current = []
    if current:
        events.append((start, tokenizer.decode(current)))
    return events


def cache_chunks_for(config: Config, n_chunks: int) -> int:
    """KV cache length for an eval batch: the training window, or whole windows of it for longer episodes.

    It depends only on the episode length (not on which episodes share the batch), so one compiled program
    serves every task, and the same episode gets the same cache in ``eval`` and ``stream --task``.
    """
    w = max(config.data.window_chunks, 1)
    return min(max(w, -(-n_chunks // w) * w), max(config.model.max_chunks, n_chunks))


def run_task(config: Config, params: Any, task: str, num_episodes: int, *, seed: int = HELD_OUT_SEED,
             sampling: Sampling | None = None, progress: bool = True, source: str = "model",
             oracle_noise: float = 0.0, row_invariant: bool = False) -> dict[str, Any]:
    """Free-run ``num_episodes`` held-out episodes of ``task``; returns per-episode metrics and the audio."""
    from interaction_jax.data import synthetic

    if source not in ("model", "oracle"):
        raise ValueError(f"source must be 'model' or 'oracle', got {source!r}")
    if num_episodes < 1:
        raise ValueError(f"need at least 1 episode per task, got {num_episodes}")
    episodes = [synthetic.generate(task, seed + i, voice=config.data.voice, echo=config.data.echo)
                for i in range(num_episodes)]
    runner = _oracle if source == "oracle" else _free_run
    res = runner(config, params, task, episodes, seed=seed, sampling=sampling, progress=progress,
                 oracle_noise=oracle_noise, row_invariant=row_invariant)
    per_episode = []
    for i, ep in enumerate(episodes):
        wave = res["generated"][i, : ep.model_audio.size]
        per_episode.append(synthetic.score(ep.labels, wave, text_events(res["tokens"][i, : ep.num_chunks])))
    metrics = synthetic.aggregate(per_episode)
    metrics.update(raw_voice_ceiling(task, episodes))
    return {**res, "metrics": metrics, "per_episode": per_episode, "episodes": episodes}


def raw_voice_ceiling(task: str, episodes: list) -> dict[str, float]:
    """``ceiling_<headline>``: the headline metric scored on the episodes' own model voice, before any mel or
    vocoder. DTMF decodes exactly (1.0); an ASR-scored voice misreads some of its own words, and a model
    score is read against this ceiling."""
    from interaction_jax.data import synthetic
    from interaction_jax.data.synthetic.scoring import HEADLINE

    if task not in HEADLINE:
        return {}
    raw = synthetic.aggregate([synthetic.score(ep.labels, ep.model_audio, ep.model_words) for ep in episodes])
    return {f"ceiling_{HEADLINE[task]}": raw[HEADLINE[task]]}


def _free_run(config, params, task, episodes, *, seed, sampling, progress, row_invariant, **_):
    from interaction_jax.data.pipeline import episode_arrays, text_in_stream
    from interaction_jax.data.synthetic.tasks import mix_echo, user_dry_audio
    from interaction_jax.serve.engine import Engine

    num_episodes = len(episodes)
    a = config.audio
    n_chunks = max(ep.num_chunks for ep in episodes)
    engine = Engine(config, params, batch_slots=num_episodes, sampling=sampling, row_invariant=row_invariant,
                    cache_chunks=cache_chunks_for(config, n_chunks))
    state = engine.reset(engine.init_state(), np.ones(num_episodes, bool), np.arange(num_episodes) + seed)
    total = (n_chunks + 1) * a.chunk_samples
    dry = np.stack([np.pad(user_dry_audio(ep), (0, total - ep.user_audio.size))[:total] for ep in episodes])
    generated = np.zeros((num_episodes, total), np.float32)
    arrays = [episode_arrays(ep, config) for ep in episodes]
    text_in = np.stack([text_in_stream(ep.user_text, n_chunks, engine.layout.num_text_in) for ep in episodes])
    tokens = np.zeros((num_episodes, n_chunks, engine.layout.num_text_out), np.int32)
    mel = np.zeros((num_episodes, n_chunks, a.frames_per_chunk, a.n_mels), np.float32)
    rtfs = []
    for n in range(n_chunks):
        lo, hi = n * a.chunk_samples, (n + 1) * a.chunk_samples
        mic = dry[:, lo:hi].copy()
        for i, ep in enumerate(episodes):
            if ep.labels.get("echo", False):  # the echo of the *generated* voice, with the episode's room
                mic[i] += mix_echo(np.zeros(0, np.float32), generated[i, :hi], ep.labels["echo_gain_db"],
                                   ep.labels["echo_delay_s"])[lo:hi]
        frames = mask = None
        if engine.layout.num_video:
            frames = np.stack([arr["frames"][min(n, len(arr["frames"]) - 1)] for arr in arrays])
            mask = np.array([n < ep.num_chunks and bool(arr["frame_mask"][n])
                             for ep, arr in zip(episodes, arrays, strict=True)])
        state, out = engine.step(state, mic, frames, mask, text_in[:, n])
        generated[:, hi : hi + a.chunk_samples] = out["audio"]  # the model's voice during interval n+1
        tokens[:, n] = out["text_tokens"]
        mel[:, n] = out["mel"]
        rtfs.append(out["rtf"])
        if progress and (n % 10 == 0 or n == n_chunks - 1):
            print(f"\r[eval] {task}: chunk {n + 1}/{n_chunks} (rtf {out['rtf']:.3f})", end="", flush=True)
    if progress:
        print(flush=True)
    return {"generated": generated, "mel": mel, "target_mel": [arr["mel_out"] for arr in arrays],
            "tokens": tokens, "rtf_mean": float(np.mean(rtfs[1:] or rtfs))}


def _oracle(config, params, task, episodes, *, seed, oracle_noise, progress, **_):
    """The episodes' own targets through the engine's vocoder: what a perfect model would be scored."""
    import jax

    from interaction_jax.audio.dmel import FULL_SCALE_MEL, SILENCE_MEL
    from interaction_jax.data.pipeline import episode_arrays
    from interaction_jax.serve.engine import vocode_rows, vocoder_init

    a = config.audio
    num_episodes, n_chunks = len(episodes), max(ep.num_chunks for ep in episodes)
    arrays = [episode_arrays(ep, config) for ep in episodes]
    target = np.full((num_episodes, n_chunks, a.frames_per_chunk, a.n_mels), SILENCE_MEL, np.float32)
    tokens = np.zeros((num_episodes, n_chunks, arrays[0]["text_out"].shape[-1]), np.int32)
    for i, arr in enumerate(arrays):
        target[i, : len(arr["mel_out"])] = arr["mel_out"]
        tokens[i, : len(arr["text_out"])] = arr["text_out"]
    noise = np.random.default_rng(seed).standard_normal(target.shape).astype(np.float32) * oracle_noise
    mel = np.clip(target + noise, SILENCE_MEL, FULL_SCALE_MEL)  # what the engine would feed its vocoder
    step = jax.jit(lambda st, m: vocode_rows(st, m, a))
    state = vocoder_init(np.arange(num_episodes) + seed)
    generated = np.zeros((num_episodes, (n_chunks + 1) * a.chunk_samples), np.float32)
    for n in range(n_chunks):
        state, wave = step(state, mel[:, n])
        generated[:, (n + 1) * a.chunk_samples : (n + 2) * a.chunk_samples] = np.asarray(wave)
    if progress:
        print(f"[eval] {task}: oracle (target mel + noise {oracle_noise:g}) through the streaming vocoder",
              flush=True)
    return {"generated": generated, "mel": mel, "target_mel": [arr["mel_out"] for arr in arrays],
            "tokens": tokens, "rtf_mean": float("nan")}


def evaluate(config: Config, params: Any, tasks: tuple[str, ...], num_episodes: int, out_dir: Path | None = None,
             *, sampling: Sampling | None = None, progress: bool = True, source: str = "model",
             oracle_noise: float = 0.0) -> dict[str, dict[str, float]]:
    """Run every task; write results.md, results.json, transcripts.jsonl, example WAVs and mel PNGs under
    ``out_dir``."""
    results: dict[str, dict[str, float]] = {}
    lines: list[str] = []
    for task in tasks:
        res = run_task(config, params, task, num_episodes, sampling=sampling, progress=progress, source=source,
                       oracle_noise=oracle_noise)
        results[task] = {k: float(v) for k, v in res["metrics"].items()}
        lines += [json.dumps(t) for t in transcripts(task, res)]
        if out_dir is not None:
            write_examples(Path(out_dir), task, res, config)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(json_safe(results), indent=2) + "\n")
        (out_dir / "results.md").write_text(markdown(results) + "\n")
        (out_dir / "transcripts.jsonl").write_text("".join(line + "\n" for line in lines))
    return results


def transcripts(task: str, res: dict[str, Any]) -> list[dict[str, Any]]:
    """Per episode: what the model should say and what its text said, with times, and the episode's scores.

    A score says *that* a reply failed; the transcript says *how* (a stutter, a skipped digit, a reply that
    does not stop), which is what points at the cause (experiments/002_learning/README.md).
    """
    out = []
    for i, (ep, scores) in enumerate(zip(res["episodes"], res["per_episode"], strict=True)):
        said = text_events(res["tokens"][i, : ep.num_chunks])
        out.append({
            "task": task, "episode": i,
            "target": "".join(w for _, w in ep.model_words), "said": "".join(w for _, w in said),
            "target_words": [[round(t, 3), w] for t, w in ep.model_words],
            "said_words": [[round(t, 3), w] for t, w in said],
            "scores": {k: (None if v != v else float(v)) for k, v in scores.items()},
        })
    return out


def json_safe(results: dict[str, dict[str, float]]) -> dict[str, dict[str, float | None]]:
    """NaN (e.g. a latency when the model never spoke) becomes null: valid JSON for every reader."""
    return {t: {k: (None if v != v else v) for k, v in m.items()} for t, m in results.items()}


def markdown(results: dict[str, dict[str, float]]) -> str:
    lines = ["| task | metric | value |", "|---|---|---:|"]
    for task, metrics in results.items():
        for k, v in metrics.items():
            lines.append(f"| {task} | {k} | {v:.3f} |")
    return "\n".join(lines)


def write_examples(out_dir: Path, task: str, res: dict[str, Any], config: Config) -> None:
    """Stereo WAV (left = model output, right = microphone) and a predicted-vs-target mel PNG per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import soundfile as sf

    out_dir.mkdir(parents=True, exist_ok=True)
    ep = res["episodes"][0]
    n = ep.user_audio.size
    stereo = np.stack([res["generated"][0, :n], ep.user_audio[:n]], axis=1)
    sf.write(out_dir / f"{task}_example.wav", np.clip(stereo, -1, 1), config.audio.sample_rate)
    pred = res["mel"][0, : ep.num_chunks].reshape(-1, config.audio.n_mels)
    target = res["target_mel"][0].reshape(-1, config.audio.n_mels)
    fig, axes = plt.subplots(2, 1, figsize=(10, 4), sharex=True)
    for ax, img, title in ((axes[0], target, "target mel (interval n+1)"), (axes[1], pred, "generated mel")):
        ax.imshow(img.T, origin="lower", aspect="auto", vmin=-1, vmax=1, cmap="magma")
        ax.set_title(f"{task}: {title}")
    axes[1].set_xlabel("frame (12.5 ms)")
    fig.tight_layout()
    fig.savefig(out_dir / f"{task}_mel.png", dpi=100)
    plt.close(fig)

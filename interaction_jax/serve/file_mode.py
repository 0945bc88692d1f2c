"""File mode: stream a recorded microphone (and optional frames / typed text) through one session.

    python -m interaction_jax stream --checkpoint runs/tiny --audio in.wav [--frames DIR | --video in.mp4]
        [--text-events ev.json] --out out.wav
    python -m interaction_jax stream --checkpoint runs/tiny --task repeat --seed 3

The output WAV is time-aligned with the input: the model's voice for interval n+1 (decided at chunk n)
starts at sample 3200 (n + 1). The transcript JSON lists ``{"time": s, "text": word}`` events.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from interaction_jax.config import Config
from interaction_jax.model import Sampling


class InputError(ValueError):
    """A bad input file; the message names the file and what was expected."""


def read_audio(path: str | Path, sample_rate: int = 16_000) -> np.ndarray:
    """Mono float32 at ``sample_rate``. Stereo takes the right channel (the user, as in converted data)."""
    import soundfile as sf

    from interaction_jax.audio import dmel

    try:
        wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise InputError(f"{path}: cannot read audio ({e}); expected a WAV/FLAC file") from e
    if wave.size == 0:
        raise InputError(f"{path}: the file holds no samples")
    mono = wave[:, 1] if wave.shape[1] == 2 else wave[:, 0]
    if not np.isfinite(mono).all():
        raise InputError(f"{path}: audio contains NaN or inf samples")
    if sr != sample_rate:
        print(f"[stream] resampling {path} from {sr} Hz to {sample_rate} Hz", flush=True)
        mono = dmel.resample(mono, sr, sample_rate)
    return mono.astype(np.float32)


def read_frames_dir(path: str | Path, height: int, width: int, num_chunks: int) -> np.ndarray:
    """Images in a folder, sorted by name, one per 200 ms chunk (5 fps), resized to the model's frame size."""
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in Path(path).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise InputError(f"{path}: no .png/.jpg frames found")
    out = np.zeros((num_chunks, height, width, 3), np.uint8)
    for i, f in enumerate(files[:num_chunks]):
        try:
            out[i] = np.asarray(Image.open(f).convert("RGB").resize((width, height)))
        except (UnidentifiedImageError, OSError) as e:
            raise InputError(f"{f}: not a readable image ({e})") from e
    return out[: max(len(files), 1)] if len(files) < num_chunks else out


def read_video(path: str | Path, height: int, width: int, num_chunks: int) -> np.ndarray:
    """An mp4 sampled at 5 fps; needs PyAV (``pip install 'interaction_jax[video]'``)."""
    try:
        import av
    except ImportError as e:
        raise InputError("--video needs PyAV: pip install 'interaction_jax[video]' (or pass --frames DIR)") from e
    from PIL import Image

    out = np.zeros((num_chunks, height, width, 3), np.uint8)
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                n = int(float(frame.time or 0.0) / 0.2)
                if n >= num_chunks:
                    break
                out[n] = np.asarray(frame.to_image().convert("RGB").resize((width, height), Image.BILINEAR))
    except av.error.FFmpegError as e:  # type: ignore[attr-defined]
        raise InputError(f"{path}: cannot decode video ({e})") from e
    return out


def read_text_events(path: str | Path) -> list[tuple[float, str]]:
    try:
        raw = json.loads(Path(path).read_text())
        return sorted((float(e["time"]), str(e["text"])) for e in raw)
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise InputError(f"{path}: expected a JSON list of {{\"time\": seconds, \"text\": str}} ({e})") from e


def stream_file(config: Config, params: Any, audio: np.ndarray, *, frames: np.ndarray | None = None,
                text_events: list[tuple[float, str]] = (), sampling: Sampling | None = None, seed: int = 0,
                progress: bool = True) -> dict[str, Any]:
    """Run one session over a whole recording; returns the output wave, transcript and per-step RTF."""
    from interaction_jax.data.pipeline import text_in_stream
    from interaction_jax.evals.run import text_events as to_events
    from interaction_jax.serve.engine import Engine

    a = config.audio
    n = -(-audio.size // a.chunk_samples)
    mic = np.pad(audio, (0, n * a.chunk_samples - audio.size))
    from interaction_jax.evals.run import cache_chunks_for

    # A cache as long as the recording (in whole training windows), not the config's maximum: decode cost
    # grows with the cache. Past model.max_chunks the engine stops with a clear SessionEnded error.
    cache = min(cache_chunks_for(config, n), config.model.max_chunks)
    engine = Engine(config, params, batch_slots=1, sampling=sampling, row_invariant=True, cache_chunks=cache)
    state = engine.reset(engine.init_state(), np.ones(1, bool), np.array([seed]))
    text_in = text_in_stream(list(text_events), n, engine.layout.num_text_in)
    out_wave = np.zeros((n + 1) * a.chunk_samples, np.float32)
    tokens, rtf = [], []
    for i in range(n):
        chunk = mic[i * a.chunk_samples : (i + 1) * a.chunk_samples][None]
        fr = mask = None
        if frames is not None and engine.layout.num_video:
            fr = frames[min(i, len(frames) - 1)][None]
            mask = np.array([i < len(frames)])
        state, out = engine.step(state, chunk, fr, mask, text_in[i][None])
        out_wave[(i + 1) * a.chunk_samples : (i + 2) * a.chunk_samples] = out["audio"][0]
        tokens.append(out["text_tokens"][0])
        rtf.append(out["rtf"])
        if progress and (i % 25 == 0 or i == n - 1):
            print(f"\r[stream] chunk {i + 1}/{n}  rtf {out['rtf']:.3f}", end="", flush=True)
    if progress:
        print(flush=True)
    return {"audio": out_wave[: audio.size], "transcript": to_events(np.stack(tokens)),
            "rtf_mean": float(np.mean(rtf[1:] or rtf)), "tokens": np.stack(tokens)}

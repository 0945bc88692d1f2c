"""bench dmel: our jitted log-mel against a librosa pipeline with identical constants, on the same audio.

Keys: ``audio_seconds``, ``ours_s`` and ``librosa_s`` (median wall time for the whole clip), ``speedup_vs_librosa``
(= librosa_s / ours_s), ``max_abs_diff`` (log10 units, ours vs librosa), ``realtime_factor_ours``
(= ours_s / audio_seconds; below 1 is faster than real time).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000


def synthetic_audio(seconds: float, seed: int = 0, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Speech-like test audio, float32 in [-1, 1]: a vibrato chirp with harmonics under a syllable envelope,
    pink-ish noise, digital-silence gaps and a very quiet stretch (so the 1e-10 floors are exercised)."""
    rng = np.random.default_rng(seed)
    n = round(seconds * sr)
    t = np.arange(n) / sr
    f0 = 110.0 + 60.0 * np.sin(2 * np.pi * 0.25 * t) + 20.0 * np.sin(2 * np.pi * 5.0 * t) + 40.0 * (t % 2.0)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum((0.35 / k) * np.sin(k * phase + rng.uniform(0, 2 * np.pi)) for k in range(1, 16))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 3.0 * t + rng.uniform(0, 2 * np.pi))
    white = rng.standard_normal(n)
    spectrum = np.fft.rfft(white) / np.sqrt(np.maximum(np.arange(n // 2 + 1), 1.0))
    pink = np.fft.irfft(spectrum, n=n)
    x = voiced * envelope + 0.08 * pink / (np.abs(pink).max() + 1e-12)
    period = int(1.5 * sr)  # every 1.5 s: 150 ms of digital silence, then 100 ms at -120 dBFS
    for start in range(int(0.6 * sr), n, period):
        x[start : start + int(0.15 * sr)] = 0.0
        x[start + int(0.15 * sr) : start + int(0.25 * sr)] *= 1e-6
    return (0.9 * x / (np.abs(x).max() + 1e-12)).astype(np.float32)


def librosa_log_mel(wave: np.ndarray, center: bool = True) -> np.ndarray:
    """The reference pipeline: librosa STFT + librosa filterbank + numpy, same constants and floors."""
    import librosa

    spec = librosa.stft(
        wave, n_fft=1024, hop_length=200, win_length=800, window="hann", center=center, pad_mode="reflect"
    )
    mag = np.sqrt(np.maximum(np.abs(spec) ** 2, 1e-10))
    fb = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=1024, n_mels=80, fmin=80, fmax=7600, htk=False, norm="slaney")
    return np.log10(np.maximum(fb @ mag, 1e-10)).swapaxes(-1, -2)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import jax

    from interaction_jax.audio import dmel
    from interaction_jax.bench import timeit

    seconds = float(getattr(args, "seconds", None) or 60.0)
    wave = synthetic_audio(seconds)
    device_wave = jax.device_put(wave)
    ours_fn = lambda: jax.block_until_ready(dmel.log_mel(device_wave))
    ref_fn = lambda: librosa_log_mel(wave)
    ours_s = timeit(ours_fn, warmup=2, repeats=5)
    librosa_s = timeit(ref_fn, warmup=1, repeats=5)
    ours = np.asarray(ours_fn())
    ref = ref_fn()
    return {
        "audio_seconds": seconds,
        "ours_s": ours_s,
        "librosa_s": librosa_s,
        "speedup_vs_librosa": librosa_s / ours_s,
        "max_abs_diff": float(np.abs(ours - ref).max()),
        "realtime_factor_ours": ours_s / seconds,
    }

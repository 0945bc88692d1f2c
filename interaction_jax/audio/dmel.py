"""Log-mel front-end and dMel discretisation, offline and streaming (DESIGN §2).

Everything here is one jnp graph that works under ``jit``/``vmap``/``grad`` and over leading batch dims, so
the same code featurises training data, runs inside the serving step and is differentiable for tests.

STFT convention. The 800-sample periodic Hann window sits centred in a 1024-sample FFT frame (112 zeros on
each side) and hops by 200 samples. Only the magnitude is used, and shifting a frame in time changes only the
phase, so we FFT ``[800 windowed samples, 224 zeros]`` instead of ``[112 zeros, 800, 112 zeros]``: the same
magnitudes, and frames become four consecutive 200-sample blocks, built with static slices (no gather, no
Python loop over frames). Frame m of ``log_mel(x, center=True)`` sees samples ``[200m-400, 200m+400)``.

Magnitude floor. ``mag = sqrt(maximum(re² + im², 1e-10))``, ``mel = mag @ fb``,
``log_mel = log10(maximum(mel, 1e-10))``. The floor inside the sqrt keeps the gradient finite at digital
silence; the tests build their numpy/librosa reference with exactly these formulas.

Streaming. A stream carries the last 600 samples; each 3200-sample chunk gives exactly 16 frames, and stream
frame m covers ``[200m-600, 200m+200)`` (ending on the newest sample). Concatenated stream frames equal
``log_mel(concat(zeros(712), wave, zeros(112)), center=False)``, and in the interior they equal offline frame
m-1 of ``log_mel(wave)``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from interaction_jax.config import AudioConfig

_DEFAULT = AudioConfig()


def _cfg(config: AudioConfig | None) -> AudioConfig:
    return _DEFAULT if config is None else config


# ------------------------------------------------------------------------------------------------------------
# Filterbank and window (numpy, cached: they are constants of the config)
# ------------------------------------------------------------------------------------------------------------


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    lin = hz / (200.0 / 3.0)
    logstep = np.log(6.4) / 27.0
    log = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) / logstep
    return np.where(hz >= 1000.0, log, lin)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    logstep = np.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(logstep * (mel - 15.0)), mel * (200.0 / 3.0))


@functools.lru_cache(maxsize=8)
def _mel_filterbank_cached(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    fft_hz = np.fft.rfftfreq(n_fft, 1.0 / sr)
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    # Slaney norm: every triangle has unit area in Hz, so wide high bands are not louder than narrow low ones.
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    fb = np.ascontiguousarray(weights.T.astype(np.float32))
    fb.flags.writeable = False
    return fb


def mel_filterbank(config: AudioConfig | None = None) -> np.ndarray:
    """``float32[n_fft//2+1, n_mels]`` Slaney-scale, Slaney-normalised filterbank (librosa's ``filters.mel``
    transposed so that ``mel = magnitude @ fb``). Read-only and cached."""
    c = _cfg(config)
    return _mel_filterbank_cached(c.sample_rate, c.n_fft, c.n_mels, float(c.fmin), float(c.fmax))


@functools.lru_cache(maxsize=8)
def _hann_cached(win_length: int) -> np.ndarray:
    w = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win_length) / win_length)).astype(np.float32)
    w.flags.writeable = False
    return w


def hann_window(config: AudioConfig | None = None) -> np.ndarray:
    """Periodic Hann of ``win_length`` samples (= ``scipy.signal.get_window('hann', 800, fftbins=True)``)."""
    return _hann_cached(_cfg(config).win_length)


# ------------------------------------------------------------------------------------------------------------
# Input checks (static ones also on tracers; value checks only on concrete arrays)
# ------------------------------------------------------------------------------------------------------------


def check_sample_rate(sr: int, config: AudioConfig | None = None) -> None:
    """Reject audio at another rate: silently featurising 44.1 kHz audio would shift every mel band."""
    expected = _cfg(config).sample_rate
    if int(sr) != expected:
        raise ValueError(
            f"expected {expected} Hz audio, got {sr} Hz; resample first (e.g. interaction_jax.audio.dmel.resample)"
        )


def resample(wave: np.ndarray, orig_sr: int, target_sr: int = 16_000) -> np.ndarray:
    """Polyphase resampling (scipy ``resample_poly``) along the last axis; returns float32."""
    from math import gcd

    from scipy.signal import resample_poly

    wave = np.asarray(wave)
    if not np.issubdtype(wave.dtype, np.floating):
        raise ValueError(f"expected floating-point audio, got dtype {wave.dtype}")
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    if orig_sr == target_sr:
        return wave.astype(np.float32)
    g = gcd(int(orig_sr), int(target_sr))
    return resample_poly(wave, int(target_sr) // g, int(orig_sr) // g, axis=-1).astype(np.float32)


def _check_wave(wave, min_samples: int, what: str, last_axis: int | None = None) -> jax.Array:
    """Validate audio before it enters the traced graph, with messages that say what was expected."""
    if not hasattr(wave, "dtype"):
        wave = np.asarray(wave)
    if not jnp.issubdtype(wave.dtype, jnp.floating):
        raise ValueError(
            f"{what}: expected floating-point audio in [-1, 1], got dtype {wave.dtype}; "
            "convert integer PCM with e.g. wave.astype(np.float32) / 32768"
        )
    if wave.ndim < 1:
        raise ValueError(f"{what}: expected audio of shape [..., samples] (rank >= 1), got a 0-d array")
    n = wave.shape[-1]
    if n == 0 or wave.size == 0:
        raise ValueError(f"{what}: expected non-empty audio, got shape {tuple(wave.shape)}")
    if last_axis is not None and n != last_axis:
        raise ValueError(f"{what}: expected exactly {last_axis} samples on the last axis, got {n}")
    if n < min_samples:
        raise ValueError(f"{what}: expected at least {min_samples} samples on the last axis, got {n}")
    if isinstance(wave, jax.core.Tracer):
        finite = True  # values unknown while tracing; the caller's own checks apply
    elif isinstance(wave, jax.Array):
        finite = bool(jnp.isfinite(wave).all())  # reduce on device rather than copying audio to the host
    else:
        finite = bool(np.isfinite(wave).all())
    if not finite:
        raise ValueError(f"{what}: expected finite audio, got NaN or inf samples")
    return jnp.asarray(wave, dtype=jnp.float32)


# ------------------------------------------------------------------------------------------------------------
# Core transform
# ------------------------------------------------------------------------------------------------------------


def frame_segments(x: jax.Array, n_frames: int, config: AudioConfig | None = None) -> jax.Array:
    """``[..., n] -> [..., n_frames, win_length]``: frame m is ``x[hop*m : hop*m + win_length]``.

    Requires ``win_length % hop == 0`` (800 = 4·200) so a frame is a run of whole hop-sized blocks: one
    reshape plus ``win/hop`` static slices, which XLA turns into cheap copies instead of a gather.
    """
    c = _cfg(config)
    hop, win = c.hop_length, c.win_length
    assert win % hop == 0, "frame_segments needs win_length to be a multiple of hop_length"
    per = win // hop
    n_blocks = n_frames + per - 1
    blocks = x[..., : n_blocks * hop].reshape(*x.shape[:-1], n_blocks, hop)
    parts = [blocks[..., j : j + n_frames, :] for j in range(per)]
    return jnp.concatenate(parts, axis=-1)


def segments_to_spectrum(segments: jax.Array, config: AudioConfig | None = None) -> jax.Array:
    """Windowed ``rfft`` of ``[..., frames, win]`` segments zero-padded to n_fft: ``complex[..., frames, bins]``.

    The window is placed at the start of the FFT frame rather than centred; magnitudes are identical and the
    vocoder uses the same convention in both directions, so phases stay consistent too.
    """
    c = _cfg(config)
    return jnp.fft.rfft(segments * jnp.asarray(hann_window(c)), n=c.n_fft, axis=-1)


def _log_mel_of_segments(segments: jax.Array, c: AudioConfig) -> jax.Array:
    spec = segments_to_spectrum(segments, c)
    power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2
    mag = jnp.sqrt(jnp.maximum(power, c.log_floor))
    mel = jnp.matmul(mag, jnp.asarray(mel_filterbank(c)), precision=jax.lax.Precision.HIGHEST)
    return jnp.log10(jnp.maximum(mel, c.log_floor))


def num_frames(n_samples: int, center: bool = True, config: AudioConfig | None = None) -> int:
    """Frames produced by ``log_mel`` for ``n_samples`` input samples (librosa's count)."""
    c = _cfg(config)
    if center:
        return 1 + n_samples // c.hop_length
    return 1 + (n_samples - c.n_fft) // c.hop_length


@functools.partial(jax.jit, static_argnames=("center", "config"))
def _log_mel_jit(wave: jax.Array, center: bool, config: AudioConfig) -> jax.Array:
    c = config
    n = wave.shape[-1]
    lead = (c.n_fft - c.win_length) // 2  # zeros before the window inside an FFT frame (112)
    if center:
        pad = c.n_fft // 2
        wave = jnp.pad(wave, [(0, 0)] * (wave.ndim - 1) + [(pad, pad)], mode="reflect")
    frames = num_frames(n, center, c)
    segments = frame_segments(wave[..., lead:], frames, c)
    return _log_mel_of_segments(segments, c)


def log_mel(wave, center: bool = True, config: AudioConfig | None = None) -> jax.Array:
    """``float[..., samples]`` at 16 kHz -> ``float32[..., frames, 80]`` log10 magnitude mel.

    ``center=True`` reflect-pads n_fft//2 on both sides (``1 + n//200`` frames, frame m centred on sample
    200m); ``center=False`` does not pad (``1 + (n - 1024)//200`` frames).
    """
    c = _cfg(config)
    min_samples = c.n_fft // 2 + 1 if center else c.n_fft
    wave = _check_wave(wave, min_samples, "log_mel")
    return _log_mel_jit(wave, bool(center), c)


def log_mel_numpy(wave: np.ndarray, center: bool = True, config: AudioConfig | None = None) -> np.ndarray:
    """The same transform as ``log_mel`` in numpy, for data workers (no jit, no JAX in grain processes).

    Variable-length episodes would retrace the jitted version for every new length; this one has no
    compile step. It agrees with ``log_mel`` to ~1e-5 (a test checks it).
    """
    c = _cfg(config)
    wave = np.asarray(wave, np.float32)
    n = wave.shape[-1]
    lead = (c.n_fft - c.win_length) // 2
    if center:
        wave = np.pad(wave, [(0, 0)] * (wave.ndim - 1) + [(c.n_fft // 2, c.n_fft // 2)], mode="reflect")
    frames = num_frames(n, center, c)
    if frames < 1:
        raise ValueError(f"log_mel_numpy: need at least {c.n_fft} samples with center=False, got {n}")
    windows = np.lib.stride_tricks.sliding_window_view(wave[..., lead:], c.win_length, axis=-1)
    segments = windows[..., : frames * c.hop_length : c.hop_length, :] * hann_window(c)
    spec = np.fft.rfft(segments, n=c.n_fft, axis=-1)
    mag = np.sqrt(np.maximum(spec.real**2 + spec.imag**2, c.log_floor))
    return np.log10(np.maximum(mag @ mel_filterbank(c), c.log_floor)).astype(np.float32)


def discretize_numpy(log_mel_values: np.ndarray, config: AudioConfig | None = None) -> np.ndarray:
    """numpy twin of ``discretize`` (identical arithmetic in float32)."""
    c = _cfg(config)
    x = np.clip(np.asarray(log_mel_values, np.float32), c.dmel_min, c.dmel_max)
    bins = np.round((x - np.float32(c.dmel_min)) / np.float32(_bin_step(c)))
    return np.clip(bins, 0, c.dmel_bins - 1).astype(np.int32)


# ------------------------------------------------------------------------------------------------------------
# dMel discretisation and output normalisation
# ------------------------------------------------------------------------------------------------------------


def _bin_step(c: AudioConfig) -> float:
    return (c.dmel_max - c.dmel_min) / (c.dmel_bins - 1)


def discretize(log_mel_values: jax.Array, config: AudioConfig | None = None) -> jax.Array:
    """log10-mel -> ``int32`` bins in ``[0, 16)``: clip to [-7, 2], nearest of the centres ``-7 + 0.6 i``."""
    c = _cfg(config)
    x = jnp.clip(jnp.asarray(log_mel_values, jnp.float32), c.dmel_min, c.dmel_max)
    bins = jnp.round((x - c.dmel_min) / _bin_step(c))
    return jnp.clip(bins, 0, c.dmel_bins - 1).astype(jnp.int32)


def undiscretize(bins: jax.Array, config: AudioConfig | None = None) -> jax.Array:
    """dMel bins -> ``float32`` bin centres (the inverse of ``discretize`` up to half a bin, 0.3)."""
    c = _cfg(config)
    return c.dmel_min + jnp.asarray(bins).astype(jnp.float32) * _bin_step(c)


@functools.lru_cache(maxsize=8)
def _mel_range_cached(c: AudioConfig) -> tuple[np.ndarray, np.ndarray]:
    fb = mel_filterbank(c).astype(np.float64)
    # Digital silence: every FFT bin sits at the magnitude floor sqrt(log_floor), so channel c reads
    # log10(sqrt(floor) * sum_k fb[k, c]). Slaney-normalised bands have different sums: the floor is a vector.
    floor = np.log10(np.maximum(np.sqrt(c.log_floor) * fb.sum(axis=0), c.log_floor))
    # Full scale: the loudest any clean signal reads in channel c is a unit-amplitude sine at the frequency
    # the channel weighs most (probed on a fine grid around each band's peak).
    t = np.arange(c.n_fft * 2) / c.sample_rate
    fft_hz = np.fft.rfftfreq(c.n_fft, 1.0 / c.sample_rate)
    peaks = fft_hz[np.argmax(fb, axis=0)]
    step = c.sample_rate / c.n_fft
    ceiling = np.full(c.n_mels, -np.inf)
    for offset in np.linspace(-step, step, 9):
        waves = np.sin(2 * np.pi * (peaks + offset)[:, None] * t[None, :]).astype(np.float32)
        mel = log_mel_numpy(waves, center=False, config=c)  # [n_mels, frames, n_mels]
        ceiling = np.maximum(ceiling, mel[np.arange(c.n_mels), :, np.arange(c.n_mels)].max(axis=1))
    floor, ceiling = floor.astype(np.float32), ceiling.astype(np.float32)
    floor.flags.writeable = ceiling.flags.writeable = False
    return floor, ceiling


def mel_range(config: AudioConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(floor, ceiling)`` of log10-mel: digital silence and a full-scale sine (float32 [n_mels]).

    These two vectors define the output normalisation, so the constants the model uses are derived from
    the front-end rather than chosen: silence is exactly -1 in every channel (``SILENCE_MEL``), a 0 dBFS
    tone is +1, and clipping generated blocks to [-1, 1] can never produce a sound louder than full scale.
    """
    return _mel_range_cached(_cfg(config))


SILENCE_MEL = -1.0  # normalised digital silence, by construction of ``normalize_mel`` (every channel)
FULL_SCALE_MEL = 1.0  # normalised full-scale sine; generated blocks are clipped to [SILENCE_MEL, FULL_SCALE_MEL]


def normalize_mel(x, config: AudioConfig | None = None):
    """log10-mel ``[..., n_mels]`` -> flow-head targets in [-1, 1]: per-channel affine map of [floor, ceiling].

    Values are clipped to the range first (the floor is already the minimum any input can produce). Works
    on numpy (data workers) and jax arrays alike.
    """
    floor, ceiling = mel_range(config)
    xp = jnp if isinstance(x, jax.Array) else np
    x = xp.clip(x, floor, ceiling)
    return (2.0 * (x - floor) / (ceiling - floor) - 1.0).astype(xp.float32)


def denormalize_mel(x, config: AudioConfig | None = None):
    """Inverse of ``normalize_mel`` (for values in [-1, 1]): normalised blocks -> log10-mel for the vocoder."""
    floor, ceiling = mel_range(config)
    return (0.5 * (x + 1.0) * (ceiling - floor) + floor).astype(jnp.float32 if isinstance(x, jax.Array) else np.float32)



# ------------------------------------------------------------------------------------------------------------
# Streaming
# ------------------------------------------------------------------------------------------------------------


class StreamState(NamedTuple):
    """Carried samples: the last ``win_length - hop`` (600) samples of the stream, zeros at the start."""

    context: jax.Array


def stream_context_samples(config: AudioConfig | None = None) -> int:
    c = _cfg(config)
    return c.win_length - c.hop_length


def stream_init(batch_shape: tuple[int, ...] = (), config: AudioConfig | None = None) -> StreamState:
    """A fresh stream: as if preceded by silence."""
    return StreamState(context=jnp.zeros((*tuple(batch_shape), stream_context_samples(config)), jnp.float32))


@functools.partial(jax.jit, static_argnames=("config",))
def _stream_step_jit(state: StreamState, chunk: jax.Array, config: AudioConfig) -> tuple[StreamState, jax.Array]:
    c = config
    x = jnp.concatenate([state.context.astype(jnp.float32), chunk], axis=-1)
    frames = _log_mel_of_segments(frame_segments(x, c.frames_per_chunk, c), c)
    return StreamState(context=x[..., -stream_context_samples(c) :]), frames


def stream_step(
    state: StreamState, chunk: jax.Array, config: AudioConfig | None = None
) -> tuple[StreamState, jax.Array]:
    """One 200 ms chunk ``[..., 3200]`` -> ``(state, log_mel[..., 16, 80])``; frame m ends on its newest sample."""
    c = _cfg(config)
    chunk = _check_wave(chunk, c.chunk_samples, "stream_step", last_axis=c.chunk_samples)
    if state.context.shape[:-1] != chunk.shape[:-1]:
        raise ValueError(
            f"stream_step: chunk batch shape {tuple(chunk.shape[:-1])} does not match the state's "
            f"{tuple(state.context.shape[:-1])}; create the state with stream_init(batch_shape=...)"
        )
    return _stream_step_jit(state, chunk, c)

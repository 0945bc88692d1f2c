"""Pluggable voices for the synthetic tasks, and the exact DTMF decoder that scores them without ASR.

A voice turns timed symbols into a waveform (``render``), says how long each symbol takes (``durations``, so
task generators can plan turn-taking before rendering) and reads symbols back (``decode``, so scorers stay
voice-agnostic). The default ``dtmf`` voice speaks telephone keypad tones: it needs nothing but numpy, every
"word" is one symbol, and the decoder recovers symbols and onsets exactly. A real TTS voice with an ASR
decoder can be plugged in with ``register_voice`` behind an optional extra; the ``speech`` family
(``interaction_jax.data.speech``, extras ``[speech,asr]``) is registered on first use by name.

A voice may declare ``chunks_per_symbol`` (default 1): the model's even pace, in 200 ms chunks per symbol.
Spoken words last 0.23-0.42 s, so the speech voice speaks one word every 3 chunks (at 2, with the model's
15-45 ms onset jitter, a word needed <= 0.34 s, and pocketsphinx misread 1 in 8 words spoken that fast).

The decoder deliberately uses per-frequency energy only (Goertzel power), never phase: generated audio
comes back through mel -> Griffin-Lim, which keeps magnitudes but scrambles phase and smears edges by about
one 50 ms STFT window. Repeats of the same digit are therefore separated both by missing detections and by
energy dips, not by exact silence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

SAMPLE_RATE = 16_000
DTMF_LOW = (697.0, 770.0, 852.0, 941.0)
DTMF_HIGH = (1209.0, 1336.0, 1477.0, 1633.0)
DTMF_KEYS = ("123A", "456B", "789C", "*0#D")  # rows = low group, columns = high group
DTMF_SYMBOLS = "".join(DTMF_KEYS)
_KEY_FREQS = {k: (r, c) for r, row in enumerate(DTMF_KEYS) for c, k in enumerate(row)}

Event = tuple[float, str, float]  # (onset_s, symbol, duration_s)


@runtime_checkable
class Voice(Protocol):
    """What a task generator and a scorer need from a voice."""

    name: str
    symbols: str  # the symbols this voice can say

    def durations(self, symbols: Sequence[str], rng: np.random.Generator) -> list[float]:
        """Seconds each symbol will last when rendered (drawn here so the caller can plan gaps)."""
        ...

    def render(self, events: Sequence[Event], total_samples: int, rng: np.random.Generator) -> np.ndarray:
        """float32 [total_samples] wave with each (onset_s, symbol, duration_s) event spoken at its onset."""
        ...

    def decode(self, wave: np.ndarray, sr: int = SAMPLE_RATE, vocabulary: str | None = None
               ) -> list[tuple[float, str]]:
        """The (onset_s, symbol) events heard in ``wave``; ``vocabulary`` (a string of symbols) is what the
        answer may hold (an ASR decoder restricts its grammar to it; an exact decoder may ignore it)."""
        ...


# ------------------------------------------------------------------------------------------ DTMF voice


class DtmfVoice:
    """Keypad tones with the variability of a real line: level, twist, drift, a little noise, soft edges.

    Per utterance (one ``render`` call) the level is drawn in [level_lo, level_hi] dBFS (peak of the tone
    pair); each tone then jitters by about 1.5 dB, gets its own high-group twist, an independent drift of up
    to ``drift`` on each frequency, a random phase, raised-cosine ramps, and tone-shaped noise ~30 dB
    down. Silence between tones stays exactly zero, so silent target audio is floor-level mel.
    """

    name = "dtmf"
    symbols = DTMF_SYMBOLS

    def __init__(self, min_dur: float = 0.07, max_dur: float = 0.15, level_lo: float = -20.0,
                 level_hi: float = -6.0, drift: float = 0.01, ramp_s: float = 0.005, sr: int = SAMPLE_RATE):
        self.min_dur, self.max_dur = min_dur, max_dur
        self.level_lo, self.level_hi = level_lo, level_hi
        self.drift, self.ramp_s, self.sr = drift, ramp_s, sr

    def durations(self, symbols: Sequence[str], rng: np.random.Generator) -> list[float]:
        return [float(d) for d in rng.uniform(self.min_dur, self.max_dur, len(symbols))]

    def render(self, events: Sequence[Event], total_samples: int, rng: np.random.Generator) -> np.ndarray:
        out = np.zeros(total_samples, np.float64)
        base = rng.uniform(self.level_lo, self.level_hi)
        for onset, sym, dur in events:
            if sym not in _KEY_FREQS:
                raise ValueError(f"dtmf voice cannot say {sym!r}; symbols: {self.symbols}")
            start = round(onset * self.sr)
            n = round(dur * self.sr)
            if n <= 0 or start >= total_samples:
                continue
            level = np.clip(base + rng.normal(0.0, 1.5), self.level_lo, self.level_hi)
            twist = rng.uniform(-1.0, 3.0)  # high group slightly louder, as on real lines
            peak = 10 ** (level / 20)
            a_hi = peak / (1 + 10 ** (-twist / 20))
            a_lo = peak - a_hi
            r, c = _KEY_FREQS[sym]
            f_lo = DTMF_LOW[r] * (1 + rng.uniform(-self.drift, self.drift))
            f_hi = DTMF_HIGH[c] * (1 + rng.uniform(-self.drift, self.drift))
            t = np.arange(n) / self.sr
            tone = (a_lo * np.sin(2 * np.pi * f_lo * t + rng.uniform(0, 2 * np.pi))
                    + a_hi * np.sin(2 * np.pi * f_hi * t + rng.uniform(0, 2 * np.pi)))
            tone += rng.normal(0.0, peak * 10 ** (rng.uniform(-35, -25) / 20), n)
            tone *= _envelope(n, round(self.ramp_s * self.sr))
            end = min(start + n, total_samples)
            out[start:end] += tone[: end - start]
        return out.astype(np.float32)

    def decode(self, wave: np.ndarray, sr: int = SAMPLE_RATE, vocabulary: str | None = None
               ) -> list[tuple[float, str]]:
        return decode_dtmf(wave, sr)  # exact: every key is decoded, whatever the task may say


def _envelope(n: int, ramp: int) -> np.ndarray:
    """Flat top with raised-cosine ramps: no clicks, so no broadband energy at tone edges."""
    env = np.ones(n)
    ramp = min(ramp, n // 2)
    if ramp > 0:
        rise = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
        env[:ramp] = rise
        env[n - ramp :] = rise[::-1]
    return env


# ------------------------------------------------------------------------------------------ DTMF decoder

_WIN = 480  # 30 ms: resolves 62 Hz (adjacent low-group tones drifted 1.5% towards each other) with Hann
_HOP = 80  # 5 ms: onsets to a few ms after interpolation
_OFFSETS = (-0.015, -0.0075, 0.0, 0.0075, 0.015)  # probe grid: worst-case miss 0.375% -> < 0.5 dB loss
_MIN_AMP = 10 ** (-46 / 20)  # per-component amplitude floor (generated tones are >= -26 dBFS per component)
_DOMINANCE = 2.0  # best tone of a group must be 6 dB above the group's runner-up
_MAX_TWIST_DB = 20.0
_MIN_TONE_SHARE = 0.4  # the two tones must carry this share of the frame's energy
_MAX_DROPOUT = 2  # frames (10 ms) without detection inside one tone are bridged
_MIN_FRAMES = 8  # 40 ms of detections make a symbol
_DIP = 0.1  # an energy dip 10 dB below both neighbouring peaks splits a repeated symbol


def _basis(sr: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    n = np.arange(_WIN)
    w = np.hanning(_WIN + 2)[1:-1]  # strictly positive Hann
    freqs = np.array([f * (1 + o) for f in DTMF_LOW + DTMF_HIGH for o in _OFFSETS])
    phase = 2 * np.pi * np.outer(n, freqs) / sr
    return w[:, None] * np.cos(phase), w[:, None] * np.sin(phase), float(w.sum()), float((w**2).sum())


def dtmf_amplitudes(wave: np.ndarray, sr: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """Goertzel amplitude of the 8 DTMF frequencies per 5 ms frame, and each frame's tone-energy share.

    Frame k is centred on sample k*80. The single-bin DFTs are evaluated as one matrix product of the
    windowed frames with a cos/sin basis, which gives exactly the Goertzel power (|X(f)|^2) and is much faster
    in numpy than running the recurrence. Each frequency is probed at 5 offsets (+-1.5%) and the maximum
    kept, so drifted tones lose < 0.5 dB. Returns amp [T, 8] (amplitude of a sinusoid, in full-scale units)
    and share [T] (energy of the best low + best high tone / frame energy).
    """
    if sr != SAMPLE_RATE:
        raise ValueError(f"decode_dtmf expects {SAMPLE_RATE} Hz audio, got {sr} Hz")
    x = np.asarray(wave, np.float64).reshape(-1)
    cos_b, sin_b, wsum, w2sum = _basis(sr)
    w = np.hanning(_WIN + 2)[1:-1]
    padded = np.concatenate([np.zeros(_WIN // 2), x, np.zeros(_WIN)])
    n_frames = x.size // _HOP + 1
    frames = np.lib.stride_tricks.sliding_window_view(padded, _WIN)[::_HOP][:n_frames]
    amps, energy = [], []
    for lo in range(0, n_frames, 2048):  # bounded memory for long waves
        block = frames[lo : lo + 2048]
        power = (block @ cos_b) ** 2 + (block @ sin_b) ** 2
        amps.append((2 * np.sqrt(power) / wsum).reshape(len(block), 8, len(_OFFSETS)).max(axis=2))
        energy.append((block**2) @ (w**2))
    amp = np.concatenate(amps) if amps else np.zeros((0, 8))
    e = np.concatenate(energy) if energy else np.zeros(0)
    tone_e = (amp[:, :4].max(axis=1) ** 2 + amp[:, 4:].max(axis=1) ** 2) / 2 * w2sum
    share = tone_e / np.maximum(e, 1e-20)
    return amp, share


def _frame_symbols(amp: np.ndarray, share: np.ndarray) -> np.ndarray:
    """Per-frame symbol index into DTMF_SYMBOLS (row * 4 + column), or -1 where the checks fail."""
    lo, hi = amp[:, :4], amp[:, 4:]
    r, c = lo.argmax(axis=1), hi.argmax(axis=1)
    lo_sorted, hi_sorted = np.sort(lo, axis=1), np.sort(hi, axis=1)
    a_lo, a_hi = lo_sorted[:, -1], hi_sorted[:, -1]
    ok = (a_lo >= _MIN_AMP) & (a_hi >= _MIN_AMP)
    ok &= (a_lo >= _DOMINANCE * lo_sorted[:, -2]) & (a_hi >= _DOMINANCE * hi_sorted[:, -2])
    ok &= np.abs(20 * np.log10(np.maximum(a_lo, 1e-12) / np.maximum(a_hi, 1e-12))) <= _MAX_TWIST_DB
    ok &= share >= _MIN_TONE_SHARE
    return np.where(ok, r * 4 + c, -1)


def _runs(sym: np.ndarray) -> list[tuple[int, int, int]]:
    """(symbol, first, last) runs of equal detections, bridging dropouts of <= _MAX_DROPOUT frames."""
    runs: list[tuple[int, int, int]] = []
    for k in np.flatnonzero(sym >= 0):
        s = int(sym[k])
        if runs and runs[-1][0] == s and k - runs[-1][2] <= _MAX_DROPOUT + 1:
            runs[-1] = (s, runs[-1][1], int(k))
        else:
            runs.append((s, int(k), int(k)))
    return runs


def _split_dips(p: np.ndarray, first: int, last: int) -> list[tuple[int, int]]:
    """Split [first, last] where the tone power dips 10 dB under the peaks on both sides (a repeat)."""
    seg = p[first : last + 1]
    cuts = []
    left_max = np.maximum.accumulate(seg)
    right_max = np.maximum.accumulate(seg[::-1])[::-1]
    for k in range(1, len(seg) - 1):
        if seg[k] < _DIP * min(left_max[k], right_max[k]) and seg[k] <= seg[k - 1] and seg[k] <= seg[k + 1]:
            cuts.append(k)
            left_max[k:] = np.maximum.accumulate(seg[k:])  # peaks left of the cut no longer count
    bounds, start = [], 0
    for cut in cuts:
        bounds.append((first + start, first + cut - 1))
        start = cut + 1
    bounds.append((first + start, last))
    return [(a, b) for a, b in bounds if b >= a]


def decode_dtmf(wave: np.ndarray, sr: int = SAMPLE_RATE) -> list[tuple[float, str]]:
    """(onset_s, symbol) of every DTMF tone in ``wave``, in time order.

    A frame is a candidate when the strongest low and high tones are loud enough, each dominates its group
    by 6 dB, their twist is within 10 dB and together they hold >= 40% of the frame energy. Candidates
    of one symbol form a tone when they last >= 40 ms (8 frames at a 5 ms hop), bridging dropouts of up
    to 10 ms; a repeated symbol is split by a detection gap of >= 15 ms or a 10 dB energy dip. The onset is
    where the tone pair's amplitude first reaches half its peak (a window centred on a tone edge sees half
    the tone), interpolated between frames, so it is accurate to a few ms on clean audio.
    """
    amp, share = dtmf_amplitudes(wave, sr)
    sym = _frame_symbols(amp, share)
    out: list[tuple[float, str]] = []
    prev_last = -1
    for s, first, last in _runs(sym):
        r, c = divmod(s, 4)
        pair = np.sqrt(amp[:, r] ** 2 + amp[:, 4 + c] ** 2)
        for a, b in _split_dips(pair**2, first, last):
            detected = int(np.count_nonzero(sym[a : b + 1] == s))
            if detected < _MIN_FRAMES:
                continue
            # Reference level: the 75th percentile of the detected frames, robust to Griffin-Lim ripple.
            half = 0.5 * float(np.percentile(pair[a : b + 1][sym[a : b + 1] == s], 75))
            k = max(prev_last + 1, a - 4)
            while k < b and pair[k] < half:
                k += 1
            if k > max(prev_last + 1, a - 4) and pair[k] > pair[k - 1]:  # interpolate the crossing
                frac = (half - pair[k - 1]) / (pair[k] - pair[k - 1])
                t = (k - 1 + frac) * _HOP / sr
            else:
                t = k * _HOP / sr
            out.append((max(float(t), 0.0), DTMF_SYMBOLS[s]))
            prev_last = b
    return out


# ------------------------------------------------------------------------------------------ registry

# The user and the model speak with different voices of one family: the user's varies widely (any level a
# microphone may see, uneven tones and gaps), the model's is steady (one level band, even tones), so the
# model has one consistent way to speak and the flow head need not model a random loudness.
USER_DTMF = DtmfVoice(min_dur=0.06, max_dur=0.20, level_lo=-24.0, level_hi=-3.0)
MODEL_DTMF = DtmfVoice(min_dur=0.09, max_dur=0.12, level_lo=-10.0, level_hi=-6.0)
_VOICES: dict[str, tuple[Voice, Voice]] = {"dtmf": (USER_DTMF, MODEL_DTMF)}
# Families behind optional extras: module whose ``register()`` adds them, imported on first use by name.
_LAZY = {"speech": "interaction_jax.data.speech"}


def register_voice(name: str, voice: Voice, model_voice: Voice | None = None) -> None:
    """Make a voice family available: ``voice`` speaks for the user, ``model_voice`` (default: the same)
    for the model. Both decode with ``voice.decode`` (e.g. a TTS voice pair from an optional extra)."""
    for v in (voice, model_voice):
        if v is not None and not isinstance(v, Voice):
            raise TypeError(f"{v!r} does not implement the Voice protocol (name, symbols, durations, render, "
                            "decode)")
    _VOICES[name] = (voice, model_voice or voice)


def get_voice(name: str) -> Voice:
    """The user voice of a family; its ``decode`` also reads the model's voice (the scorers use it)."""
    return get_voices(name)[0]


def get_voices(name: str) -> tuple[Voice, Voice]:
    """``(user_voice, model_voice)`` of a voice family."""
    if name not in _VOICES and name in _LAZY:
        import importlib

        importlib.import_module(_LAZY[name]).register()
    try:
        return _VOICES[name]
    except KeyError:
        raise ValueError(f"unknown voice {name!r}; available: {', '.join(available_voices())}") from None


def available_voices() -> list[str]:
    """Registered families plus those an optional extra registers on first use."""
    return sorted({*_VOICES, *_LAZY})

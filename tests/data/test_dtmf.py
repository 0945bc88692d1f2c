"""DTMF voice and decoder: every symbol back, with drift, level changes, noise, echo and a mel round trip."""

from __future__ import annotations

import numpy as np
import pytest

from interaction_jax.data import synthetic
from interaction_jax.data.synthetic.voices import DTMF_SYMBOLS, DtmfVoice, decode_dtmf, get_voice, register_voice

SR = 16_000


def _utterance(seed: int, voice: DtmfVoice) -> tuple[np.ndarray, list[tuple[float, str, float]]]:
    rng = np.random.default_rng(seed)
    symbols = "".join(rng.choice(list(DTMF_SYMBOLS), int(rng.integers(3, 11))))
    if seed % 4 == 0:
        symbols = symbols[0] * len(symbols)  # repeats must be separated by their 50-150 ms gaps
    t, events = float(rng.uniform(0.0, 0.4)), []
    for s, d in zip(symbols, voice.durations(list(symbols), rng), strict=True):
        events.append((t, s, d))
        t += d + float(rng.uniform(0.05, 0.15))
    n = int((t + 0.2) * SR)
    wave = voice.render(events, n, rng)
    wave += rng.normal(0.0, 10 ** (rng.uniform(-70, -45) / 20), n).astype(np.float32)
    return wave, events


def _check(decoded, events, tol_s: float) -> None:
    assert "".join(s for _, s in decoded) == "".join(s for _, s, _ in events)
    errors = [abs(a[0] - b[0]) for a, b in zip(decoded, events, strict=True)]
    assert max(errors) < tol_s, errors


def test_keypad_frequencies():
    voice = DtmfVoice(drift=0.0)
    rng = np.random.default_rng(0)
    wave = voice.render([(0.0, "5", 0.5)], SR, rng).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(wave[:8000]))
    peaks = sorted(np.argsort(spectrum)[-2:] * SR / 8000)
    assert peaks == [770.0, 1336.0]
    assert np.all(wave[8000 + 10 :] == 0)  # exact silence after the tone
    level = 20 * np.log10(np.abs(wave).max())
    assert -21 < level < -5


def test_decodes_50_random_strings_with_noise_and_drift():
    voice = DtmfVoice()
    for seed in range(50):
        wave, events = _utterance(seed, voice)
        _check(decode_dtmf(wave), events, tol_s=0.006)


def test_decodes_user_digits_from_a_microphone_with_echo():
    """Repeat episodes: mic = user digits + room noise + echo of the model's reply (-30..-10 dB, 10-120 ms)."""
    for seed in range(12):
        ep = synthetic.generate("repeat", seed, duration_chunks=25)
        heard = decode_dtmf(ep.user_audio)
        user = [(t, s) for t, s in heard if t < ep.labels["user_end_s"]]
        assert "".join(s for _, s in user) == ep.labels["user_digits"]
        assert np.allclose([t for t, _ in user], ep.labels["user_onsets_s"], atol=0.006)
        echo = "".join(s for t, s in heard if t >= ep.labels["user_end_s"])
        it = iter(ep.labels["model_digits"])
        assert all(ch in it for ch in echo)  # echo digits, if loud enough, are the model's, in order
        model = decode_dtmf(ep.model_audio)
        assert [s for _, s in model] == [w for _, w in ep.model_words]


def test_decoder_ignores_silence_noise_and_short_blips():
    rng = np.random.default_rng(0)
    assert decode_dtmf(np.zeros(SR, np.float32)) == []
    assert decode_dtmf(rng.normal(0, 0.05, SR).astype(np.float32)) == []
    blip = DtmfVoice().render([(0.2, "7", 0.02)], SR, rng)
    assert decode_dtmf(blip) == []
    assert decode_dtmf(np.zeros(10, np.float32)) == []


def _slaney_mel(n_fft: int = 1024, n_mels: int = 80, fmin: float = 80.0, fmax: float = 7600.0) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular filterbank [n_mels, n_fft // 2 + 1] (DESIGN §2)."""
    def to_mel(f):
        f = np.asarray(f, np.float64)
        return np.where(f < 1000, f * 3 / 200, 15 + np.log(np.maximum(f, 1e-9) / 1000) / (np.log(6.4) / 27))

    def to_hz(m):
        return np.where(m < 15, m * 200 / 3, 1000 * np.exp((m - 15) * np.log(6.4) / 27))

    hz = to_hz(np.linspace(to_mel(fmin), to_mel(fmax), n_mels + 2))
    freqs = np.linspace(0, SR / 2, n_fft // 2 + 1)
    ramps = hz[:, None] - freqs[None, :]
    lower = -ramps[:-2] / np.diff(hz)[:-1, None]
    upper = ramps[2:] / np.diff(hz)[1:, None]
    return np.maximum(0, np.minimum(lower, upper)) * (2 / (hz[2:] - hz[:-2]))[:, None]


def _stft(x: np.ndarray, n_fft: int = 1024, hop: int = 200, win: int = 800) -> np.ndarray:
    window = np.zeros(n_fft)
    window[(n_fft - win) // 2 : (n_fft + win) // 2] = np.hanning(win + 1)[:-1]
    padded = np.pad(x, n_fft // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    return np.fft.rfft(frames * window, axis=1), window


def _istft(spec: np.ndarray, window: np.ndarray, length: int, hop: int = 200) -> np.ndarray:
    """Weighted overlap-add, vectorised by cutting each frame into hop-sized blocks."""
    n_fft, count = window.size, len(spec)
    k = -(-n_fft // hop)
    frames = np.zeros((count, k * hop))
    frames[:, :n_fft] = np.fft.irfft(spec, n_fft, axis=1) * window
    weights = np.zeros(k * hop)
    weights[:n_fft] = window**2
    out, norm = np.zeros((count + k, hop)), np.zeros((count + k, hop))
    for j in range(k):
        out[j : j + count] += frames[:, j * hop : (j + 1) * hop]
        norm[j : j + count] += weights[j * hop : (j + 1) * hop]
    out = out.reshape(-1) / np.maximum(norm.reshape(-1), 1e-8)
    return out[n_fft // 2 : n_fft // 2 + length]


def _mel_round_trip(wave: np.ndarray, quantize: bool) -> np.ndarray:
    """mel (magnitude, log10) -> optional dMel bins -> pinv -> fast Griffin-Lim (32 it, momentum 0.99)."""
    fb = _slaney_mel()
    spec, window = _stft(wave.astype(np.float64))
    mel = np.log10(np.maximum(np.abs(spec) @ fb.T, 1e-10))
    if quantize:
        mel = -7 + 0.6 * np.round((np.clip(mel, -7, 2) + 7) / 0.6)
    mag = np.maximum(10**mel @ np.linalg.pinv(fb).T, 0)
    angles = np.exp(2j * np.pi * np.random.default_rng(0).random(mag.shape))
    rebuilt = np.zeros_like(angles)
    for _ in range(32):
        previous = rebuilt
        rebuilt, _ = _stft(_istft(mag * angles, window, wave.size))
        angles = rebuilt - (0.99 / 1.99) * previous
        angles /= np.abs(angles) + 1e-16
    return _istft(mag * angles, window, wave.size).astype(np.float32)


def test_survives_a_mel_griffin_lim_round_trip():
    """Phase is scrambled and edges smeared: the decoder relies on per-frequency energy only."""
    voice = DtmfVoice()
    for seed in range(12):
        wave, events = _utterance(seed, voice)
        _check(decode_dtmf(_mel_round_trip(wave, quantize=seed % 2 == 1)), events, tol_s=0.025)


def test_voice_registry():
    assert get_voice("dtmf").decode is not None
    with pytest.raises(ValueError, match="unknown voice 'tts'; available: dtmf"):
        get_voice("tts")
    with pytest.raises(TypeError, match="Voice protocol"):
        register_voice("bad", object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot say 'x'"):
        DtmfVoice().render([(0.0, "x", 0.1)], SR, np.random.default_rng(0))
    with pytest.raises(ValueError, match="16000 Hz"):
        decode_dtmf(np.zeros(100), sr=8000)

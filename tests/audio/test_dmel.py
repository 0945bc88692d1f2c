"""dMel front-end: librosa/numpy agreement, streaming equalities, discretisation, transforms, bad inputs."""

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest

from interaction_jax.audio import dmel
from interaction_jax.bench.dmel import synthetic_audio
from interaction_jax.config import AudioConfig

SR = 16_000


def _reference_log_mel(wave: np.ndarray, center: bool) -> np.ndarray:
    """float64 numpy reference: librosa STFT with the 800-Hann padded to 1024, the documented floors."""
    window = np.pad(librosa.filters.get_window("hann", 800, fftbins=True), 112)
    spec = librosa.stft(
        wave.astype(np.float64), n_fft=1024, hop_length=200, window=window, center=center, pad_mode="reflect"
    )
    mag = np.sqrt(np.maximum(np.abs(spec) ** 2, 1e-10))
    fb = librosa.filters.mel(sr=SR, n_fft=1024, n_mels=80, fmin=80, fmax=7600, htk=False, norm="slaney")
    return np.log10(np.maximum(fb.astype(np.float64) @ mag, 1e-10)).swapaxes(-1, -2)


@pytest.fixture(scope="module")
def wave() -> np.ndarray:
    return synthetic_audio(2.0, seed=1)


def test_filterbank_matches_librosa():
    ref = librosa.filters.mel(sr=SR, n_fft=1024, n_mels=80, fmin=80, fmax=7600, htk=False, norm="slaney")
    fb = dmel.mel_filterbank()
    assert fb.shape == (513, 80) and fb.dtype == np.float32
    np.testing.assert_allclose(fb, ref.T, atol=1e-6, rtol=0)
    assert dmel.mel_filterbank(AudioConfig()) is fb  # cached
    with pytest.raises(ValueError):
        fb[0, 0] = 1.0  # read-only: no shared mutable state


def test_hann_is_periodic():
    np.testing.assert_allclose(
        dmel.hann_window(), librosa.filters.get_window("hann", 800, fftbins=True), atol=1e-7
    )


@pytest.mark.parametrize("center", [True, False])
def test_log_mel_matches_reference(wave, center):
    ours = np.asarray(dmel.log_mel(wave, center=center))
    ref = _reference_log_mel(wave, center)
    assert ours.shape == ref.shape == (dmel.num_frames(len(wave), center), 80)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    # the signal really does exercise silence (floor) and loud frames
    assert ours.min() < -6.0 and ours.max() > 0.0


def test_log_mel_low_level_hits_floor(wave):
    quiet = (wave[:8000] * 1e-5).astype(np.float32)
    quiet[2000:6000] = 0.0
    ours = np.asarray(dmel.log_mel(quiet))
    np.testing.assert_allclose(ours, _reference_log_mel(quiet, True), atol=1e-4, rtol=0)
    floor = np.log10(np.sqrt(1e-10) * dmel.mel_filterbank().sum(0))
    np.testing.assert_allclose(ours[20], floor, atol=1e-5)  # frame 20 lies inside the digital silence


def test_frame_counts():
    assert dmel.num_frames(32_000, center=True) == 161
    assert dmel.num_frames(32_000, center=False) == 155
    assert dmel.log_mel(np.zeros(1024, np.float32), center=False).shape == (1, 80)
    assert dmel.log_mel(np.zeros(1223, np.float32), center=False).shape == (1, 80)
    assert dmel.log_mel(np.zeros(1224, np.float32), center=False).shape == (2, 80)


def test_batch_dims(wave):
    batch = np.stack([wave[:6400], wave[6400:12800] * 0.5, wave[12800:19200]]).reshape(3, 1, 6400)
    out = np.asarray(dmel.log_mel(batch))
    assert out.shape == (3, 1, 33, 80)
    for i in range(3):
        np.testing.assert_allclose(out[i, 0], np.asarray(dmel.log_mel(batch[i, 0])), atol=1e-5)


def _stream(wave: np.ndarray) -> np.ndarray:
    state = dmel.stream_init()
    frames = []
    for start in range(0, len(wave), 3200):
        state, f = dmel.stream_step(state, wave[start : start + 3200])
        assert f.shape == (16, 80)
        frames.append(np.asarray(f))
    return np.concatenate(frames)


def test_stream_equals_padded_offline(wave):
    wave = wave[: 3200 * 6]
    streamed = _stream(wave)
    padded = np.concatenate([np.zeros(712, np.float32), wave, np.zeros(112, np.float32)])
    offline = np.asarray(dmel.log_mel(padded, center=False))
    assert streamed.shape == offline.shape == (96, 80)
    np.testing.assert_allclose(streamed, offline, atol=1e-5, rtol=0)


def test_stream_interior_equals_centered_offline(wave):
    wave = wave[: 3200 * 6]
    streamed = _stream(wave)
    offline = np.asarray(dmel.log_mel(wave, center=True))
    # stream frame m covers [200m-600, 200m+200) = offline frame m-1; both lie inside the wave for m >= 3
    np.testing.assert_allclose(streamed[3:], offline[2 : len(streamed) - 1], atol=1e-5, rtol=0)
    # at the start the stream sees zeros where the offline frames see the reflection, so they differ
    assert np.abs(streamed[1:3] - offline[0:2]).max() > 1e-2


def test_stream_batched_and_jitted(wave):
    chunks = wave[:6400].reshape(2, 3200)
    state, frames = jax.jit(dmel.stream_step)(dmel.stream_init((2,)), chunks)
    assert state.context.shape == (2, 600) and frames.shape == (2, 16, 80)
    np.testing.assert_allclose(state.context, chunks[:, -600:])
    _, vframes = jax.vmap(dmel.stream_step)(dmel.stream_init((2,)), chunks)
    np.testing.assert_allclose(vframes, frames, atol=1e-6)
    with pytest.raises(ValueError, match="batch shape"):
        dmel.stream_step(dmel.stream_init(), chunks)
    with pytest.raises(ValueError, match="exactly 3200 samples"):
        dmel.stream_step(dmel.stream_init(), wave[:3000])


def test_discretize_round_trip():
    x = np.linspace(-7.0, 2.0, 10_001, dtype=np.float32)
    bins = dmel.discretize(x)
    assert bins.dtype == jnp.int32
    assert int(bins.min()) == 0 and int(bins.max()) == 15
    back = np.asarray(dmel.undiscretize(bins))
    assert back.dtype == np.float32
    assert np.abs(back - x).max() <= 0.3 + 1e-6
    np.testing.assert_allclose(dmel.undiscretize(jnp.arange(16)), -7.0 + 0.6 * np.arange(16), atol=1e-6)
    np.testing.assert_array_equal(dmel.discretize(np.array([-50.0, -6.71, -6.69, 1.71, 9.0])), [0, 0, 1, 15, 15])
    # centres are fixed points
    np.testing.assert_array_equal(dmel.discretize(dmel.undiscretize(jnp.arange(16))), np.arange(16))


def test_discretize_real_log_mel(wave):
    bins = np.asarray(dmel.discretize(dmel.log_mel(wave)))
    assert bins.shape == (161, 80) and ((bins >= 0) & (bins < 16)).all()
    assert len(np.unique(bins)) > 8


def test_mel_normalisation_is_derived_from_the_front_end():
    """Silence is -1 and a full-scale sine is +1 in every channel; the map inverts inside that range."""
    floor, ceiling = dmel.mel_range()
    silence = np.asarray(dmel.log_mel(np.zeros(4000, np.float32)))
    np.testing.assert_allclose(silence, np.broadcast_to(floor, silence.shape), atol=1e-5)
    np.testing.assert_allclose(dmel.normalize_mel(silence), -1.0, atol=1e-5)
    t = np.arange(8000) / 16000
    loudest = []
    for hz in (300.0, 1209.0, 5000.0):
        mel = dmel.normalize_mel(dmel.log_mel(np.sin(2 * np.pi * hz * t).astype(np.float32)))
        loudest.append(float(np.max(mel)))
    assert all(0.97 <= v <= 1.0 for v in loudest), loudest  # a 0 dBFS sine reaches (but never passes) +1
    x = np.random.default_rng(0).uniform(floor, ceiling, (20, 80)).astype(np.float32)
    np.testing.assert_allclose(dmel.denormalize_mel(dmel.normalize_mel(x)), x, atol=1e-4)
    np.testing.assert_allclose(dmel.normalize_mel(jnp.asarray(x)), dmel.normalize_mel(x), atol=1e-6)  # jax == numpy
    assert float(np.min(dmel.normalize_mel(floor - 5.0))) == -1.0  # clipped into range


def test_jit_vmap_grad(wave):
    short = wave[:4000]
    jitted = jax.jit(dmel.log_mel, static_argnames=("center",))
    np.testing.assert_allclose(jitted(short), dmel.log_mel(short), atol=1e-6)
    batch = np.stack([short, short[::-1].copy()])
    np.testing.assert_allclose(jax.vmap(dmel.log_mel)(batch), dmel.log_mel(batch), atol=1e-6)
    silent = short.copy()
    silent[1000:2500] = 0.0  # digital silence: the floor inside the sqrt keeps the gradient finite
    grad = jax.jit(jax.grad(lambda w: dmel.log_mel(w).sum()))(silent)
    assert grad.shape == silent.shape and bool(jnp.isfinite(grad).all()) and float(jnp.abs(grad).max()) > 0
    np.testing.assert_array_equal(jax.jit(dmel.discretize)(jnp.array([-7.0, 2.0])), [0, 15])
    np.testing.assert_allclose(jax.vmap(dmel.undiscretize)(jnp.array([[0], [15]])), [[-7.0], [2.0]], atol=1e-6)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.array([0.0, np.nan] * 600, np.float32), "NaN or inf"),
        (np.array([0.0, np.inf] * 600, np.float32), "NaN or inf"),
        (np.zeros(1200, np.int16), "floating-point"),
        (np.float32(0.5), "0-d"),
        (np.zeros(0, np.float32), "non-empty"),
        (np.zeros((2, 0), np.float32), "non-empty"),
        (np.zeros(300, np.float32), "at least 513 samples"),
    ],
)
def test_bad_inputs(bad, message):
    with pytest.raises(ValueError, match=message):
        dmel.log_mel(bad)


def test_bad_input_jax_array_and_uncentered():
    with pytest.raises(ValueError, match="NaN or inf"):
        dmel.log_mel(jnp.full((2000,), jnp.nan))
    with pytest.raises(ValueError, match="at least 1024 samples"):
        dmel.log_mel(np.zeros(1000, np.float32), center=False)
    with pytest.raises(ValueError, match="floating-point"):
        dmel.stream_step(dmel.stream_init(), np.zeros(3200, np.int32))


def test_sample_rate_and_resample():
    dmel.check_sample_rate(16_000)
    with pytest.raises(ValueError, match=r"expected 16000 Hz audio, got 44100 Hz; resample first"):
        dmel.check_sample_rate(44_100)
    t = np.arange(44_100) / 44_100
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = dmel.resample(tone, 44_100)
    assert out.dtype == np.float32 and out.shape == (16_000,)
    expected = np.sin(2 * np.pi * 440 * np.arange(16_000) / 16_000)
    assert np.abs(out[500:-500] - expected[500:-500]).max() < 1e-2
    with pytest.raises(ValueError, match="floating-point"):
        dmel.resample(np.zeros(100, np.int16), 8000)

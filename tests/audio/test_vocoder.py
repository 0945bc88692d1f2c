"""Griffin-Lim vocoder: STFT round trip, mel inversion, quality vs librosa, streaming continuity and quality."""

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest

from interaction_jax.audio import dmel, vocoder
from interaction_jax.bench.dmel import synthetic_audio
from interaction_jax.config import AudioConfig

SR = 16_000
CFG = AudioConfig()


def _mel_error(wave: np.ndarray, target: np.ndarray) -> float:
    """Mean |log-mel error| of ``wave`` re-analysed, over frames/bins where the target is above -5."""
    got = np.asarray(dmel.log_mel(np.asarray(wave, np.float32)))
    n = min(len(got), len(target))
    mask = target[:n] >= -5.0
    return float(np.abs(got[:n] - target[:n])[mask].mean())


@pytest.fixture(scope="module")
def target() -> np.ndarray:
    return np.asarray(dmel.log_mel(synthetic_audio(2.0, seed=3)))


@pytest.fixture(scope="module")
def offline_error(target) -> float:
    return _mel_error(vocoder.griffin_lim(target), target)


def test_stft_istft_round_trip():
    # With the true phase, our analysis + window-sum-square synthesis is a perfect reconstruction.
    x = synthetic_audio(0.5, seed=2)
    t = dmel.num_frames(len(x))
    padded = jnp.pad(jnp.asarray(x), 400)  # frame m's window starts at sample 200m - 400
    spec = dmel.segments_to_spectrum(dmel.frame_segments(padded, t, CFG), CFG)
    back = np.asarray(vocoder._istft_buffer(spec, CFG))[400 : 400 + len(x)]
    np.testing.assert_allclose(back, x, atol=1e-5)


def test_mel_to_linear(target):
    mags = np.asarray(vocoder.mel_to_linear(target))
    assert mags.shape == (len(target), 513) and (mags >= 0).all()
    fb = dmel.mel_filterbank()
    mel = 10.0**target
    refined = np.asarray(vocoder.mel_to_linear(target, refine_iters=32))
    assert (refined >= 0).all()
    # the NNLS refinement recovers the mel fit that clipping the pseudo-inverse lost
    assert np.linalg.norm(refined @ fb - mel) < 0.5 * np.linalg.norm(mags @ fb - mel)


def test_griffin_lim_shapes_and_transforms(target):
    short = target[:40]
    wave = vocoder.griffin_lim(short, n_iter=4)
    assert wave.shape == (200 * 39,) and wave.dtype == jnp.float32 and bool(jnp.isfinite(wave).all())
    assert vocoder.griffin_lim(short, n_iter=4, length=8000).shape == (8000,)
    batch = np.stack([short, short - 1.0])
    batched = vocoder.griffin_lim(batch, n_iter=4)
    assert batched.shape == (2, 200 * 39)
    np.testing.assert_allclose(batched[0], wave, atol=1e-4)
    vmapped = jax.jit(jax.vmap(lambda m: vocoder.griffin_lim(m, n_iter=4)))(batch)
    np.testing.assert_allclose(vmapped, batched, atol=1e-4)
    assert not np.allclose(vocoder.griffin_lim(short, n_iter=4, seed=1), wave, atol=1e-3)
    with pytest.raises(ValueError, match="frames >= 2, 80"):
        vocoder.griffin_lim(short[:, :40])


def test_griffin_lim_quality_vs_librosa(target, offline_error):
    # librosa.feature.inverse.mel_to_audio is mel_to_stft (NNLS) followed by griffinlim; we call the two
    # steps ourselves only to pass a fixed random_state, with mel_to_audio's defaults otherwise.
    mag = librosa.feature.inverse.mel_to_stft(
        (10.0**target).T, sr=SR, n_fft=1024, power=1.0, fmin=80, fmax=7600, norm="slaney", htk=False
    )
    ref = librosa.griffinlim(
        mag,
        n_iter=32,
        hop_length=200,
        win_length=800,
        n_fft=1024,
        window="hann",
        center=True,
        momentum=0.99,
        random_state=0,
    )
    librosa_error = _mel_error(ref, target)
    ratio = offline_error / librosa_error
    print(f"\nGriffin-Lim log-mel error: ours {offline_error:.4f}, librosa {librosa_error:.4f}, ratio {ratio:.3f}")
    assert ratio <= 1.0
    assert offline_error < 0.1  # absolute sanity: about a quarter of a dMel bin


def _stream(log_mel: np.ndarray, lookahead: int = 0) -> np.ndarray:
    state = vocoder.griffin_lim_stream_init(lookahead=lookahead)
    out = []
    for start in range(0, len(log_mel) - 15, 16):
        state, wave = vocoder.griffin_lim_stream_step(state, log_mel[start : start + 16])
        assert wave.shape == (3200,)
        out.append(np.asarray(wave))
    return np.concatenate(out)


def test_stream_has_no_clicks_on_steady_tone():
    t = np.arange(SR * 2) / SR
    tone = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    wave = _stream(np.asarray(dmel.log_mel(tone)))
    step = np.abs(np.diff(wave))
    boundaries = np.arange(3200, len(wave) - 3200, 3200) - 1  # diff across each chunk boundary
    steady = step[3200:-3200]
    assert step[boundaries].max() <= 3.0 * np.median(steady)
    assert np.median(steady) > 0.01  # the stream is really playing the tone


def test_stream_quality_close_to_offline(target, offline_error):
    wave = _stream(target)[vocoder.griffin_lim_stream_delay(0) :]
    n = len(wave) // 200 - 3  # the last frames would need samples the stream has not emitted yet
    stream_error = _mel_error(wave, target[:n])
    print(f"\nstreaming GL error {stream_error:.4f} vs offline {offline_error:.4f}")
    assert stream_error <= 1.5 * offline_error


def test_stream_batched_matches_single(target):
    blocks = np.stack([target[:16], target[16:32]])
    state, wave = jax.jit(vocoder.griffin_lim_stream_step)(vocoder.griffin_lim_stream_init((2,)), blocks)
    assert wave.shape == (2, 3200) and state.spec.shape == (2, 3, 513)
    _, single = vocoder.griffin_lim_stream_step(vocoder.griffin_lim_stream_init(), target[16:32])
    np.testing.assert_allclose(wave[1], single, atol=1e-4)
    with pytest.raises(ValueError, match="expected a log-mel block of shape"):
        vocoder.griffin_lim_stream_step(vocoder.griffin_lim_stream_init(), target[:10])
    with pytest.raises(ValueError, match="lookahead"):
        vocoder.griffin_lim_stream_init(lookahead=16)

"""Audio-in front-ends: what the model hears in its AUDIO_IN slots (``model.audio_in``).

Each variant has the same two halves:

* a **feature** computed outside the network, identically by the data pipeline (numpy, ``features_numpy``)
  and by the streaming engine (jax, ``features``): the batch key ``audio_in`` holds it, one row per chunk;
* a **module** that turns one chunk's feature into its ``A = F / k`` tokens ``[..., A, D]``.

=================  ============================  ==========================================================
variant            feature per chunk             tokens
=================  ============================  ==========================================================
``dmel``           int32 [F, M] dMel bins        bag of embeddings: one learned row per (frame, channel, bin)
``mel_linear``     float32 [F, M] log-mel        one linear layer on the k x M normalised log-mel of a token
``wave_linear``    float32 [chunk_samples]       one linear layer on the token's raw 50 ms of waveform
=================  ============================  ==========================================================

``mel_linear`` sees the same streaming log-mel that dMel discretises (normalised to [-1, 1] per channel
with the output's own range), so the two differ only by the discretisation and the bag. ``wave_linear``
skips the STFT too; each token reads exactly the samples of its own 50 ms, so it is causal by construction.

The modules are attached with ``nn.share_scope``: their params sit at the top of the model's tree
(``dmel_table``, ``audio_in_linear``), so checkpoints made before the switch existed still load.
"""

from __future__ import annotations

from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from interaction_jax.audio import dmel
from interaction_jax.config import AudioConfig

AudioIn = Literal["dmel", "mel_linear", "wave_linear"]
VARIANTS: tuple[str, ...] = ("dmel", "mel_linear", "wave_linear")
Dtype = Any

# wave_linear: a -20 dBFS sine (RMS 0.07) becomes a token of RMS ~1, like a dMel tone token. With a fan-in
# init the same tone gives RMS ~0.07 and a -60 dBFS room ~1e-4, far below the RMS-1 slot embeddings added to it.
WAVE_REFERENCE_RMS = 0.07


def check(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"model.audio_in={variant!r}: use one of {', '.join(VARIANTS)}")


def feature_spec(variant: str, audio: AudioConfig) -> tuple[tuple[int, ...], np.dtype]:
    """Shape (per chunk) and dtype of the ``audio_in`` batch key for ``variant``."""
    check(variant)
    if variant == "wave_linear":
        return (audio.chunk_samples,), np.dtype(np.float32)
    return (audio.frames_per_chunk, audio.n_mels), np.dtype(np.int32 if variant == "dmel" else np.float32)


def features_numpy(variant: str, log_mel_in: np.ndarray, wave: np.ndarray, audio: AudioConfig) -> np.ndarray:
    """Data-pipeline features for ``n`` chunks: streaming log-mel [n*F, M] and the microphone [n*chunk_samples]."""
    check(variant)
    n = wave.shape[-1] // audio.chunk_samples
    if variant == "dmel":
        return dmel.discretize_numpy(log_mel_in, audio).reshape(n, audio.frames_per_chunk, audio.n_mels)
    if variant == "mel_linear":
        return dmel.normalize_mel(np.asarray(log_mel_in, np.float32), audio).reshape(
            n, audio.frames_per_chunk, audio.n_mels)
    return np.asarray(wave, np.float32).reshape(n, audio.chunk_samples)


def features(variant: str, log_mel_in: jax.Array, wave: jax.Array, audio: AudioConfig) -> jax.Array:
    """The same for one streaming chunk per row: log-mel [B, F, M] and audio [B, chunk_samples] -> [B, ...]."""
    check(variant)
    if variant == "dmel":
        return dmel.discretize(log_mel_in, audio)
    if variant == "mel_linear":
        return dmel.normalize_mel(jnp.asarray(log_mel_in, jnp.float32), audio)
    return jnp.asarray(wave, jnp.float32)


def random_features(variant: str, shape: tuple[int, ...], audio: AudioConfig, rng: np.random.Generator) -> np.ndarray:
    """A random ``audio_in`` of ``shape`` in the variant's range (dummy batches for init, tests, benchmarks)."""
    check(variant)
    if variant == "dmel":
        return rng.integers(0, audio.dmel_bins, shape, dtype=np.int32)
    if variant == "mel_linear":
        return rng.uniform(-1.0, 1.0, shape).astype(np.float32)
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)


def dmel_table_init(frames_per_token: int, num_mels: int, noise: float = 0.3):
    """Init of the dMel table [k*M cells, B bins, D]: ``2^(b - B + 1) * scale * (u_channel + noise * n)``.

    A token sums one row per time-frequency cell. Two structures are built in, and the rows stay free:

    * **Loudness weighting** (row norm doubles per bin). With equal rows, a DTMF tone (a few cells 3-4
      bins above the room-noise floor, bin ~7 of 16) and the ~300 cells of noise around it weigh the
      same, and the tone drowns.
    * **One direction per mel channel** (``u_channel``, shared by the k frames and all bins of a channel).
      With independent rows, the same tone at another level or 12 ms later in the token lands on unrelated
      rows. Shared directions make the token start as a random projection of the loudness spectrum.

    Measured on repeat episodes (cosine of tokens inside tones): independent equal rows gave 0.43 for the
    same digit vs 0.37 for different digits, and the model did not learn to name a heard digit in 200
    steps; this init gives 0.94 vs 0.55.
    """

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        _cells, bins, d = shape
        k_u, k_n = jax.random.split(key)
        u = jnp.tile(jax.random.normal(k_u, (num_mels, d)), (frames_per_token, 1))[:, None, :]
        rows = u + noise * jax.random.normal(k_n, shape)
        # scale: a token whose ~20 loudest cells sit 4 bins below the top starts at RMS ~1
        gain = 2.0 ** (jnp.arange(bins, dtype=jnp.float32) - (bins - 1)) * (16.0 / 20**0.5)
        return (rows * gain[None, :, None]).astype(dtype)

    return init


class DMelBag(nn.Module):
    """int32 [..., F, M] dMel bins -> [..., F/k, D]: each token sums one learned row per (frame, channel, bin).

    Computed as a one-hot contraction: on TPU a dense matmul beats a gather of k*M rows per token, and its
    gradient is a matmul instead of a scatter-add. Param: ``dmel_table`` [k*M, bins, D].
    """

    frames_per_token: int
    num_mels: int
    bins: int
    dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, feats: jax.Array) -> jax.Array:
        cells = self.frames_per_token * self.num_mels
        table = self.param("dmel_table", nn.with_logical_partitioning(
            dmel_table_init(self.frames_per_token, self.num_mels), (None, None, "embed")),
            (cells, self.bins, self.dim), jnp.float32)
        grouped = feats.reshape(*feats.shape[:-2], feats.shape[-2] // self.frames_per_token, cells)
        onehot = jax.nn.one_hot(grouped, self.bins, dtype=self.dtype)
        return jnp.einsum("...cb,cbd->...d", onehot, table.astype(self.dtype))


class LinearIn(nn.Module):
    """float per-chunk feature -> [..., tokens, D]: split into ``tokens`` equal patches, one shared Dense.

    ``mel_linear``: the feature is [F, M] and a patch is the token's k frames x M channels. ``wave_linear``:
    it is [chunk_samples] and a patch is the token's own 50 ms. Param: ``audio_in_linear`` {kernel, bias}.
    """

    tokens: int
    dim: int
    feature_rank: int  # trailing axes of one chunk's feature: 2 for [F, M], 1 for [samples]
    init_scale: float = 1.0  # output RMS / input RMS at init (fan-in variance scaling); see WAVE_REFERENCE_RMS
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, feats: jax.Array) -> jax.Array:
        patches = feats.reshape(*feats.shape[: feats.ndim - self.feature_rank], self.tokens, -1)
        init = nn.initializers.variance_scaling(self.init_scale**2, "fan_in", "truncated_normal")
        dense = nn.Dense(
            self.dim, dtype=self.dtype, param_dtype=jnp.float32, name="audio_in_linear",
            kernel_init=nn.with_logical_partitioning(init, (None, "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        )
        return dense(patches.astype(self.dtype))


def make(variant: str, audio: AudioConfig, dim: int, dtype: Dtype) -> nn.Module:
    """The module for ``variant`` (``F / k`` tokens per chunk, k = ``audio.frames_per_token``)."""
    check(variant)
    tokens = audio.frames_per_chunk // audio.frames_per_token
    if variant == "dmel":
        return DMelBag(audio.frames_per_token, audio.n_mels, audio.dmel_bins, dim, dtype)
    if variant == "mel_linear":
        return LinearIn(tokens=tokens, dim=dim, feature_rank=2, dtype=dtype)
    return LinearIn(tokens=tokens, dim=dim, feature_rank=1, init_scale=1.0 / WAVE_REFERENCE_RMS, dtype=dtype)

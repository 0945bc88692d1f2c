"""grain pipeline: Episodes (from ArrayRecord shards or generated on the fly) -> micro-turn windows -> batches.

Every stage is a ``grain.MapDataset`` (random access by index), so the whole pipeline is deterministic and
its iterator state is a tiny dict (the next index), which the checkpoint saves. Per-process sharding slices
the global index space by ``process_index::process_count``, so processes never see the same window.

The arrays follow the batch contract documented in ``interaction_jax/model.py``. How each stream is built:

* ``audio_in``: the microphone analysed exactly like the streaming front-end (600 carried samples, frame m
  ends on sample 200m+200), then discretised to dMel bins. Training therefore sees what serving sees.
* ``mel_out`` of chunk n: the model's voice during interval n+1 (centred analysis, frames 16(n+1)..),
  log10-mel clipped to the dMel range [-7, 2] and normalised to [-1, 1]. The last chunk has no next
  interval inside the episode, so its weight is 0.
* ``text_out``: Moshi-style inner monologue. A word whose onset falls in interval n+1 starts its tokens in
  chunk n's TEXT_OUT slots (spilling into later slots if needed), EPAD sits just before it, PAD elsewhere.
* ``text_in``: each typed event enters the FIFO at the chunk of its timestamp; PAD when the queue is empty.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np

from interaction_jax import paths
from interaction_jax.audio import dmel
from interaction_jax.config import Config
from interaction_jax.data.episode import CHUNK_SAMPLES, Episode, read_record, shard_len
from interaction_jax.data.synthetic.tasks import MIN_TEXT_RATE
from interaction_jax.frontends import audio_in as audio_in_lib
from interaction_jax.layout import Layout
from interaction_jax.model import TOKEN_KEYS
from interaction_jax.text import tokenizer

KIND_PAD, KIND_EPAD, KIND_WORD = 0, 1, 2  # text-out target kinds (the loss weighs them separately)
STREAM_PAD_LEFT = 712  # see audio/dmel.py: streaming frame m == centre-less frame of the left-padded wave
STREAM_PAD_RIGHT = 112


# ------------------------------------------------------------------------------------------ episode -> arrays


def text_out_stream(words: list[tuple[float, str]], num_chunks: int, slots: int, chunk_s: float = 0.2):
    """Flat [num_chunks * slots] target ids and token kinds (``KIND_PAD/EPAD/WORD``) from word onsets.

    A word whose onset falls in interval n+1 is described by chunk n: EPAD in chunk n's first free slot,
    then the word's bytes (spilling into the next chunks if they do not fit). Nothing is ever placed before
    chunk n, so no timing token precedes the chunk in which its cause could be heard (the old layout put
    EPAD in the last slot of chunk n-1, before the reply could be known).
    """
    ids = np.full(num_chunks * slots, tokenizer.PAD, np.int32)
    kind = np.full(num_chunks * slots, KIND_PAD, np.int8)
    cursor = 0
    for onset, text in sorted(words):
        toks = tokenizer.encode(text)
        chunk = max(int(np.floor(onset / chunk_s + 1e-9)) - 1, 0)  # interval n+1 is described by chunk n
        start = max(chunk * slots, cursor)
        if start >= ids.size:
            break
        ids[start], kind[start] = tokenizer.EPAD, KIND_EPAD
        end = min(start + 1 + len(toks), ids.size)
        ids[start + 1 : end] = toks[: end - start - 1]
        kind[start + 1 : end] = KIND_WORD
        cursor = end
    return ids, kind


def text_in_stream(events: list[tuple[float, str]], num_chunks: int, slots: int, chunk_s: float = 0.2):
    """[num_chunks, slots] FIFO of typed text: tokens enter at their event's chunk, PAD when empty."""
    arrivals: list[tuple[int, int]] = []
    for time_s, text in sorted(events):
        arrivals += [(int(time_s / chunk_s), t) for t in tokenizer.encode(text)]
    out = np.full((num_chunks, slots), tokenizer.PAD, np.int32)
    queue_pos = 0
    for n in range(num_chunks):
        for s in range(slots):
            if queue_pos < len(arrivals) and arrivals[queue_pos][0] <= n:
                out[n, s] = arrivals[queue_pos][1]
                queue_pos += 1
    return out


def _pad_to(wave: np.ndarray, length: int) -> np.ndarray:
    return np.pad(wave[:length], (0, max(0, length - wave.size)))


def check_layout(config: Config) -> None:
    """The synthetic tasks assume what their causality rules need from the slot layout (tasks.py)."""
    t = config.text
    if t.text_out_slots < 2:
        raise ValueError(f"text.text_out_slots={t.text_out_slots}: need >= 2 (EPAD and a symbol in one chunk)")
    if t.text_in_slots < MIN_TEXT_RATE:
        raise ValueError(f"text.text_in_slots={t.text_in_slots}: the synthetic tasks time replies for typed text "
                         f"delivered at >= {MIN_TEXT_RATE} bytes per chunk")


def episode_arrays(ep: Episode, config: Config) -> dict[str, np.ndarray]:
    """One Episode -> per-chunk arrays [N, ...] in the model's batch contract (no batch axis)."""
    a, lay = config.audio, Layout.from_config(config.audio, config.vision, config.text)
    n = ep.num_chunks
    user = _pad_to(ep.user_audio.astype(np.float32), n * a.chunk_samples)
    model = _pad_to(ep.model_audio.astype(np.float32), (n + 1) * a.chunk_samples)
    stream_in = np.concatenate(
        [np.zeros(STREAM_PAD_LEFT, np.float32), user, np.zeros(STREAM_PAD_RIGHT, np.float32)]
    )
    mel_in = dmel.log_mel_numpy(stream_in, center=False, config=a)[: n * a.frames_per_chunk]
    mel_model = dmel.log_mel_numpy(model, center=True, config=a)[: (n + 1) * a.frames_per_chunk]
    mel_model = dmel.normalize_mel(mel_model, a)
    ids, _ = text_out_stream(ep.model_words, n, lay.num_text_out)
    out = {
        "audio_in": audio_in_lib.features_numpy(config.model.audio_in, mel_in, user, a),
        "text_in": text_in_stream(ep.user_text, n, lay.num_text_in),
        "text_out": ids.reshape(n, lay.num_text_out),
        "text_out_weight": np.ones((n, lay.num_text_out), np.float32),
        "mel_out": np.asarray(mel_model, np.float32).reshape(n + 1, a.frames_per_chunk, a.n_mels)[1:],
        "mel_out_weight": (np.arange(n) < n - 1).astype(np.float32),
    }
    if lay.num_video:
        out["frames"], out["frame_mask"] = _frames(ep, n, config)
        out["frame_text"], out["frame_text_weight"] = frame_text_arrays(ep, n)
        out["frame_motion"], out["frame_motion_weight"] = frame_motion_arrays(ep, n)
    (out["heard_text"], out["heard_text_weight"], out["heard_onset"],
     out["heard_prev"]) = heard_text_arrays(ep, n, lay.num_audio)
    return out


HEARD_ECHO_GUARD_S = 0.15  # > the longest echo delay (0.12 s) plus the analysis window's reach
HEARD_ONSET_DELAY_S = 0.025  # half the 50 ms analysis window: a symbol is named once that much of it is heard
# Two heard symbols belong to one utterance when the silence between them is at most this (the synthetic user's
# longest in-utterance gap is 0.15 s; tasks.REPLY_SILENCE_S = 0.2 s of silence means the user has finished).
UTTERANCE_GAP_S = 0.2


def heard_text_arrays(ep: Episode, n: int,
                      tokens_per_chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """[N, A] int32 first byte of what the user is saying in each AUDIO_IN token (PAD for nothing), its weight,
    [N, A] int32 the same byte only in the token where each utterance of it becomes audible (onsets), and
    [N, A] int32 ``heard_prev``: in those onset tokens, the symbol heard just before it in the same utterance (PAD
    for the first), and in the token where an utterance is heard to have ended (``UTTERANCE_GAP_S`` of silence),
    its last symbol; PAD elsewhere. Read together, the two label the heard string as a chain of (previous,
    this) pairs that ends in (last, nothing): what an induction copy follows, and where it stops.

    A token names a symbol when at least half of its interval lies inside the user's utterance of it
    (``labels["heard"]``, written by the synthetic tasks). Stream token j hears audio up to the end of its
    50 ms (audio/dmel.py), so a symbol's onset token is the one holding ``onset + HEARD_ONSET_DELAY_S``:
    enough of the tone is inside the last analysis window to be heard, and no token names a symbol before
    it can. The weight is 1 where a label exists, except on unlabelled (PAD) tokens that may hold the echo
    of the model's own voice: the microphone hears it, but it is not the user, and asking the front-end to
    tell a quiet echo from a quiet user by level alone would teach it to ignore quiet users. Real episodes
    carry no label and weigh 0 everywhere, so the optional heard-text auxiliaries (``model.heard_text_weight``,
    ``model.heard_onset_weight``) never invent targets for them.
    """
    ids = np.full((n, tokens_per_chunk), tokenizer.PAD, np.int32)
    onsets, prev = ids.copy(), ids.copy()
    weight = np.zeros((n, tokens_per_chunk), np.float32)
    events = ep.labels.get("heard")
    if events is None:
        return ids, weight, onsets, prev
    token_s = CHUNK_SAMPLES / ep.sample_rate / tokens_per_chunk
    starts = np.arange(n * tokens_per_chunk) * token_s
    flat_ids, flat_w = ids.reshape(-1), weight.reshape(-1)
    for event in events:
        if not (isinstance(event, (list, tuple)) and len(event) == 3 and isinstance(event[2], str) and event[2]):
            raise ValueError(f"labels['heard'] holds {event!r}: need [onset_s, duration_s, symbol]")
    flat_onsets, flat_prev, total = onsets.reshape(-1), prev.reshape(-1), n * tokens_per_chunk
    ordered = sorted(events, key=lambda e: float(e[0]))
    last_end, last_symbol = -np.inf, tokenizer.PAD
    for k, event in enumerate(ordered):
        onset, dur, symbol = float(event[0]), float(event[1]), event[2]
        byte = tokenizer.encode(symbol)[0]
        inside = np.clip(np.minimum(starts + token_s, onset + dur) - np.maximum(starts, onset), 0.0, None)
        flat_ids[inside >= token_s / 2] = byte
        first = int((onset + HEARD_ONSET_DELAY_S) / token_s + 1e-9)
        if first < total:
            flat_onsets[first] = byte
            flat_prev[first] = last_symbol if onset - last_end <= UTTERANCE_GAP_S else tokenizer.PAD
        last_end, last_symbol = onset + dur, byte
        next_onset = float(ordered[k + 1][0]) if k + 1 < len(ordered) else np.inf
        if next_onset - last_end > UTTERANCE_GAP_S:  # the utterance ends: its end is heard once the silence is long
            end = int((last_end + UTTERANCE_GAP_S + HEARD_ONSET_DELAY_S) / token_s + 1e-9)
            if end < total:
                flat_prev[end] = byte  # a later utterance's onset in the same token overwrites this
    sr = ep.sample_rate
    loud = np.abs(ep.model_audio) > 0
    for i, t0 in enumerate(starts):
        lo, hi = int(max(t0 - HEARD_ECHO_GUARD_S, 0.0) * sr), int((t0 + token_s) * sr)
        flat_w[i] = 1.0 if flat_ids[i] != tokenizer.PAD or not loud[lo:hi].any() else 0.0
    flat_w[onsets.reshape(-1) != tokenizer.PAD] = 1.0
    return ids, weight, onsets, prev


def _frame_labels(ep: Episode, key: str) -> list | None:
    """The episode's per-frame labels under ``key`` (None if it has none or no frames); one per frame."""
    labels = ep.labels.get(key)
    if labels is None or ep.frames is None:
        return None
    if len(labels) != len(ep.frames):
        raise ValueError(f"labels[{key!r}] has {len(labels)} entries for {len(ep.frames)} frames")
    return labels


def frame_text_arrays(ep: Episode, n: int) -> tuple[np.ndarray, np.ndarray]:
    """[N] int32 first byte of the text readable in each frame (PAD for none) and [N] float32 label weight.

    The weight is 1 only where the episode labels its frames (``labels["frame_text"]``, written by the
    synthetic video tasks) and a frame exists: real episodes carry no label and weigh 0, so the optional
    frame-text auxiliary loss (``model.frame_text_weight``) never invents targets for them.
    """
    ids = np.full(n, tokenizer.PAD, np.int32)
    weight = np.zeros(n, np.float32)
    labels = _frame_labels(ep, "frame_text")
    if labels is None:
        return ids, weight
    for i, text in enumerate(labels[:n]):
        ids[i] = tokenizer.encode(text)[0] if text else tokenizer.PAD
    weight[: min(n, len(labels))] = 1.0
    return ids, weight


def frame_motion_arrays(ep: Episode, n: int) -> tuple[np.ndarray, np.ndarray]:
    """[N] float32 displacement of the moving object in each frame (0 at rest .. 1 at the far end) and [N]
    float32 weight: 1 where the episode labels it (``labels["frame_motion"]``, repcount scenes; None marks the
    unlabelled frames of other scenes), else 0, so real episodes never get invented targets."""
    value = np.zeros(n, np.float32)
    weight = np.zeros(n, np.float32)
    labels = _frame_labels(ep, "frame_motion")
    if labels is None:
        return value, weight
    got = np.array([np.nan if v is None else v for v in labels[:n]], np.float64)
    known = np.isfinite(got)
    value[: len(got)] = np.where(known, got, 0.0)
    weight[: len(got)] = known
    return value, weight


def _frames(ep: Episode, n: int, config: Config) -> tuple[np.ndarray, np.ndarray]:
    h, w = config.vision.height, config.vision.width
    frames = np.zeros((n, h, w, 3), np.uint8)
    mask = np.zeros(n, bool)
    if ep.frames is not None:
        src = ep.frames[:n]
        if src.shape[1:3] != (h, w):
            from PIL import Image

            src = np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR)) for f in src])
        frames[: len(src)] = src
        mask[: len(src)] = True
    return frames, mask


def crop_window(arrays: dict[str, np.ndarray], start: int, length: int) -> dict[str, np.ndarray]:
    """Chunks [start, start+length) of an episode; zero-weight padding past its end keeps shapes static."""
    out = {}
    for key, arr in arrays.items():
        piece = arr[start : start + length]
        if len(piece) < length:
            pad = np.zeros((length - len(piece), *arr.shape[1:]), arr.dtype)
            if key in TOKEN_KEYS:
                pad[...] = tokenizer.PAD
            piece = np.concatenate([piece, pad])
        out[key] = piece
    return out


# ------------------------------------------------------------------------------------------ grain sources


class SyntheticSource:
    """Example ``i`` generated from seed ``h(seed, i)``: infinite and exact.

    With ``window_chunks`` > 0 each example is a ``synthetic.stream`` of random tasks (drawn with
    ``weights``) at least one window long, so windows are packed with tasks instead of padding; otherwise
    example ``i`` is one episode of task ``tasks[h % T]``.
    """

    def __init__(self, tasks: tuple[str, ...], seed: int, voice: str = "dtmf", echo: bool = True,
                 length: int = 2**31 - 1, window_chunks: int = 0, weights: tuple[float, ...] = ()):
        from interaction_jax.data import synthetic

        unknown = [t for t in tasks if t not in synthetic.TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; available: {', '.join(synthetic.TASKS)}")
        if weights and len(weights) != len(tasks):
            raise ValueError(f"data.task_weights has {len(weights)} entries for {len(tasks)} tasks {list(tasks)}")
        self.tasks, self.seed, self.voice, self.echo, self.length = tasks, seed, voice, echo, length
        self.window_chunks, self.weights = window_chunks, tuple(weights) or None

    def __len__(self) -> int:
        return self.length

    def episode_seed(self, index: int) -> int:
        return int(np.random.default_rng([self.seed, index]).integers(2**31))

    def __getitem__(self, index: int) -> Episode:
        from interaction_jax.data import synthetic
        from interaction_jax.data.synthetic.tasks import stream

        s = self.episode_seed(index)
        if self.window_chunks:
            return stream(s, self.tasks, self.window_chunks, self.voice, self.echo, self.weights)
        task = self.tasks[s % len(self.tasks)]
        return synthetic.generate(task, s, voice=self.voice, echo=self.echo)


class ShardSource:
    """Random access over all records of a glob of ArrayRecord episode shards."""

    def __init__(self, pattern: str):
        self.paths = paths.glob(pattern)
        if not self.paths:
            raise FileNotFoundError(f"no episode shards match {pattern!r}")
        self.lengths = [shard_len(p) for p in self.paths]
        self.offsets = np.cumsum([0, *self.lengths])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> Episode:
        shard = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return read_record(self.paths[shard], index - int(self.offsets[shard]))


@dataclasses.dataclass(frozen=True)
class ToWindow:
    """Episode -> one fixed window; long episodes get a deterministic random start (index-seeded)."""

    config: Config

    def __call__(self, index: int, ep: Episode) -> dict[str, np.ndarray]:
        arrays = episode_arrays(ep, self.config)
        n, w = ep.num_chunks, self.config.data.window_chunks
        start = 0
        if n > w and ep.labels.get("task") != "stream":  # a packed stream starts fresh, as a session does
            start = int(np.random.default_rng([self.config.data.seed, index, 7]).integers(0, n - w + 1))
        return crop_window(arrays, start, w)


@dataclasses.dataclass(frozen=True)
class LocalRows:
    """Local example ``i`` of process ``p`` -> global example ``j*G + p*L + r`` (j = i // L, r = i % L).

    Each process reads only its own rows, yet the *global* batch j is the same examples in the same order
    for any number of processes: a 2-process run sees exactly the batches of a 1-process run.
    """

    windows: Any
    process_index: int
    process_count: int
    local_batch: int

    def __call__(self, i: int) -> dict[str, np.ndarray]:
        j, r = divmod(i, self.local_batch)
        return self.windows[j * self.local_batch * self.process_count + self.process_index * self.local_batch + r]


def make_dataset(
    config: Config,
    *,
    process_index: int = 0,
    process_count: int = 1,
    seed_offset: int = 0,
) -> grain.MapDataset:
    """Infinite, deterministic MapDataset of *local* batches for this process."""
    d = config.data
    if d.batch_size % process_count:
        raise ValueError(f"data.batch_size={d.batch_size} must be divisible by {process_count} processes")
    if d.shards:
        episodes = grain.MapDataset.source(ShardSource(d.shards)).shuffle(seed=d.seed + seed_offset).repeat(None)
    else:
        check_layout(config)
        episodes = grain.MapDataset.source(SyntheticSource(
            d.tasks, d.seed + seed_offset, d.voice, d.echo, window_chunks=d.window_chunks if d.pack else 0,
            weights=d.task_weights))
    windows = episodes.map_with_index(ToWindow(config))  # index = global example index
    local = d.batch_size // process_count
    rows = grain.MapDataset.range(2**40).map(LocalRows(windows, process_index, process_count, local))
    return rows.batch(local, drop_remainder=True)


def make_iterator(config: Config, *, process_index: int = 0, process_count: int = 1,
                  seed_offset: int = 0) -> grain.DatasetIterator:
    ds = make_dataset(config, process_index=process_index, process_count=process_count, seed_offset=seed_offset)
    d = config.data
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=d.read_threads, prefetch_buffer_size=d.prefetch_batches))
    if d.num_workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; we are not an absl app
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=d.num_workers))
    return iter(it_ds)


def describe_batch(batch: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(v.shape), str(v.dtype)) for k, v in batch.items()}

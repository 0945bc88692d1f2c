"""Episode: the aligned streams of one interaction, plus its versioned byte format and ArrayRecord shards.

An episode is what the model would have experienced in one conversation: the microphone (user voice, room
noise and the echo of the model's own voice, exactly as a real device hears it), the target voice the model
should produce, one video frame per 200 ms chunk, the typed user text and the timed words of the model's
inner monologue. Everything downstream (the grain pipeline, the evals, the file converters) relies on the
invariants checked by ``validate``, so a broken episode is rejected with a message that names where it came
from (``shard x.array_record, record 17: ...``) rather than surfacing later as a shape error inside jit.

Byte format (version 1), chosen to be exact, self-describing and cheap to decode::

    b"IJEP" | u16 version | u16 reserved | u32 header_len | u64 payload_len | u32 crc32(header + payload)
    header: UTF-8 JSON  {sample_rate, user_text, model_words, labels, arrays: [{name, dtype, shape, offset}]}
    payload: the raw little-endian array buffers, back to back

Audio stays float32: it round-trips bit-exactly (tests compare episodes with ``==``), and size is not a
problem because the shard writer's zstd compresses the long exact-zero silences of the model voice. A
10 s episode is about 1.3 MB of audio plus 1 MB of 80x80 frames before compression. The CRC catches flipped
bytes that the container cannot see (raw ``from_bytes`` input); the length fields catch truncation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000
CHUNK_SAMPLES = 3_200  # 200 ms: one micro-turn, one video frame
MAGIC = b"IJEP"
VERSION = 1
_PREFIX = struct.Struct("<4sHHIQI")  # magic, version, reserved, header_len, payload_len, crc32
SHARD_OPTIONS = "group_size:1"  # one record per chunk group: random access decodes only what it reads


class EpisodeError(ValueError):
    """An episode (or a shard of them) that breaks the schema; the message says where it came from."""


def _at(where: str, msg: str) -> str:
    return f"{where}: {msg}" if where else msg


@dataclasses.dataclass(eq=False)
class Episode:
    """Aligned streams of one interaction (see module docstring). Times are seconds from the start."""

    user_audio: np.ndarray  # float32 [N], 16 kHz microphone (dry user voice + room noise + echo)
    model_audio: np.ndarray  # float32 [N], 16 kHz target voice of the model
    frames: np.ndarray | None  # uint8 [F, H, W, 3], F = ceil(N / 3200): frame n is the image at t = 0.2 n
    user_text: list[tuple[float, str]]  # typed user text events (time_s, text)
    model_words: list[tuple[float, str]]  # what the model says: (onset_s, word)
    labels: dict[str, Any]  # JSON-serialisable task labels; always has "task"
    sample_rate: int = SAMPLE_RATE

    @property
    def num_samples(self) -> int:
        return int(self.user_audio.shape[0])

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sample_rate

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.num_samples / CHUNK_SAMPLES)

    def __eq__(self, other: object) -> bool:
        """Exact equality (dtype, shape and every value), which is what a serialization round trip promises."""
        if not isinstance(other, Episode):
            return NotImplemented

        def same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
            if a is None or b is None:
                return a is None and b is None
            return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)

        return (
            self.sample_rate == other.sample_rate
            and same(self.user_audio, other.user_audio)
            and same(self.model_audio, other.model_audio)
            and same(self.frames, other.frames)
            and _events(self.user_text) == _events(other.user_text)
            and _events(self.model_words) == _events(other.model_words)
            and json.dumps(self.labels, sort_keys=True) == json.dumps(other.labels, sort_keys=True)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable arrays: not hashable


def _events(events: Iterable[Any]) -> list[tuple[float, str]]:
    return [(float(t), str(s)) for t, s in events]


# ------------------------------------------------------------------------------------------ validation


def validate(ep: Episode, where: str = "") -> Episode:
    """Raise ``EpisodeError`` (message prefixed by ``where``) unless ``ep`` meets every schema invariant."""

    def fail(msg: str) -> None:
        raise EpisodeError(_at(where, msg))

    if not isinstance(ep, Episode):
        fail(f"expected an Episode, got {type(ep).__name__}")
    if ep.sample_rate != SAMPLE_RATE:
        fail(f"sample_rate is {ep.sample_rate} Hz; episodes must be {SAMPLE_RATE} Hz (resample before writing)")
    for name in ("user_audio", "model_audio"):
        wave = getattr(ep, name)
        if not isinstance(wave, np.ndarray) or wave.ndim != 1:
            fail(f"{name} must be a 1-D numpy array, got {getattr(wave, 'shape', type(wave).__name__)}")
        if wave.dtype != np.float32:
            fail(f"{name} has dtype {wave.dtype}; expected float32")
        bad = int(np.count_nonzero(~np.isfinite(wave)))
        if bad:
            nan = int(np.count_nonzero(np.isnan(wave)))
            parts = [f"{nan} NaN values"] * bool(nan) + [f"{bad - nan} inf values"] * bool(bad - nan)
            fail(f"{name} has {' and '.join(parts)}")
    n_user, n_model = ep.user_audio.shape[0], ep.model_audio.shape[0]
    if n_user != n_model:
        fail(f"user_audio has {n_user} samples but model_audio has {n_model}; the streams must be aligned")
    if n_user == 0:
        fail("the episode has no audio (0 samples)")
    if ep.frames is not None:
        f = ep.frames
        if not isinstance(f, np.ndarray) or f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3:
            fail(f"frames must be uint8 [F, H, W, 3], got {getattr(f, 'dtype', type(f).__name__)} "
                 f"{getattr(f, 'shape', '')}")
        if f.shape[0] != ep.num_chunks:
            fail(f"frames has {f.shape[0]} frames but the audio has {ep.num_chunks} chunks of 200 ms "
                 "(one frame per chunk, 5 fps)")
    dur = ep.duration_s
    for name in ("user_text", "model_words"):
        for i, item in enumerate(getattr(ep, name)):
            if not (isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[1], str)):
                fail(f"{name}[{i}] must be a (time_s, text) pair, got {item!r}")
            t = item[0]
            if not isinstance(t, numbers.Real) or not math.isfinite(t) or t < 0 or t > dur:
                fail(f"{name}[{i}] time {t!r} is outside the episode [0, {dur:.3f}] s")
    if not isinstance(ep.labels, dict) or not isinstance(ep.labels.get("task"), str):
        fail("labels must be a dict with a string 'task'")
    try:
        json.dumps(ep.labels)
    except (TypeError, ValueError) as e:
        fail(f"labels are not JSON-serialisable: {e}")
    return ep


# ------------------------------------------------------------------------------------------ bytes


def to_bytes(ep: Episode) -> bytes:
    """Serialise a (valid) episode into the versioned, CRC-protected format of the module docstring."""
    arrays: dict[str, np.ndarray] = {"user_audio": ep.user_audio, "model_audio": ep.model_audio}
    if ep.frames is not None:
        arrays["frames"] = ep.frames
    specs, buffers, offset = [], [], 0
    for name, arr in arrays.items():
        buf = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
        specs.append({"name": name, "dtype": arr.dtype.newbyteorder("<").str, "shape": list(arr.shape),
                      "offset": offset})
        buffers.append(buf)
        offset += len(buf)
    header = json.dumps({
        "sample_rate": int(ep.sample_rate),
        "user_text": [[float(t), s] for t, s in ep.user_text],
        "model_words": [[float(t), s] for t, s in ep.model_words],
        "labels": ep.labels,
        "arrays": specs,
    }, separators=(",", ":")).encode()
    payload = b"".join(buffers)
    crc = zlib.crc32(payload, zlib.crc32(header))
    return _PREFIX.pack(MAGIC, VERSION, 0, len(header), len(payload), crc) + header + payload


def from_bytes(data: bytes, where: str = "") -> Episode:
    """Parse ``to_bytes`` output; corruption, truncation or a foreign format raise ``EpisodeError``."""
    view = memoryview(data)
    if bytes(view[:4]) != MAGIC[: len(view)]:
        raise EpisodeError(_at(where, f"not an episode record (starts with {bytes(view[:4])!r}, "
                                      f"expected {MAGIC!r})"))
    if len(view) < _PREFIX.size:
        raise EpisodeError(_at(where, f"truncated record: {len(view)} bytes, shorter than the "
                                      f"{_PREFIX.size}-byte episode prefix"))
    _, version, _, header_len, payload_len, crc = _PREFIX.unpack_from(view)
    if version != VERSION:
        raise EpisodeError(_at(where, f"episode format version {version} is not supported (this code reads "
                                      f"version {VERSION})"))
    expected = _PREFIX.size + header_len + payload_len
    if len(view) != expected:
        kind = "truncated" if len(view) < expected else "oversized"
        raise EpisodeError(_at(where, f"{kind} record: {len(view)} bytes, the prefix promises {expected}"))
    header_b = view[_PREFIX.size : _PREFIX.size + header_len]
    payload = view[_PREFIX.size + header_len :]
    actual = zlib.crc32(payload, zlib.crc32(header_b))
    if actual != crc:
        raise EpisodeError(_at(where, f"corrupt record: CRC32 mismatch (stored {crc:#010x}, "
                                      f"computed {actual:#010x})"))
    try:
        header = json.loads(bytes(header_b))
        arrays = {}
        for spec in header["arrays"]:
            dtype = np.dtype(spec["dtype"])
            count = int(np.prod(spec["shape"], dtype=np.int64))
            arr = np.frombuffer(payload, dtype, count, spec["offset"]).reshape(spec["shape"])
            arrays[spec["name"]] = arr.astype(dtype.newbyteorder("="), copy=True)
        ep = Episode(
            user_audio=arrays["user_audio"],
            model_audio=arrays["model_audio"],
            frames=arrays.get("frames"),
            user_text=[(float(t), str(s)) for t, s in header["user_text"]],
            model_words=[(float(t), str(s)) for t, s in header["model_words"]],
            labels=header["labels"],
            sample_rate=int(header["sample_rate"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise EpisodeError(_at(where, f"malformed episode header: {e}")) from None
    return validate(ep, where)


# ------------------------------------------------------------------------------------------ ArrayRecord shards


def _ar():
    from array_record.python import array_record_module

    return array_record_module


def write_shard(path: str | os.PathLike, episodes: Iterable[Episode]) -> int:
    """Validate and write episodes to one ArrayRecord file; returns the count. Errors name file and index.

    The file is written to ``path + ".tmp"`` and renamed at the end, so a crash never leaves a half-written
    shard that looks complete.
    """
    path = os.fspath(path)
    tmp = path + ".tmp"
    writer = _ar().ArrayRecordWriter(tmp, SHARD_OPTIONS)
    if not writer.ok():
        raise EpisodeError(f"shard {path}: cannot open for writing")
    count = 0
    try:
        for i, ep in enumerate(episodes):
            writer.write(to_bytes(validate(ep, f"shard {path}, record {i}")))
            count += 1
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        if writer.is_open():
            writer.close()
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return count


class _ReaderCache:
    """A few open readers per process, keyed by (pid, path, mtime, size) so forks and rewrites reopen."""

    def __init__(self, capacity: int = 16):
        self.capacity = capacity
        self.readers: OrderedDict[tuple, tuple[Any, threading.Lock]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, path: str) -> tuple[Any, threading.Lock]:
        try:
            st = os.stat(path)
        except OSError as e:
            raise EpisodeError(f"shard {path}: cannot read ({e.strerror or e})") from None
        key = (os.getpid(), path, st.st_mtime_ns, st.st_size)
        with self.lock:
            if key in self.readers:
                self.readers.move_to_end(key)
                return self.readers[key]
        reader = _ar().ArrayRecordReader(path)
        if not reader.ok():
            raise EpisodeError(f"shard {path}: not a readable ArrayRecord file (bad header or truncated)")
        with self.lock:
            self.readers[key] = (reader, threading.Lock())
            while len(self.readers) > self.capacity:
                self.readers.popitem(last=False)
            return self.readers[key]


_READERS = _ReaderCache()


def shard_len(path: str | os.PathLike) -> int:
    """Number of records in a shard (cheap: ArrayRecord keeps an index in its footer)."""
    reader, lock = _READERS.get(os.fspath(path))
    with lock:
        return int(reader.num_records())


def read_record(path: str | os.PathLike, index: int) -> Episode:
    """Random access to record ``index`` of a shard (what the grain source calls per example)."""
    path = os.fspath(path)
    reader, lock = _READERS.get(path)
    where = f"shard {path}, record {index}"
    with lock:
        n = int(reader.num_records())
        if not 0 <= index < n:
            raise EpisodeError(f"{where}: index out of range (the shard has {n} records)")
        try:
            data = reader.read([index])[0]
        except RuntimeError as e:
            raise EpisodeError(f"{where}: corrupt ArrayRecord data ({e})") from None
    return from_bytes(data, where)


def iter_shard(path: str | os.PathLike) -> Iterator[Episode]:
    """Episodes of a shard in order; each failure names the file and record index."""
    for i in range(shard_len(path)):
        yield read_record(path, i)


def read_shard(path: str | os.PathLike) -> list[Episode]:
    return list(iter_shard(path))

"""Episode schema, byte format and ArrayRecord shards: exact round trips and errors that say where."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from interaction_jax.data import synthetic
from interaction_jax.data.episode import (
    SHARD_OPTIONS,
    Episode,
    EpisodeError,
    from_bytes,
    iter_shard,
    read_record,
    read_shard,
    shard_len,
    to_bytes,
    validate,
    write_shard,
)


@pytest.fixture(scope="module")
def episodes() -> list[Episode]:
    return [synthetic.generate("cuespeak", 0, duration_chunks=15),
            synthetic.generate("timespeak", 1, duration_chunks=20),
            synthetic.generate("repeat", 2, duration_chunks=25)]


def test_properties(episodes):
    ep = episodes[0]
    assert ep.num_chunks == 15 and ep.duration_s == pytest.approx(3.0)
    assert ep.frames is not None and ep.frames.shape == (15, 80, 80, 3)
    odd = dataclasses.replace(ep, user_audio=ep.user_audio[:-1], model_audio=ep.model_audio[:-1])
    assert odd.num_chunks == 15  # ceil: a partial last chunk still has a frame


def test_bytes_round_trip_is_exact(episodes):
    for ep in episodes:
        back = from_bytes(to_bytes(ep))
        assert back == ep
        assert back.user_audio.dtype == np.float32 and back.user_text == ep.user_text
    no_frames = dataclasses.replace(episodes[1], frames=None)
    assert from_bytes(to_bytes(no_frames)) == no_frames


def test_shard_round_trip_is_exact(episodes, tmp_path):
    path = tmp_path / "eps.array_record"
    assert write_shard(path, episodes) == 3
    assert shard_len(path) == 3
    assert read_shard(path) == episodes
    assert list(iter_shard(str(path))) == episodes
    assert read_record(path, 2) == episodes[2]
    assert read_record(path, 0) != episodes[1]
    with pytest.raises(EpisodeError, match=r"record 3: index out of range"):
        read_record(path, 3)


def _bad(ep: Episode, **changes) -> Episode:
    return dataclasses.replace(ep, **changes)


@pytest.mark.parametrize("change, message", [
    (lambda ep: _bad(ep, sample_rate=22050), r"sample_rate is 22050 Hz"),
    (lambda ep: _bad(ep, model_audio=ep.model_audio[:-5]), r"user_audio has 48000 samples but model_audio has"),
    (lambda ep: _bad(ep, model_words=[(3.5, "7")]), r"model_words\[0\] time 3.5 is outside the episode"),
    (lambda ep: _bad(ep, user_text=[(-0.1, "hi")]), r"user_text\[0\] time -0.1 is outside"),
    (lambda ep: _bad(ep, model_audio=np.where(np.arange(48000) < 3, np.nan, ep.model_audio).astype(np.float32)),
     r"model_audio has 3 NaN values"),
    (lambda ep: _bad(ep, user_audio=ep.user_audio.astype(np.float64)), r"user_audio has dtype float64"),
    (lambda ep: _bad(ep, frames=ep.frames[:-1]), r"frames has 14 frames but the audio has 15 chunks"),
    (lambda ep: _bad(ep, frames=ep.frames.astype(np.float32)), r"frames must be uint8"),
    (lambda ep: _bad(ep, labels={"digit": "3"}), r"labels must be a dict with a string 'task'"),
])
def test_validation_errors_name_the_file_and_record(episodes, tmp_path, change, message):
    bad = change(episodes[0])
    with pytest.raises(EpisodeError, match=message):
        validate(bad, "somewhere")
    path = tmp_path / "bad.array_record"
    with pytest.raises(EpisodeError, match=rf"shard {path}, record 1: {message}"):
        write_shard(path, [episodes[1], bad])
    assert not path.exists() and not (tmp_path / "bad.array_record.tmp").exists()


def _raw_shard(path, records: list[bytes]) -> None:
    writer = ArrayRecordWriter(str(path), SHARD_OPTIONS)
    for r in records:
        writer.write(r)
    writer.close()


def test_corrupt_and_truncated_records(episodes, tmp_path):
    good = to_bytes(episodes[1])
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF
    path = tmp_path / "corrupt.array_record"
    _raw_shard(path, [good, bytes(flipped), good[:-100], b"not an episode at all"])
    assert read_record(path, 0) == episodes[1]
    with pytest.raises(EpisodeError, match=rf"shard {path}, record 1: corrupt record: CRC32 mismatch"):
        read_record(path, 1)
    with pytest.raises(EpisodeError, match=rf"shard {path}, record 2: truncated record"):
        read_record(path, 2)
    with pytest.raises(EpisodeError, match=rf"shard {path}, record 3: not an episode record"):
        read_record(path, 3)
    with pytest.raises(EpisodeError, match="where: truncated record: 5 bytes"):
        from_bytes(good[:5], "where")


def test_flipped_bytes_in_the_file_are_reported_per_record(episodes, tmp_path):
    path = tmp_path / "eps.array_record"
    write_shard(path, episodes)
    data = bytearray(path.read_bytes())
    failures = 0
    for pos in range(1000, len(data) // 2, max(1, len(data) // 40)):
        damaged = bytearray(data)
        damaged[pos] ^= 0x5A
        bad_path = tmp_path / f"flip{pos}.array_record"
        bad_path.write_bytes(bytes(damaged))
        for i in range(3):
            try:
                assert read_record(bad_path, i) == episodes[i]  # either intact or reported, never wrong data
            except EpisodeError as e:
                failures += 1
                assert f"shard {bad_path}" in str(e) and (f"record {i}" in str(e) or "not a readable" in str(e))
    assert failures > 0


def test_truncated_missing_and_foreign_files(episodes, tmp_path):
    path = tmp_path / "eps.array_record"
    write_shard(path, episodes[:2])
    cut = tmp_path / "cut.array_record"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(EpisodeError, match=rf"shard {cut}: not a readable ArrayRecord file"):
        read_shard(cut)
    missing = tmp_path / "missing.array_record"
    with pytest.raises(EpisodeError, match=rf"shard {missing}: cannot read"):
        shard_len(missing)
    junk = tmp_path / "junk.array_record"
    junk.write_bytes(b"hello" * 100)
    with pytest.raises(EpisodeError, match=rf"shard {junk}: not a readable ArrayRecord file"):
        read_record(junk, 0)


def test_rewritten_shard_is_reread(episodes, tmp_path):
    path = tmp_path / "eps.array_record"
    write_shard(path, episodes[:1])
    assert shard_len(path) == 1
    write_shard(path, episodes)
    assert shard_len(path) == 3 and read_record(path, 2) == episodes[2]

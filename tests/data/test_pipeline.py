"""grain pipeline: the model's batch contract, determinism, resume, per-process sharding, errors, conversion."""

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from interaction_jax.audio import dmel
from interaction_jax.config import load_config
from interaction_jax.data import pipeline, synthetic, tools
from interaction_jax.data.episode import EpisodeError, write_shard
from interaction_jax.model import batch_spec
from interaction_jax.text import tokenizer

ROOT = Path(__file__).resolve().parents[2]


def cfg(**data):
    base = load_config(ROOT / "configs/tiny.py")
    return dataclasses.replace(base, data=dataclasses.replace(base.data, batch_size=2, window_chunks=12, **data))


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_read_ahead_is_bounded(monkeypatch):
    """The in-process iterator must not synthesise far ahead of the trainer (grain's default read-ahead of
    500 batches kept a 2-core host busy for minutes, starving compilation and checkpoint writes)."""
    made = []
    original = pipeline.ToWindow.__call__
    monkeypatch.setattr(pipeline.ToWindow, "__call__", lambda self, i, ep: made.append(i) or original(self, i, ep))
    c = cfg(read_threads=2, prefetch_batches=2)
    it = pipeline.make_iterator(c)
    take(it, 1)
    time.sleep(3.0)  # time enough for an unbounded read-ahead to make dozens of windows
    # one consumed batch + the buffer + what the threads hold in flight, in windows
    assert len(made) <= (1 + 2 + 2) * c.data.batch_size, len(made)


def test_batches_match_the_model_contract():
    c = cfg()
    (batch,) = take(pipeline.make_iterator(c), 1)
    spec = batch_spec(c, c.data.batch_size, c.data.window_chunks)
    assert set(batch) == set(spec)
    for k, s in spec.items():
        assert batch[k].shape == s.shape, k
        assert np.dtype(batch[k].dtype) == np.dtype(s.dtype), k
    assert batch["audio_in"].min() >= 0 and batch["audio_in"].max() < 16
    assert np.isin(batch["text_out_weight"], [0.0, 0.5, 1.0]).all()
    assert batch["mel_out"].min() >= -1.0 and batch["mel_out"].max() <= 1.0


def test_deterministic_and_resumable():
    c = cfg()
    first = take(pipeline.make_iterator(c), 4)
    assert_batches_equal(first, take(pipeline.make_iterator(c), 4))
    it = pipeline.make_iterator(c)
    take(it, 2)
    state = it.get_state()
    fresh = pipeline.make_iterator(c)
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 2), first[2:])
    other = take(pipeline.make_iterator(cfg(seed=1)), 1)
    assert not np.array_equal(other[0]["audio_in"], first[0]["audio_in"])


def test_processes_see_disjoint_episodes():
    c = cfg()
    rows = [pipeline.LocalRows(list(range(100)), p, 2, 1) for p in (0, 1)]
    seen = [{r(i) for i in range(20)} for r in rows]
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(40))
    single = take(pipeline.make_iterator(c), 2)
    b0 = take(pipeline.make_iterator(c, process_index=0, process_count=2), 2)
    b1 = take(pipeline.make_iterator(c, process_index=1, process_count=2), 2)
    assert b0[0]["audio_in"].shape[0] == 1  # local batch = global / processes
    for j in range(2):  # the two processes' rows, stacked, are exactly the one-process global batch
        for k in single[j]:
            np.testing.assert_array_equal(np.concatenate([b0[j][k], b1[j][k]]), single[j][k])


def test_text_out_is_moshi_aligned():
    # a word with onset in interval n+1 starts in chunk n's slots, EPAD just before, long words spill over
    ids, is_word = pipeline.text_out_stream([(0.65, "ab"), (0.7, "xyz")], num_chunks=6, slots=2)
    grid = ids.reshape(6, 2)
    # onset 0.65 s -> interval 3 -> chunk 2 (slots 4,5); EPAD in slot 3
    assert grid[1, 1] == tokenizer.EPAD and list(grid[2]) == tokenizer.encode("ab")
    # the second word cannot start before the first ends: EPAD at slot 6, then x y z
    assert grid[3, 0] == tokenizer.EPAD and list(ids[7:10]) == tokenizer.encode("xyz")
    assert ids[:3].tolist() == [tokenizer.PAD] * 3 and ids[10:].tolist() == [tokenizer.PAD] * 2
    assert is_word.sum() == 5


def test_text_in_fifo():
    grid = pipeline.text_in_stream([(0.45, "hello")], num_chunks=5, slots=2)
    assert (grid[:2] == tokenizer.PAD).all()
    assert tokenizer.decode(grid[2:].reshape(-1)) == "hello"
    assert grid[4, 1] == tokenizer.PAD


def test_audio_in_equals_the_streaming_front_end():
    c = cfg()
    ep = synthetic.generate("repeat", 11)
    arrays = pipeline.episode_arrays(ep, c)
    state = dmel.stream_init()
    wave = np.pad(ep.user_audio, (0, ep.num_chunks * 3200 - ep.user_audio.size))
    frames = []
    for n in range(ep.num_chunks):
        state, f = dmel.stream_step(state, wave[n * 3200 : (n + 1) * 3200])
        frames.append(np.asarray(dmel.discretize(f)))
    streamed = np.stack(frames)
    agree = (streamed == arrays["audio_in"]).mean()
    assert agree > 0.999, agree  # float32 rounding may flip a value sitting exactly on a bin edge


def test_mel_out_targets_the_next_interval():
    c = cfg()
    ep = synthetic.generate("cuespeak", 5)
    arrays = pipeline.episode_arrays(ep, c)
    onset = ep.model_words[0][0]
    speech_chunks = np.flatnonzero(arrays["mel_out"].max(axis=(1, 2)) > -0.5)
    assert speech_chunks.min() == int(onset / 0.2) - 1
    assert arrays["mel_out_weight"][-1] == 0 and arrays["mel_out_weight"][:-1].all()


def test_bad_inputs_have_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no episode shards"):
        pipeline.make_iterator(cfg(shards=str(tmp_path / "*.array_record")))
    with pytest.raises(ValueError, match="unknown task"):
        pipeline.make_iterator(cfg(tasks=("repeat", "juggle")))
    with pytest.raises(ValueError, match="divisible"):
        pipeline.make_dataset(cfg(), process_count=3)
    shard = tmp_path / "x.array_record"
    write_shard(shard, [synthetic.generate("repeat", 1), synthetic.generate("repeat", 2)])
    data = bytearray(shard.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    shard.write_bytes(bytes(data))
    with pytest.raises(EpisodeError, match=r"x\.array_record"):
        take(pipeline.make_iterator(cfg(shards=str(shard))), 2)


def test_shards_and_converter_round_trip(tmp_path):
    episodes = [synthetic.generate(t, 20 + i) for i, t in enumerate(("repeat", "interrupt", "timespeak"))]
    audio_dir, words_dir = tmp_path / "wav", tmp_path / "words"
    audio_dir.mkdir()
    words_dir.mkdir()
    for i, ep in enumerate(episodes):
        sf.write(audio_dir / f"ep{i}.wav", np.stack([ep.model_audio, ep.user_audio], 1), 16000, subtype="FLOAT")
        (words_dir / f"ep{i}.json").write_text(json.dumps(
            [{"word": w, "start": t, "end": t + 0.1} for t, w in ep.model_words]))
    sf.write(audio_dir / "mono.wav", np.zeros(16000, np.float32), 16000)
    (audio_dir / "nowords.wav").write_bytes((audio_dir / "ep0.wav").read_bytes())
    _paths, skipped = tools.convert(audio_dir, words_dir, tmp_path / "shards")
    assert {name for name, _ in skipped} == {"mono.wav", "nowords.wav"}
    assert any("stereo" in why for _, why in skipped) and any("missing" in why for _, why in skipped)
    converted = pipeline.ShardSource(str(tmp_path / "shards" / "*.array_record"))
    assert len(converted) == 3
    c = cfg()
    for ep, i in zip(episodes, range(3), strict=True):
        got = pipeline.episode_arrays(converted[i], c)
        want = pipeline.episode_arrays(dataclasses.replace(ep, user_text=[]), c)
        for k in ("audio_in", "text_out", "text_out_weight", "mel_out"):
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_converter_resamples_explicitly(tmp_path, capsys):
    ep = synthetic.generate("repeat", 3)
    (tmp_path / "w").mkdir()
    (tmp_path / "j").mkdir()
    from scipy.signal import resample_poly

    stereo = np.stack([resample_poly(ep.model_audio, 3, 1), resample_poly(ep.user_audio, 3, 1)], 1)
    sf.write(tmp_path / "w" / "a.wav", stereo.astype(np.float32), 48000, subtype="FLOAT")
    (tmp_path / "j" / "a.json").write_text(json.dumps([{"word": "1", "start": 1.0, "end": 1.1}]))
    paths, skipped = tools.convert(tmp_path / "w", tmp_path / "j", tmp_path / "out")
    assert not skipped and "resampling 48000 Hz -> 16000 Hz" in capsys.readouterr().out
    converted = pipeline.ShardSource(str(paths[0]))[0]
    assert abs(converted.user_audio.size - ep.user_audio.size) <= 3


def test_multiprocess_prefetch_gives_the_same_batches():
    single = take(pipeline.make_iterator(cfg()), 2)
    workers = take(pipeline.make_iterator(cfg(num_workers=2)), 2)
    assert_batches_equal(single, workers)

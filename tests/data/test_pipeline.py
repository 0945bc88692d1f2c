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
    data = {"batch_size": 2, "window_chunks": 12, **data}
    return dataclasses.replace(base, data=dataclasses.replace(base.data, **data))


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
    assert np.isin(batch["text_out_weight"], [0.0, 1.0]).all()  # validity; the loss weighs by kind
    assert batch["mel_out"].min() >= -1.0 and batch["mel_out"].max() <= 1.0


def test_packed_windows_hold_no_padding():
    """Synthetic windows are packed with back-to-back tasks: every chunk is inside an episode."""
    c = cfg(window_chunks=40, batch_size=4)
    (batch,) = take(pipeline.make_iterator(c), 1)
    assert (batch["text_out_weight"] == 1).all() and (batch["mel_out_weight"] == 1).all()
    # a stream is long enough for its window, holds several tasks and starts fresh (no random crop)
    ep = synthetic.stream(3, c.data.tasks, 40)
    assert ep.num_chunks >= 40 and len(ep.labels["segments"]) >= 2
    assert pipeline.ToWindow(c)(0, ep)["audio_in"].tolist() == pipeline.episode_arrays(ep, c)["audio_in"][:40].tolist()
    unpacked = take(pipeline.make_iterator(cfg(window_chunks=40, batch_size=4, pack=False)), 1)[0]
    assert (unpacked["mel_out_weight"] == 0).any()  # single episodes are shorter than the window


def test_task_weights_set_the_mix():
    counts = {t: 0 for t in ("repeat", "cuespeak")}
    for seed in range(40):
        for seg in synthetic.stream(seed, ("repeat", "cuespeak"), 40, weights=(1.0, 0.0)).labels["segments"]:
            counts[seg["task"]] += 1
    assert counts["cuespeak"] == 0 and counts["repeat"] > 40
    with pytest.raises(ValueError, match="one non-negative weight per task"):
        synthetic.stream(0, ("repeat", "cuespeak"), 40, weights=(1.0,))
    with pytest.raises(ValueError, match="task_weights has 1 entries"):
        pipeline.make_iterator(cfg(task_weights=(1.0,)))


def test_layout_must_fit_the_task_timing():
    c = cfg()
    bad = dataclasses.replace(c, text=dataclasses.replace(c.text, text_in_slots=1))
    with pytest.raises(ValueError, match="text_in_slots=1"):
        pipeline.make_iterator(bad)
    bad = dataclasses.replace(c, text=dataclasses.replace(c.text, text_out_slots=1))
    with pytest.raises(ValueError, match="text_out_slots=1: need >= 2"):
        pipeline.make_iterator(bad)


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
    # a word with onset in interval n+1 is described by chunk n: EPAD in its first free slot, then the word,
    # spilling into later chunks; nothing lands in chunk n-1 (before the word's cause could be heard)
    ids, kind = pipeline.text_out_stream([(0.65, "ab"), (0.7, "xyz")], num_chunks=6, slots=2)
    grid = ids.reshape(6, 2)
    # onset 0.65 s -> interval 3 -> chunk 2 (slots 4, 5): EPAD in slot 4, "ab" in slots 5, 6
    assert grid[2, 0] == tokenizer.EPAD and ids[5:7].tolist() == tokenizer.encode("ab")
    # the second word cannot start before the first ends: EPAD at slot 7, then x y z
    assert ids[7] == tokenizer.EPAD and ids[8:11].tolist() == tokenizer.encode("xyz")
    assert ids[:4].tolist() == [tokenizer.PAD] * 4 and ids[11:].tolist() == [tokenizer.PAD]
    assert (kind == pipeline.KIND_WORD).sum() == 5 and (kind == pipeline.KIND_EPAD).sum() == 2
    # one digit per chunk, the model's pace: [EPAD, digit] in every chunk before its interval
    ids, _ = pipeline.text_out_stream([(0.61, "7"), (0.81, "8")], num_chunks=5, slots=2)
    assert ids.reshape(5, 2)[2:4].tolist() == [[tokenizer.EPAD, ord("7")], [tokenizer.EPAD, ord("8")]]


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


def test_silence_targets_are_exactly_the_silence_constant():
    """Digital silence maps to SILENCE_MEL (-1) in every channel; the old constant (-1) sat below the data's
    real floor (-0.823), so the engine fed the model a "silence" it never saw in training."""
    from interaction_jax.model import SILENCE_MEL

    c = cfg()
    arrays = pipeline.episode_arrays(synthetic.generate("timespeak", 2), c)
    silent = arrays["mel_out"][:5]  # the model says nothing for at least 2 s
    assert (silent == SILENCE_MEL).all()
    assert arrays["mel_out"].max() < 1.0 and arrays["mel_out"].max() > 0.5  # a tone, below full scale


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


def test_frame_text_labels_reach_the_batch_only_where_labelled():
    """Labelled frames give their digit's byte (PAD where nothing is shown); unlabelled episodes weigh 0."""
    c = cfg()
    ep = synthetic.generate("cuespeak", 4)
    arr = pipeline.episode_arrays(ep, c)
    digit, cue = ep.labels["digit"], ep.labels["cue_frame"]
    assert arr["frame_text"][cue] == ord(digit) and arr["frame_text"][cue - 1] == tokenizer.PAD
    np.testing.assert_array_equal(arr["frame_text_weight"], np.ones(ep.num_chunks, np.float32))
    del ep.labels["frame_text"]  # a converted real episode carries no frame labels
    arr = pipeline.episode_arrays(ep, c)
    assert not arr["frame_text_weight"].any() and (arr["frame_text"] == tokenizer.PAD).all()
    ep.labels["frame_text"] = ["1"]  # one label for many frames is a broken episode, said clearly
    with pytest.raises(ValueError, match="frame_text"):
        pipeline.episode_arrays(ep, c)
    window = pipeline.crop_window(pipeline.episode_arrays(synthetic.generate("repcount", 1), c), 0, 60)
    assert (window["frame_text_weight"][-5:] == 0).all() and (window["frame_text"][-5:] == tokenizer.PAD).all()


def test_frame_motion_labels_follow_the_repcount_object_only():
    """Repcount frames carry the object's displacement (0 at rest, near 1 at the far end, back to 0 once every
    repetition is done); other scenes, packed or not, and unlabelled episodes weigh 0."""
    from interaction_jax.data.synthetic import frames as fr

    c = cfg()
    for seed in range(3):
        ep = synthetic.generate("repcount", seed)
        arr = pipeline.episode_arrays(ep, c)
        np.testing.assert_array_equal(arr["frame_motion_weight"], np.ones(ep.num_chunks, np.float32))
        motion = fr.Motion("ball", ep.labels["start_s"], ep.labels["period_s"], ep.labels["count"], (0, 0, 0),
                           (255, 255, 255))
        want = [motion.phase(i * 0.2) for i in range(ep.num_chunks)]
        np.testing.assert_allclose(arr["frame_motion"], want, atol=1e-6)
        assert arr["frame_motion"][0] == 0 and arr["frame_motion"].max() > 0.6 and arr["frame_motion"][-1] == 0
    arr = pipeline.episode_arrays(synthetic.generate("cuespeak", 0), c)
    assert not arr["frame_motion_weight"].any()
    tasks = []
    for seed in (0, 1):  # packed scenes: repcount + cuespeak (+ timespeak)
        mixed = synthetic.generate("mixed", seed)
        arr = pipeline.episode_arrays(mixed, c)
        for seg in mixed.labels["segments"]:
            first = round(seg["offset_s"] / 0.2)
            span = arr["frame_motion_weight"][first : first + round(seg["duration_s"] / 0.2)]
            assert (span == (seg["task"] == "repcount")).all(), seg["task"]
            tasks.append(seg["task"])
    assert "repcount" in tasks and "cuespeak" in tasks
    ep = synthetic.generate("repcount", 0)
    ep.labels["frame_motion"] = [0.5]
    with pytest.raises(ValueError, match="frame_motion"):
        pipeline.episode_arrays(ep, c)


def _spelled(ids: np.ndarray) -> str:
    """The labelled symbols of [N, A] heard_text in order, one per run of equal tokens."""
    flat = [int(i) for i in ids.reshape(-1)]
    return "".join(chr(t) for k, t in enumerate(flat) if t != tokenizer.PAD and (k == 0 or flat[k - 1] != t))


def test_heard_text_labels_spell_what_the_user_said():
    """Each AUDIO_IN token names the symbol the user is saying in it, in order, also inside packed streams; the
    model's echo is never labelled as silence; unlabelled episodes weigh 0; a broken label is said clearly."""
    c = cfg()
    a = pipeline.Layout.from_config(c.audio, c.vision, c.text).num_audio
    for seed in range(6):
        ep = synthetic.generate("repeat", seed)
        arr = pipeline.episode_arrays(ep, c)
        assert arr["heard_text"].shape == arr["heard_text_weight"].shape == (ep.num_chunks, a)
        digits = ep.labels["user_digits"]
        spelled = _spelled(arr["heard_text"])
        # a digit said twice in a row with a short gap can merge into one run of tokens
        assert spelled == digits or spelled == "".join(d for i, d in enumerate(digits) if i == 0 or digits[i - 1] != d)
        first = int(np.flatnonzero(arr["heard_text"].reshape(-1) != tokenizer.PAD)[0])
        assert abs(first * 0.2 / a - ep.labels["user_onsets_s"][0]) <= 0.2 / a
        # every labelled digit weighs 1; tokens while the model speaks (its echo) weigh 0
        w, ids = arr["heard_text_weight"].reshape(-1), arr["heard_text"].reshape(-1)
        assert (w[ids != tokenizer.PAD] == 1).all()
        reply = int(ep.labels["model_onset_s"] / (0.2 / a))
        assert w[reply + 1] == 0 and w[: first] .all()
        # onsets: one token per utterance of a symbol, never before any of it is audible (token j hears up to
        # the end of its 50 ms), at most one token after it starts
        onset_ids = arr["heard_onset"].reshape(-1)
        named = np.flatnonzero(onset_ids != tokenizer.PAD)
        assert "".join(chr(onset_ids[i]) for i in named) == digits
        starts = ep.labels["user_onsets_s"]
        token_s = 0.2 / a
        assert all((j + 1) * token_s > t and j <= t / token_s + 1 for j, t in zip(named, starts, strict=True))
        assert (w[named] == 1).all()
        # at each onset, the symbol before it in the utterance (PAD for the first): the induction label
        prev = arr["heard_prev"].reshape(-1)
        assert [int(prev[i]) for i in named] == [tokenizer.PAD] + [ord(d) for d in digits[:-1]]
        # ... and one more token, where 0.2 s of silence after the last digit is heard, names the last digit
        ends = np.flatnonzero((prev != tokenizer.PAD) & (onset_ids == tokenizer.PAD))
        user_end = ep.labels["user_end_s"]
        assert len(ends) == 1 and prev[ends[0]] == ord(digits[-1])
        assert ends[0] * token_s <= user_end + pipeline.UTTERANCE_GAP_S + 0.025 < (ends[0] + 1) * token_s
    interrupt = synthetic.generate("interrupt", 2)
    assert _spelled(pipeline.episode_arrays(interrupt, c)["heard_text"])[:2] == interrupt.labels["user_digits"][:2]
    mixed = synthetic.stream(7, ["repeat", "cuespeak", "repeat"], min_chunks=40)
    said = "".join(s["labels"]["user_digits"] for s in mixed.labels["segments"] if s["task"] == "repeat")
    mixed_arr = pipeline.episode_arrays(mixed, c)
    assert set(_spelled(mixed_arr["heard_text"])) == set(said)
    # each repeat utterance starts afresh in a packed stream: one PAD-named onset per utterance
    first_of_utterance = (mixed_arr["heard_onset"] != tokenizer.PAD) & (mixed_arr["heard_prev"] == tokenizer.PAD)
    assert first_of_utterance.sum() == sum(s["task"] == "repeat" for s in mixed.labels["segments"])
    ep = synthetic.generate("cuespeak", 1)  # the user says nothing: every token is PAD, labelled
    arr = pipeline.episode_arrays(ep, c)
    assert (arr["heard_text"] == tokenizer.PAD).all() and arr["heard_text_weight"][:2].all()
    del ep.labels["heard"]  # a converted real episode carries no label
    assert not pipeline.episode_arrays(ep, c)["heard_text_weight"].any()
    ep.labels["heard"] = [[0.5, "7"]]
    with pytest.raises(ValueError, match="heard"):
        pipeline.episode_arrays(ep, c)
    window = pipeline.crop_window(pipeline.episode_arrays(synthetic.generate("repeat", 1), c), 0, 60)
    assert (window["heard_text_weight"][-5:] == 0).all() and (window["heard_text"][-5:] == tokenizer.PAD).all()

"""Synthetic task generators: determinism, schema, timing rules, echo bookkeeping."""

from __future__ import annotations

import json

import numpy as np
import pytest

from interaction_jax.data import synthetic
from interaction_jax.data.episode import from_bytes, to_bytes
from interaction_jax.data.synthetic.tasks import BARGE_SYMBOLS, MAX_CHUNKS, MIN_CHUNKS, mix_echo, user_dry_audio

TASK_NAMES = ["repeat", "timespeak", "cuespeak", "repcount", "interrupt", "mixed"]


def test_registry():
    assert list(synthetic.TASKS) == TASK_NAMES
    with pytest.raises(ValueError, match="unknown task 'dance'; available: repeat"):
        synthetic.generate("dance", 0)
    with pytest.raises(ValueError, match="below the minimum"):
        synthetic.generate("repeat", 0, duration_chunks=MIN_CHUNKS["repeat"] - 1)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_deterministic_and_serialisable(task):
    a, b, c = (synthetic.generate(task, s) for s in (7, 7, 8))
    assert a == b and a != c
    assert from_bytes(to_bytes(a)) == a
    assert a.labels["task"] == task and json.loads(json.dumps(a.labels)) == a.labels
    assert a.user_audio.size == a.num_chunks * 3200  # whole chunks
    assert 8 <= a.num_chunks <= (MAX_CHUNKS if task != "mixed" else 3 * MAX_CHUNKS)
    assert all(w.isdigit() for _, w in a.model_words) and a.model_words == sorted(a.model_words)
    if task in ("cuespeak", "repcount"):
        assert a.frames is not None and a.frames.shape == (a.num_chunks, 80, 80, 3) and a.frames.dtype == np.uint8


@pytest.mark.parametrize("task", TASK_NAMES)
def test_explicit_duration_and_minimum(task):
    for n in (MIN_CHUNKS[task], 45):
        ep = synthetic.generate(task, 3, duration_chunks=n)
        assert ep.num_chunks == n


def test_echo_is_recoverable_and_optional():
    ep = synthetic.generate("repeat", 5)
    dry = synthetic.generate("repeat", 5, echo=False)
    assert ep.labels["echo"] and not dry.labels["echo"]
    assert -30 <= ep.labels["echo_gain_db"] <= -10 and 0.01 <= ep.labels["echo_delay_s"] <= 0.12
    assert np.array_equal(ep.model_audio, dry.model_audio) and ep.model_words == dry.model_words
    assert np.abs(user_dry_audio(ep) - dry.user_audio).max() < 1e-6
    assert np.array_equal(user_dry_audio(dry), dry.user_audio)
    echo = ep.user_audio - dry.user_audio
    d = round(ep.labels["echo_delay_s"] * 16000)
    gain = 10 ** (ep.labels["echo_gain_db"] / 20)
    assert np.allclose(echo[d:], gain * ep.model_audio[:-d], atol=1e-6)


def test_mix_echo_lengths():
    user, model = np.ones(3, np.float32), np.arange(1, 11, dtype=np.float32)
    out = mix_echo(user, model, -20 * np.log10(2), 2 / 16000)  # gain 0.5, 2 samples
    assert out.dtype == np.float32 and out.size == 10
    assert np.allclose(out, [1, 1, 1.5, 1, 1.5, 2, 2.5, 3, 3.5, 4])


def test_repeat_timing():
    for seed in range(10):
        lab = synthetic.generate("repeat", seed).labels
        assert 3 <= len(lab["user_digits"]) <= 6 and lab["model_digits"] == lab["user_digits"]
        assert 0.2 <= lab["model_onset_s"] - lab["user_end_s"] <= 0.45
        assert max(np.diff(lab["user_onsets_s"])) <= 0.35 + 1e-4  # tone <= 200 ms + gap <= 150 ms
        # the model's even pace: one digit per chunk, 15-45 ms after each boundary
        offsets = (np.array(lab["model_onsets_s"]) / 0.2) % 1.0 * 0.2
        assert np.all((offsets >= 0.015 - 1e-4) & (offsets <= 0.045 + 1e-4))
        assert np.allclose(np.diff(np.floor(np.array(lab["model_onsets_s"]) / 0.2)), 1)


def test_timespeak_text_and_target():
    for seed in range(10):
        ep = synthetic.generate("timespeak", seed)
        lab = ep.labels
        ((t, text),) = ep.user_text
        assert text == f"say {lab['digit']} in {lab['delay_s']} s" and 2 <= lab["delay_s"] <= 6
        assert lab["target_time_s"] == pytest.approx(t + lab["delay_s"], abs=1e-4)
        assert ep.model_words == [(lab["model_onset_s"], lab["digit"])]
        assert lab["target_time_s"] - 0.2 <= lab["model_onset_s"] <= lab["target_time_s"] + 0.045


def test_cuespeak_is_causal():
    for seed in range(10):
        lab = synthetic.generate("cuespeak", seed).labels
        assert 0.2 - 1e-4 <= lab["model_onset_s"] - lab["cue_time_s"] <= 0.245 + 1e-4


def test_repcount_counts():
    for seed in range(10):
        ep = synthetic.generate("repcount", seed)
        lab = ep.labels
        assert 1 <= lab["count"] <= 9 and 0.7 <= lab["period_s"] <= 1.2
        assert [w for _, w in ep.model_words] == [str(k) for k in range(1, lab["count"] + 1)]
        delays = np.array([t for t, _ in ep.model_words]) - np.array(lab["rep_times_s"])
        assert np.all((delays >= 0.2 - 1e-4) & (delays <= 0.445 + 1e-4))


def test_interrupt_counts_on_a_typed_cue_and_yields():
    for seed in range(20):
        ep = synthetic.generate("interrupt", seed)
        lab = ep.labels
        assert ep.user_text == [(lab["text_time_s"], "count")]
        assert lab["model_digits"] == "123456789"[: len(lab["model_digits"])] and len(lab["model_digits"]) >= 3
        assert set(lab["user_digits"]) <= set(BARGE_SYMBOLS)
        assert lab["model_stop_s"] - lab["barge_in_s"] <= 0.38
        assert all(t < lab["react_s"] for t, _ in ep.model_words)
        last_sound = np.flatnonzero(ep.model_audio)[-1] / 16000
        assert last_sound <= lab["barge_in_s"] + 0.38


def test_mixed_segments_are_consistent():
    ep = synthetic.generate("mixed", 11)
    segs = ep.labels["segments"]
    assert 2 <= len(segs) <= 3 and segs[0]["offset_s"] == 0
    assert sum(s["duration_s"] for s in segs) == pytest.approx(ep.duration_s)
    words = sum(len(s["labels"].get("model_onsets_s", [])) for s in segs)
    assert words <= len(ep.model_words)


def test_video_tasks_label_the_text_in_each_frame():
    """``labels["frame_text"]`` names the digit in exactly the frames that show it, also inside packed streams."""
    from interaction_jax.data.synthetic.tasks import stream

    for seed in range(6):
        ep = synthetic.generate("cuespeak", seed)
        lab = ep.labels
        shown = [i for i, t in enumerate(lab["frame_text"]) if t]
        assert len(lab["frame_text"]) == len(ep.frames)
        assert shown == list(range(lab["cue_frame"], lab["cue_frame"] + len(shown))) and len(shown) >= 3
        assert {lab["frame_text"][i] for i in shown} == {lab["digit"]}
        assert not any(synthetic.generate("repcount", seed).labels["frame_text"])
    ep = stream(3, ("repeat", "cuespeak", "repcount"), 120, weights=(1.0, 2.0, 1.0))
    assert len(ep.labels["frame_text"]) == len(ep.frames) == ep.num_chunks
    cues = [s for s in ep.labels["segments"] if s["task"] == "cuespeak"]
    assert cues
    for s in cues:
        first = round(s["offset_s"] / 0.2) + s["labels"]["cue_frame"]
        assert ep.labels["frame_text"][first] == s["labels"]["digit"] and not ep.labels["frame_text"][first - 1]


def test_some_rooms_are_digitally_silent():
    """A share of episodes has no room noise at all (exact zeros), like a file made by a synthesiser."""
    from interaction_jax.data.synthetic.tasks import DIGITAL_SILENCE_P

    eps = [synthetic.generate("timespeak", seed, echo=False) for seed in range(120)]
    silent = [ep for ep in eps if ep.labels["noise_dbfs"] is None]
    assert abs(len(silent) / len(eps) - DIGITAL_SILENCE_P) < 0.08
    assert all(not ep.user_audio.any() for ep in silent)  # timespeak's user only types
    for ep in eps:
        if ep.labels["noise_dbfs"] is not None:
            rms_db = 20 * np.log10(np.sqrt(np.mean(ep.user_audio.astype(np.float64) ** 2)))
            assert rms_db == pytest.approx(ep.labels["noise_dbfs"], abs=0.5)

"""Scorers: the ground-truth voice scores perfectly; silence and a voice shifted by 1 s fail."""

from __future__ import annotations

import math

import numpy as np
import pytest

from interaction_jax.data import synthetic
from interaction_jax.data.synthetic.scoring import audible_until

SEEDS = range(6)


def _shift(wave: np.ndarray, seconds: float) -> np.ndarray:
    k = round(seconds * 16000)
    out = np.zeros_like(wave)
    if k >= 0:
        out[k:] = wave[: wave.size - k]
    else:
        out[:k] = wave[-k:]
    return out


def _variants(ep):
    silence = np.zeros_like(ep.model_audio)
    return (synthetic.score(ep.labels, ep.model_audio, ep.model_words),
            synthetic.score(ep.labels, silence, []),
            synthetic.score(ep.labels, _shift(ep.model_audio, 1.0), [(t + 1.0, w) for t, w in ep.model_words]))


def test_repeat():
    for seed in SEEDS:
        ep = synthetic.generate("repeat", seed)
        gt, silent, late = _variants(ep)
        truth = ep.labels["model_onset_s"] - ep.labels["user_end_s"]
        assert gt["content"] == gt["digit_acc"] == gt["text_content"] == 1.0
        assert gt["latency_s"] == pytest.approx(truth, abs=0.01)
        assert silent["content"] == silent["digit_acc"] == 0.0 and math.isnan(silent["latency_s"])
        assert late["latency_s"] == pytest.approx(truth + 1.0, abs=0.01)  # right words, turn-taking fails
        wrong = synthetic.score(ep.labels, synthetic.generate("repeat", seed + 100).model_audio, [])
        assert wrong["content"] == 0.0


def test_timespeak():
    for seed in SEEDS:
        ep = synthetic.generate("timespeak", seed)
        gt, silent, late = _variants(ep)
        # the model speaks in the 200 ms interval that holds the target time, so the error is its onset's offset
        truth = ep.labels["model_onset_s"] - ep.labels["target_time_s"]
        assert gt["on_time"] == gt["text_on_time"] == 1.0 and abs(truth) < 0.25
        assert gt["timing_err_s"] == pytest.approx(truth, abs=0.01)
        assert silent["on_time"] == 0.0 and math.isnan(silent["timing_err_s"])
        assert late["on_time"] == late["text_on_time"] == 0.0


def test_cuespeak():
    for seed in SEEDS:
        ep = synthetic.generate("cuespeak", seed)
        gt, silent, late = _variants(ep)
        assert gt["on_time"] == gt["text_on_time"] == 1.0 and 0.19 <= gt["latency_s"] <= 0.41
        assert silent["on_time"] == 0.0 and late["on_time"] == late["text_on_time"] == 0.0


def test_repcount():
    for seed in SEEDS:
        ep = synthetic.generate("repcount", seed)
        gt, silent, late = _variants(ep)
        count = ep.labels["count"]
        assert gt["final_count"] == count and gt["abs_err"] == 0 and gt["obo"] == gt["on_time"] == 1.0
        assert silent["abs_err"] == count and silent["on_time"] == 0.0 and silent["obo"] == float(count <= 1)
        assert late["on_time"] == 0.0


def test_interrupt():
    for seed in SEEDS:
        ep = synthetic.generate("interrupt", seed)
        gt, silent, late = _variants(ep)
        barge = ep.labels["barge_in_s"]
        assert gt["speaking"] == gt["stopped"] == gt["yielded"] == gt["text_stopped"] == 1.0
        assert 0.0 <= gt["yield_latency_s"] <= 0.3 + 0.02
        assert gt["yield_latency_s"] == pytest.approx(max(0.0, ep.labels["model_stop_s"] - barge), abs=0.02)
        assert silent["yielded"] == 0.0 and math.isnan(silent["yield_latency_s"])
        keeps_talking = ep.model_audio + _shift(ep.model_audio, 1.0)
        kt = synthetic.score(ep.labels, keeps_talking, [])
        assert kt["speaking"] == 1.0 and kt["yielded"] == 0.0 and kt["yield_latency_s"] > 0.6
        assert late["yielded"] == 0.0


def test_mixed():
    for seed in range(3):
        ep = synthetic.generate("mixed", seed)
        gt, silent, _ = _variants(ep)
        tasks = {s["task"] for s in ep.labels["segments"]}
        assert {k.split(".")[0] for k in gt} == tasks
        for key, value in gt.items():
            name = key.split(".")[1]
            if name in ("content", "on_time", "yielded", "obo", "text_content", "text_on_time"):
                assert value == 1.0, key
            if name in ("abs_err", "text_abs_err"):
                assert value == 0.0, key
        assert all(v in (0.0, 1.0) or math.isnan(v) or k.endswith(("abs_err", "final_count", "obo"))
                   for k, v in silent.items())
        assert not any(v == 1.0 for k, v in silent.items() if k.endswith(("content", ".on_time", "yielded")))


def test_aggregate():
    nan = float("nan")
    agg = synthetic.aggregate([
        {"content": 1.0, "latency_s": 0.3, "abs_err": 2.0, "yielded": 1.0},
        {"content": 0.0, "latency_s": nan, "abs_err": 0.0, "yielded": 0.0},
        {"content": 1.0, "latency_s": 0.5, "repcount.abs_err": 1.0},
    ])
    assert agg["content"] == pytest.approx(2 / 3) and agg["latency_s"] == pytest.approx(0.4)
    assert agg["mae"] == 1.0 and agg["yield_rate"] == 0.5 and agg["repcount.mae"] == 1.0
    assert agg["episodes"] == 3.0
    assert math.isnan(synthetic.aggregate([{"latency_s": nan}])["latency_s"])


def test_audible_until():
    wave = np.zeros(16000, np.float32)
    wave[4000:4800] = 0.1
    assert audible_until(wave) == pytest.approx(0.3)
    assert audible_until(np.zeros(10)) == 0.0


@pytest.mark.parametrize("task", ["repeat", "timespeak", "cuespeak", "repcount", "interrupt"])
def test_voice_match_measures_whether_the_voice_says_the_text(task):
    """voice_match: 1 for the ground-truth voice and text; 0 for silence; NaN without text symbols."""
    for seed in range(3):
        ep = synthetic.generate(task, seed)
        assert synthetic.score(ep.labels, ep.model_audio, ep.model_words)["voice_match"] == 1.0
        assert synthetic.score(ep.labels, np.zeros_like(ep.model_audio), ep.model_words)["voice_match"] == 0.0
        assert math.isnan(synthetic.score(ep.labels, ep.model_audio, [])["voice_match"])
        # the same voice under text that names a digit it never says does not match
        other = min(set("0123456789") - {ch for _, w in ep.model_words for ch in w})
        wrong = [(t, other * len(w)) for t, w in ep.model_words]
        assert synthetic.score(ep.labels, ep.model_audio, wrong)["voice_match"] == 0.0

"""Exact scoring of generated audio for the synthetic tasks, with no ASR.

``score(labels, out_wave, out_text_events)`` decodes the model's voice with the episode's voice decoder
(DTMF: Goertzel) and compares it with the labels; the model's text-out events ``[(time_s, text)]`` give
secondary ``text_*`` metrics (the inner monologue should say the same thing as the voice). Metrics, rates
being fractions in [0, 1]:

* repeat: ``content`` (decoded digit string == target, 0/1), ``digit_acc`` (position-wise matches over
  the longer of the two strings), ``latency_s`` (first decoded onset - end of the user's last tone; NaN
  if silent), ``text_content``.
* timespeak: ``on_time`` (the right digit with onset within +-0.4 s of the target), ``timing_err_s``
  (onset - target of the first right digit; NaN if none), ``text_on_time``.
* cuespeak: ``on_time`` (the right digit with onset within 0.6 s after the cue appears), ``latency_s``,
  ``text_on_time``.
* repcount: ``final_count`` (the last digit spoken, 0 if none), ``abs_err`` (-> ``mae``), ``obo``
  (|err| <= 1), ``on_time`` (fraction of repetitions k whose "k" is spoken within 0.6 s of completing).
* interrupt: ``speaking`` (a tone started in the second before the barge-in), ``stopped`` (no tone onset
  and no audible energy later than barge-in + 0.4 s; for spoken words, which outlast that, the end of the
  word under way, label ``yield_tol_s``), ``yielded`` = speaking and stopped (-> ``yield_rate``),
  ``yield_latency_s`` (end of the last audible sound after the barge-in, relative to it; NaN if the model
  was not speaking). A silent model therefore does not "yield".
* mixed: each segment is scored on its own slice and the metrics are averaged per task as ``task.metric``.

``aggregate`` averages a list of metric dicts: latencies and timing errors over finite values only,
``abs_err`` reported as ``mae`` and ``yielded`` as ``yield_rate``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from interaction_jax.data.episode import CHUNK_SAMPLES
from interaction_jax.data.synthetic.voices import SAMPLE_RATE, get_voice

NAN = float("nan")
TIMESPEAK_TOL_S = 0.4
CUESPEAK_WINDOW_S = 0.6
REPCOUNT_WINDOW_S = 0.6
YIELD_TOL_S = 0.4
VOICE_EARLY_S = 0.05  # the decoder may place an onset up to this early
CHUNK_S = CHUNK_SAMPLES / SAMPLE_RATE
SILENCE_DBFS = -40.0  # 20 ms frames with RMS above this count as audible
TextEvents = Sequence[tuple[float, str]]
# The headline metric of each task (its goal in the learning issue), shown in progress lines and curves.
HEADLINE = {"repeat": "content", "timespeak": "on_time", "cuespeak": "on_time", "repcount": "obo",
            "interrupt": "yield_rate"}


# What the model's voice may say in each task: an ASR decoder's grammar is restricted to it (an open
# vocabulary costs a speech recogniser 6-17% of its digits, measured with pocketsphinx).
VOCABULARY = {"repeat": "0123456789", "timespeak": "0123456789", "cuespeak": "0123456789",
              "repcount": "123456789", "interrupt": "123456789"}


def _decode(labels: dict[str, Any], wave: np.ndarray) -> list[tuple[float, str]]:
    return get_voice(labels.get("voice", "dtmf")).decode(np.asarray(wave, np.float32), SAMPLE_RATE,
                                                         vocabulary=VOCABULARY.get(labels["task"]))


def _digits(events: TextEvents) -> list[tuple[float, str]]:
    """Text events -> one (time, digit) per digit character (a word "42" counts as 4 then 2)."""
    return [(float(t), ch) for t, text in events for ch in str(text) if ch.isdigit()]


def _string(events: Sequence[tuple[float, str]]) -> str:
    return "".join(s for _, s in events)


def _digit_acc(target: str, got: str) -> float:
    longest = max(len(target), len(got))
    return sum(a == b for a, b in zip(target, got, strict=False)) / longest if longest else 1.0


def _score_repeat(labels: dict[str, Any], heard: list[tuple[float, str]], text: TextEvents) -> dict[str, float]:
    target, got = labels["model_digits"], _string(heard)
    return {
        "content": float(got == target),
        "digit_acc": _digit_acc(target, got),
        "latency_s": heard[0][0] - labels["user_end_s"] if heard else NAN,
        "text_content": float(_string(_digits(text)) == target),
    }


def _first_match(events: Sequence[tuple[float, str]], symbol: str, lo: float, hi: float) -> float:
    times = [t for t, s in events if s == symbol and lo <= t <= hi]
    return min(times) if times else NAN


def _score_timespeak(labels: dict[str, Any], heard: list[tuple[float, str]], text: TextEvents) -> dict[str, float]:
    digit, target = labels["digit"], labels["target_time_s"]
    right = [t for t, s in heard if s == digit]
    return {
        "on_time": float(not math.isnan(_first_match(heard, digit, target - TIMESPEAK_TOL_S,
                                                     target + TIMESPEAK_TOL_S))),
        "timing_err_s": right[0] - target if right else NAN,
        "text_on_time": float(not math.isnan(_first_match(_digits(text), digit, target - TIMESPEAK_TOL_S,
                                                          target + TIMESPEAK_TOL_S))),
    }


def _score_cuespeak(labels: dict[str, Any], heard: list[tuple[float, str]], text: TextEvents) -> dict[str, float]:
    digit, cue = labels["digit"], labels["cue_time_s"]
    first = _first_match(heard, digit, cue, cue + CUESPEAK_WINDOW_S)
    return {
        "on_time": float(not math.isnan(first)),
        "latency_s": first - cue,
        "text_on_time": float(not math.isnan(_first_match(_digits(text), digit, cue, cue + CUESPEAK_WINDOW_S))),
    }


def _score_repcount(labels: dict[str, Any], heard: list[tuple[float, str]], text: TextEvents) -> dict[str, float]:
    spoken = [(t, s) for t, s in heard if s.isdigit()]
    final = int(spoken[-1][1]) if spoken else 0
    err = abs(final - labels["count"])
    hits = [not math.isnan(_first_match(spoken, str(k), rep, rep + REPCOUNT_WINDOW_S))
            for k, rep in enumerate(labels["rep_times_s"], start=1)]
    text_digits = _digits(text)
    return {
        "final_count": float(final),
        "abs_err": float(err),
        "obo": float(err <= 1),
        "on_time": float(np.mean(hits)),
        "text_abs_err": float(abs((int(text_digits[-1][1]) if text_digits else 0) - labels["count"])),
    }


def audible_until(wave: np.ndarray, sr: int = SAMPLE_RATE, threshold_dbfs: float = SILENCE_DBFS) -> float:
    """End time of the last 20 ms frame whose RMS exceeds ``threshold_dbfs`` (0.0 if none)."""
    frame = sr // 50
    x = np.asarray(wave, np.float64)
    n = x.size // frame
    if n == 0:
        return 0.0
    rms = np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1))
    loud = np.flatnonzero(rms > 10 ** (threshold_dbfs / 20))
    return float((loud[-1] + 1) * frame / sr) if loud.size else 0.0


def _score_interrupt(labels: dict[str, Any], heard: list[tuple[float, str]], wave: np.ndarray,
                     text: TextEvents) -> dict[str, float]:
    barge, tol = labels["barge_in_s"], labels.get("yield_tol_s", YIELD_TOL_S)
    speaking = any(barge - 1.0 <= t <= barge for t, _ in heard)
    lo = round((barge + tol) * SAMPLE_RATE)
    late_onset = any(t > barge + tol for t, _ in heard)
    late_energy = audible_until(wave[lo:]) > 0.0
    stopped = not (late_onset or late_energy)
    tail = audible_until(wave[round(barge * SAMPLE_RATE) :])
    return {
        "speaking": float(speaking),
        "stopped": float(stopped),
        "yielded": float(speaking and stopped),
        "yield_latency_s": tail if speaking else NAN,
        "text_stopped": float(not any(t > barge + tol for t, _ in _digits(text))),
    }


def voice_match(heard: Sequence[tuple[float, str]], text: TextEvents) -> float:
    """Fraction of the model's own text-out symbols that its voice says in the same interval (NaN if none).

    A text symbol stamped t (the start of the interval it describes) is matched by a heard onset of the
    same symbol in [t - VOICE_EARLY_S, t + CHUNK_S]. It measures the voice alone: whether it renders what
    the text says, right or wrong. (Content scores mix this with whether the text itself is right.)
    """
    symbols = [(float(t), ch) for t, word in text for ch in str(word) if not ch.isspace()]
    if not symbols:
        return NAN
    hits = [any(s == sym and t - VOICE_EARLY_S <= th <= t + CHUNK_S for th, s in heard) for t, sym in symbols]
    return float(np.mean(hits))


def _score_single(labels: dict[str, Any], wave: np.ndarray, text: TextEvents) -> dict[str, float]:
    heard = _decode(labels, wave)
    return {**_score_task(labels, heard, wave, text), "voice_match": voice_match(heard, text)}


def _score_task(labels: dict[str, Any], heard: list[tuple[float, str]], wave: np.ndarray,
                text: TextEvents) -> dict[str, float]:
    task = labels["task"]
    if task == "repeat":
        return _score_repeat(labels, heard, text)
    if task == "timespeak":
        return _score_timespeak(labels, heard, text)
    if task == "cuespeak":
        return _score_cuespeak(labels, heard, text)
    if task == "repcount":
        return _score_repcount(labels, heard, text)
    if task == "interrupt":
        return _score_interrupt(labels, heard, wave, text)
    raise ValueError(f"no scorer for task {task!r}")


def score(labels: dict[str, Any], out_wave: np.ndarray, out_text_events: TextEvents = ()) -> dict[str, float]:
    """Metrics of one episode: the model's voice ``out_wave`` (16 kHz, episode-aligned) against ``labels``."""
    wave = np.asarray(out_wave, np.float32).reshape(-1)
    if labels["task"] != "mixed":
        return _score_single(labels, wave, out_text_events)
    sums: dict[str, list[float]] = defaultdict(list)
    for seg in labels["segments"]:
        off, dur = seg["offset_s"], seg["duration_s"]
        piece = wave[round(off * SAMPLE_RATE) : round((off + dur) * SAMPLE_RATE)]
        piece = np.pad(piece, (0, max(0, round(dur * SAMPLE_RATE) - piece.size)))
        text = [(t - off, s) for t, s in out_text_events if off <= t < off + dur]
        sub = _score_single({"voice": labels.get("voice", "dtmf"), **seg["labels"]}, piece, text)
        for k, v in sub.items():
            sums[f"{seg['task']}.{k}"].append(v)
    return {k: _mean(v, _finite_only(k)) for k, v in sums.items()}


def _finite_only(key: str) -> bool:
    return key.endswith(("latency_s", "_err_s", "voice_match"))


def _mean(values: Sequence[float], finite_only: bool) -> float:
    vals = [v for v in values if not (finite_only and not math.isfinite(v))]
    return float(np.mean(vals)) if vals else NAN


_RENAME = {"abs_err": "mae", "yielded": "yield_rate", "text_abs_err": "text_mae"}


def aggregate(metrics: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over episodes (keys missing from an episode are skipped), plus ``episodes``."""
    values: dict[str, list[float]] = defaultdict(list)
    for m in metrics:
        for k, v in m.items():
            values[k].append(float(v))
    out: dict[str, float] = {}
    for k, vs in values.items():
        prefix, _, name = k.rpartition(".")
        new = f"{prefix}.{_RENAME.get(name, name)}" if prefix else _RENAME.get(name, name)
        out[new] = _mean(vs, _finite_only(k))
    out["episodes"] = float(len(metrics))
    return out

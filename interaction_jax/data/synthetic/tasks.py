"""Synthetic interaction tasks: ``(seed, duration_chunks=None, voice="dtmf", echo=True) -> Episode``.

Each generator is a pure function of its seed (``np.random.default_rng(seed)``) and writes labels that make
scoring exact (see ``scoring.py``). Timing follows the model's causality: frame n is the image at t = 0.2 n
and the model hears/sees chunk n only after it ends, so the earliest reply to an event in chunk n starts at
0.2 (n + 1). Ground-truth replies are placed accordingly (never before the model could have reacted).

Echo and noise are applied last, once per episode (``_finish``): white room noise at -70..-50 dBFS, plus the
model voice delayed by 10-120 ms at -30..-10 dB. ``Episode.user_audio`` is the full microphone (dry user +
noise + echo); the dry microphone is *recomputed* by ``user_dry_audio`` from the stored ``echo_gain_db`` /
``echo_delay_s`` labels instead of being stored, which saves a third of the audio bytes. The recomputation
is exact up to float32 rounding of the sum (< 1e-6 absolute). Echo parameters are drawn even when
``echo=False``, so the same seed gives the same episode with and without echo, apart from the echo itself.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from interaction_jax.data.episode import CHUNK_SAMPLES, SAMPLE_RATE, Episode, validate
from interaction_jax.data.synthetic import frames as fr
from interaction_jax.data.synthetic.voices import Event, Voice, get_voice

CHUNK_S = CHUNK_SAMPLES / SAMPLE_RATE
DEFAULT_CHUNKS = (30, 60)  # 6-12 s unless a task needs more
MIN_CHUNKS = {"repeat": 25, "timespeak": 20, "cuespeak": 15, "repcount": 20, "interrupt": 25, "mixed": 30}
DIGITS = "0123456789"
GAP_S = (0.05, 0.15)  # between consecutive symbols of one utterance


@dataclasses.dataclass
class _Draft:
    """An episode before noise and echo: what a task plans, and what ``mixed`` concatenates."""

    n_chunks: int
    user: np.ndarray  # dry user voice, float32 [n_chunks * 3200]
    model: np.ndarray
    frames: np.ndarray | None
    user_text: list[tuple[float, str]]
    model_words: list[tuple[float, str]]
    labels: dict[str, Any]


def _q(t: float) -> float:
    """Snap a time to the sample grid, so labels are exactly where the audio is."""
    return round(t * SAMPLE_RATE) / SAMPLE_RATE


def _utterance(voice: Voice, rng: np.random.Generator, symbols: str) -> tuple[list[float], list[float], float]:
    """Durations, relative onsets and total span of ``symbols`` spoken with GAP_S gaps."""
    durs = voice.durations(list(symbols), rng)
    gaps = rng.uniform(*GAP_S, max(len(symbols) - 1, 0))
    rel = [0.0]
    for d, g in zip(durs[:-1], gaps, strict=True):
        rel.append(rel[-1] + d + float(g))
    return durs, rel, rel[-1] + durs[-1]


def _events(start: float, symbols: str, durs: list[float], rel: list[float]) -> list[Event]:
    return [(_q(start + r), s, d) for s, d, r in zip(symbols, durs, rel, strict=True)]


def _pick_chunks(rng: np.random.Generator, n: int | None, need_s: float, task: str) -> int:
    need = math.ceil(need_s / CHUNK_S - 1e-9)
    if n is None:
        lo = max(DEFAULT_CHUNKS[0], need)
        return int(rng.integers(lo, max(lo, DEFAULT_CHUNKS[1]) + 1))
    if need > n:
        raise ValueError(f"{task}: duration_chunks={n} is too short for this episode (needs {need})")
    return n


def _render(voice: Voice, events: list[Event], n: int, rng: np.random.Generator) -> np.ndarray:
    return voice.render(events, n * CHUNK_SAMPLES, rng) if events else np.zeros(n * CHUNK_SAMPLES, np.float32)


def _words(events: list[Event]) -> list[tuple[float, str]]:
    return [(t, s) for t, s, _ in events]


def _limit(n: int | None) -> float:
    return (n if n is not None else DEFAULT_CHUNKS[1]) * CHUNK_S


# ------------------------------------------------------------------------------------------ the tasks


def _plan_repeat(rng: np.random.Generator, voice: Voice, n: int | None) -> _Draft:
    """User says 3-6 digits; 250-400 ms after the user's last tone ends the model says them back."""
    digits = "".join(rng.choice(list(DIGITS), int(rng.integers(3, 7))))
    u_durs, u_rel, u_span = _utterance(voice, rng, digits)
    reply = float(rng.uniform(0.25, 0.40))
    m_durs, m_rel, m_span = _utterance(voice, rng, digits)
    body = u_span + reply + m_span
    n = _pick_chunks(rng, n, 0.3 + body + 0.4, "repeat")
    start = _q(rng.uniform(0.3, n * CHUNK_S - 0.4 - body))
    user_ev = _events(start, digits, u_durs, u_rel)
    user_end = user_ev[-1][0] + u_durs[-1]
    model_ev = _events(user_end + reply, digits, m_durs, m_rel)
    return _Draft(n, _render(voice, user_ev, n, rng), _render(voice, model_ev, n, rng), None, [],
                  _words(model_ev), {
                      "task": "repeat", "user_digits": digits, "user_onsets_s": [e[0] for e in user_ev],
                      "user_end_s": user_end, "model_digits": digits, "model_onset_s": model_ev[0][0],
                      "model_onsets_s": [e[0] for e in model_ev]})


def _plan_timespeak(rng: np.random.Generator, voice: Voice, n: int | None) -> _Draft:
    """User types "say 7 in 3 s" at t; the model says 7 at t + 3."""
    limit = _limit(n)
    digit = str(rng.integers(10))
    text_time = _q(rng.uniform(0.2, min(2.0, limit - 2.6)))
    delay = int(rng.integers(2, min(8, math.floor(limit - 0.6 - text_time)) + 1))
    (dur,) = voice.durations([digit], rng)
    target = _q(text_time + delay)
    n = _pick_chunks(rng, n, target + dur + 0.4, "timespeak")
    text = f"say {digit} in {delay} s"
    model_ev = [(target, digit, dur)]
    return _Draft(n, np.zeros(n * CHUNK_SAMPLES, np.float32), _render(voice, model_ev, n, rng), None,
                  [(text_time, text)], _words(model_ev), {
                      "task": "timespeak", "digit": digit, "delay_s": delay, "text": text,
                      "text_time_s": text_time, "target_time_s": target})


def _plan_cuespeak(rng: np.random.Generator, voice: Voice, n: int | None, hw: fr.HW = fr.DEFAULT_HW) -> _Draft:
    """A digit appears in frame k (t = 0.2 k); the model says it 0.2-0.4 s later (its first chance)."""
    n = _pick_chunks(rng, n, 0.0, "cuespeak")
    digit = str(rng.integers(10))
    cue = int(rng.integers(5, n - 7))
    visible = int(rng.integers(3, 11))  # 0.6-2 s on screen
    style = fr.random_style(rng, hw)
    images = []
    for i in range(n):
        if cue <= i < cue + visible:
            images.append(fr.render_digit(digit, rng, hw, style))
        elif (u := rng.random()) < 0.15:
            images.append(fr.render_distractor(rng, hw, style))
        elif u < 0.18:
            images.append(fr.render_flash(rng, hw))
        else:
            images.append(fr.render_blank(rng, hw, style.bg))
    (dur,) = voice.durations([digit], rng)
    onset = _q((cue + 1) * CHUNK_S + rng.uniform(0.0, 0.2))
    model_ev = [(onset, digit, dur)]
    return _Draft(n, np.zeros(n * CHUNK_SAMPLES, np.float32), _render(voice, model_ev, n, rng),
                  np.stack(images), [], _words(model_ev), {
                      "task": "cuespeak", "digit": digit, "cue_frame": cue, "cue_time_s": _q(cue * CHUNK_S),
                      "cue_end_s": _q(min(cue + visible, n) * CHUNK_S), "model_onset_s": onset})


def _plan_repcount(rng: np.random.Generator, voice: Voice, n: int | None, hw: fr.HW = fr.DEFAULT_HW) -> _Draft:
    """An object repeats a motion N <= 9 times; the model says "1", "2", ... as each repetition completes."""
    limit = _limit(n)
    start = float(rng.uniform(0.4, 1.5))
    count = min(int(rng.integers(1, 10)), max(1, math.floor((limit - start - 1.0) / 0.8)))
    period = float(rng.uniform(0.8, max(0.8, min(2.0, (limit - start - 1.0) / count))))
    motion = fr.random_motion(rng, start, period, count)
    rep_times = motion.rep_times()
    n = _pick_chunks(rng, n, rep_times[-1] + 1.0, "repcount")
    durs = voice.durations([str(k) for k in range(1, count + 1)], rng)
    model_ev = []
    for k, (rep, dur) in enumerate(zip(rep_times, durs, strict=True), start=1):
        first_frame = math.ceil(rep / CHUNK_S - 1e-9)  # the first frame that shows the completed repetition
        model_ev.append((_q((first_frame + 1) * CHUNK_S + rng.uniform(0.0, 0.05)), str(k), dur))
    images = np.stack([fr.render_object(i * CHUNK_S, motion, rng, hw) for i in range(n)])
    return _Draft(n, np.zeros(n * CHUNK_SAMPLES, np.float32), _render(voice, model_ev, n, rng), images, [],
                  _words(model_ev), {
                      "task": "repcount", "count": count, "period_s": period, "start_s": start,
                      "rep_times_s": rep_times, "motion": motion.kind,
                      "model_onsets_s": [e[0] for e in model_ev]})


def _plan_interrupt(rng: np.random.Generator, voice: Voice, n: int | None) -> _Draft:
    """The model reads a long digit string; the user barges in; the model yields within 0.3 s.

    The model can first react at the chunk boundary after the barge-in (``react_s``): tones starting
    before it are spoken (they were generated before the user was heard), the tone in progress finishes,
    and everything is cut at ``barge_in + 0.3`` at the latest, so ``model_stop_s - barge_in_s <= 0.3``.
    """
    limit = _limit(n)
    m_start = float(rng.uniform(0.3, 1.0))
    length = int(rng.integers(8, 21))
    planned = "".join(rng.choice(list(DIGITS), length))
    m_durs, m_rel, _ = _utterance(voice, rng, planned)
    user_digits = "".join(rng.choice(list(DIGITS), int(rng.integers(2, 6))))
    u_durs, u_rel, u_span = _utterance(voice, rng, user_digits)
    while length > 5 and m_start + m_rel[length - 2] + u_span + 0.5 > limit:
        length -= 1
    lo, hi = m_start + m_rel[2], m_start + m_rel[length - 2]
    barge = _q(rng.uniform(lo, hi))
    react = _q((math.floor(barge / CHUNK_S) + 1) * CHUNK_S)
    model_ev: list[Event] = []
    for t, s, d in _events(m_start, planned, m_durs, m_rel):
        if t >= react:
            break
        d = min(t + d, barge + 0.3) - t
        if d >= 0.03:  # a sliver of a tone would only be a click
            model_ev.append((t, s, d))
    stop = max(t + d for t, _, d in model_ev)
    user_ev = _events(barge, user_digits, u_durs, u_rel)
    n = _pick_chunks(rng, n, max(barge + u_span, stop) + 0.5, "interrupt")
    return _Draft(n, _render(voice, user_ev, n, rng), _render(voice, model_ev, n, rng), None, [],
                  _words(model_ev), {
                      "task": "interrupt", "barge_in_s": barge, "react_s": react, "model_stop_s": stop,
                      "model_digits": "".join(e[1] for e in model_ev), "planned_digits": planned[:length],
                      "user_digits": user_digits, "user_end_s": user_ev[-1][0] + u_durs[-1]})


SINGLE_PLANS: dict[str, Callable[..., _Draft]] = {
    "repeat": _plan_repeat, "timespeak": _plan_timespeak, "cuespeak": _plan_cuespeak,
    "repcount": _plan_repcount, "interrupt": _plan_interrupt,
}
VIDEO_TASKS = ("cuespeak", "repcount")


def _plan_mixed(rng: np.random.Generator, voice: Voice, n: int | None) -> _Draft:
    """2-3 random single tasks back to back (chunk-aligned), as one longer episode with one room and echo."""
    names = list(SINGLE_PLANS)
    if n is None:
        k = int(rng.integers(2, 4))
        lengths: list[int | None] = [None] * k
    else:
        k = max(1, min(3, n // DEFAULT_CHUNKS[0]))
        lengths = [n // k] * (k - 1) + [n - (n // k) * (k - 1)]
    tasks = [names[int(rng.integers(len(names)))] for _ in range(k)]
    drafts = [SINGLE_PLANS[t](np.random.default_rng(int(rng.integers(2**62))), voice, m)
              for t, m in zip(tasks, lengths, strict=True)]
    bg = fr.random_style(rng).bg
    offset, segments, user_text, words, images = 0.0, [], [], [], []
    for d in drafts:
        segments.append({"task": d.labels["task"], "offset_s": offset, "duration_s": d.n_chunks * CHUNK_S,
                         "labels": d.labels})
        user_text += [(_q(t + offset), s) for t, s in d.user_text]
        words += [(_q(t + offset), s) for t, s in d.model_words]
        images.append(d.frames if d.frames is not None else
                      np.stack([fr.render_blank(rng, bg=bg) for _ in range(d.n_chunks)]))
        offset = _q(offset + d.n_chunks * CHUNK_S)
    return _Draft(sum(d.n_chunks for d in drafts), np.concatenate([d.user for d in drafts]),
                  np.concatenate([d.model for d in drafts]),
                  np.concatenate(images) if any(t in VIDEO_TASKS for t in tasks) else None,
                  user_text, words, {"task": "mixed", "segments": segments})


# ------------------------------------------------------------------------------------------ echo, finishing


def mix_echo(user: np.ndarray, model: np.ndarray, gain_db: float, delay_s: float) -> np.ndarray:
    """``user`` plus the model voice delayed by ``delay_s`` and scaled by ``gain_db`` (float32).

    Both waves start at t = 0; the result has the longer of the two lengths (the shorter is zero-padded), so
    the evaluation loop can pass the generated voice so far and keep the last chunk of the result.
    """
    n = max(user.size, model.size)
    out = np.zeros(n, np.float32)
    out[: user.size] = user
    d = round(delay_s * SAMPLE_RATE)
    if d < n:
        m = model[: n - d].astype(np.float32)
        out[d : d + m.size] += np.float32(10 ** (gain_db / 20)) * m
    return out


def user_dry_audio(ep: Episode) -> np.ndarray:
    """The microphone without the model's echo (room noise stays): what a real user would have produced."""
    if not ep.labels.get("echo", False):
        return ep.user_audio.copy()
    echo = mix_echo(np.zeros(0, np.float32), ep.model_audio, ep.labels["echo_gain_db"], ep.labels["echo_delay_s"])
    return ep.user_audio - echo[: ep.user_audio.size]


user_dry = user_dry_audio  # the name used in the design notes


def _finish(draft: _Draft, rng: np.random.Generator, voice: str, echo: bool) -> Episode:
    gain_db = float(rng.uniform(-30.0, -10.0))
    delay_s = _q(rng.uniform(0.010, 0.120))
    noise_dbfs = float(rng.uniform(-70.0, -50.0))
    user = draft.user + rng.normal(0.0, 10 ** (noise_dbfs / 20), draft.user.size).astype(np.float32)
    if echo:
        user = mix_echo(user, draft.model, gain_db, delay_s)
    labels = {**draft.labels, "voice": voice, "echo": bool(echo), "echo_gain_db": gain_db,
              "echo_delay_s": delay_s, "noise_dbfs": noise_dbfs}
    ep = Episode(user.astype(np.float32), draft.model.astype(np.float32), draft.frames, draft.user_text,
                 draft.model_words, labels)
    return validate(ep, f"synthetic {labels['task']}")


def _generator(name: str, plan: Callable[..., _Draft]) -> Callable[..., Episode]:
    def generate_task(seed: int, duration_chunks: int | None = None, voice: str = "dtmf",
                      echo: bool = True) -> Episode:
        if duration_chunks is not None and duration_chunks < MIN_CHUNKS[name]:
            raise ValueError(f"{name}: duration_chunks={duration_chunks} is below the minimum "
                             f"{MIN_CHUNKS[name]} for this task")
        rng = np.random.default_rng(seed)
        return _finish(plan(rng, get_voice(voice), duration_chunks), rng, voice, echo)

    generate_task.__name__ = name
    generate_task.__doc__ = (plan.__doc__ or "") + "\n\n(seed, duration_chunks=None, voice, echo) -> Episode"
    return generate_task


TASKS: dict[str, Callable[..., Episode]] = {
    name: _generator(name, plan) for name, plan in {**SINGLE_PLANS, "mixed": _plan_mixed}.items()
}


def generate(task: str, seed: int, **kwargs: Any) -> Episode:
    """``TASKS[task](seed, **kwargs)`` with a helpful error for unknown task names."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; available: {', '.join(TASKS)}")
    return TASKS[task](seed, **kwargs)

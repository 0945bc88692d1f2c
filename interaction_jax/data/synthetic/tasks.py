"""Synthetic interaction tasks: ``(seed, duration_chunks=None, voice="dtmf", echo=True) -> Episode``.

Each generator is a pure function of its seed (``np.random.default_rng(seed)``) and writes labels that make
scoring exact (see ``scoring.py``).

**Every target is caused by something the model has already heard or seen** (the learning issue measured
what happens otherwise: loss that no model can learn, and free-running states training never shows). The
model hears chunk n (interval [0.2 n, 0.2 n + 0.2)) at the end of that interval and its outputs of chunk n
describe interval n + 1. So a reply whose cause becomes perceptible in chunk n starts at 0.2 (n + 1) at the
earliest, and that is where the generators put it:

* ``repeat``: the user has finished when a silence longer than any gap inside an utterance (``GAP_S``)
  has been heard. The model answers at the first chunk boundary ``REPLY_SILENCE_S`` after the user's last
  tone (latency 0.2-0.4 s).
* ``timespeak``: "say D in K s" typed at t; the model speaks in the interval that holds t + K (typed text
  enters at >= 2 bytes per chunk, so the whole instruction is in long before).
* ``cuespeak``: a digit appears in frame k; the model says it in interval k + 1.
* ``repcount``: "k" in the interval after the first frame that shows repetition k completed.
* ``interrupt``: "count" typed; the model counts 1..9, one number per chunk (per 3 chunks when spoken),
  from a fixed delay after the text has arrived. The user barges in with keys the model never says
  (``BARGE_SYMBOLS``); the model's voice stops after the chunk in which the barge-in is audible
  (``AUDIBLE_S`` of it heard).

**The model's voice keeps an even pace**: one symbol per chunk, each starting 15-45 ms after a chunk
boundary. Its text-out is then exactly ``[EPAD, symbol]`` in the chunk before, so no target depends on a
random gap the model cannot know: the text's Bayes floor is 0 for every task (``text_floor``).
The user's voice varies widely (level, tone length, gaps; see ``voices.USER_DTMF``).

Echo and noise are applied last, once per episode (``_finish``): white room noise at -70..-50 dBFS (none,
i.e. digital silence, in ``DIGITAL_SILENCE_P`` of episodes: label ``noise_dbfs`` None), plus the model voice
delayed by 10-120 ms at -30..-10 dB. ``Episode.user_audio`` is the full microphone (dry user + noise + echo);
the dry microphone is *recomputed* by ``user_dry_audio`` from the stored ``echo_gain_db`` / ``echo_delay_s``
labels instead of being stored, which saves a third of the audio bytes. The recomputation
is exact up to float32 rounding of the sum (< 1e-6 absolute). Echo parameters are drawn even when
``echo=False``, so the same seed gives the same episode with and without echo, apart from the echo itself.

``stream(seed, tasks, min_chunks)`` concatenates random tasks into one continuous episode: training packs
its windows with them, so no window holds zero-weight padding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from interaction_jax.data.episode import CHUNK_SAMPLES, SAMPLE_RATE, Episode, validate
from interaction_jax.data.synthetic import frames as fr
from interaction_jax.data.synthetic.scoring import YIELD_TOL_S
from interaction_jax.data.synthetic.voices import Event, Voice, get_voices

CHUNK_S = CHUNK_SAMPLES / SAMPLE_RATE
MAX_CHUNKS = 40  # 8 s: every single-task episode fits one training window (tiny's data.window_chunks)
EXTRA_TAIL_CHUNKS = 3  # episodes end 0-3 chunks after their last event (plus TAIL_S)
TAIL_S = 0.4  # silence after the last sound of an episode
DIGITS = "0123456789"
GAP_S = (0.04, 0.15)  # between consecutive symbols of one user utterance
REPLY_SILENCE_S = 0.2  # > max gap + the 25 ms half-window of the analysis: "the user has finished"
AUDIBLE_S = 0.03  # an onset is heard in the chunk holding at least this much of it
# The model's symbol onsets after their chunk boundary. At least 15 ms: the centred analysis frame that ends
# interval n reaches 12.5 ms into interval n+1, and must not see a tone the model decides only in chunk n.
MODEL_JITTER_S = (0.015, 0.045)
SAY, IN, SECONDS = "S", "I", "s"  # the words of a spoken timespeak instruction (voices that speak_instructions)
BARGE_SYMBOLS = "*#ABCD"  # what the user presses to talk over the model: never said by the model
COUNT_TEXT = "count"
COUNT_START_CHUNKS = 4  # the model's "1" starts this many chunks after the chunk "count" was typed in
MIN_TEXT_RATE = 2  # bytes per chunk the TEXT_IN FIFO delivers at least (text.text_in_slots >= 2)
# Label: the text readable in each frame ("" for none; here the cuespeak digit), one entry per chunk. Only
# the optional frame-text auxiliary loss reads it (model.frame_text_weight); real episodes leave it out.
FRAME_TEXT = "frame_text"
# Repcount's moving object: its displacement in [0, 1] (0 at rest) in each frame; the optional frame-motion
# auxiliary loss reads it (model.frame_motion_weight). Other scenes leave it out (None once concatenated).
FRAME_MOTION = "frame_motion"
# Label: what the user says aloud, [[onset_s, duration_s, symbol], ...] (empty when the user is silent). Only the
# optional heard-text auxiliaries read it (model.heard_text_weight / heard_onset_weight); real episodes leave it out.
HEARD = "heard"
# Fraction of episodes recorded with no room noise at all: files made digitally (a synthesiser, a TTS) hold
# exact zeros between sounds, and a model that only ever heard a -70..-50 dBFS floor reads them as a
# different world (measured: typed instructions 1/8 right on digital silence vs 6/8 with a floor).
DIGITAL_SILENCE_P = 0.15
MIN_CHUNKS = {"repeat": 25, "timespeak": 20, "cuespeak": 15, "repcount": 20, "interrupt": 25, "mixed": 30}


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


def _chunk_of(t: float) -> int:
    """The chunk whose interval holds time t."""
    return math.floor(t / CHUNK_S + 1e-9)


def _boundary_at_or_after(t: float) -> int:
    """Index of the first chunk boundary at or after time t (t on a boundary is that boundary)."""
    return math.ceil(t / CHUNK_S - 1e-9)


def _utterance(voice: Voice, rng: np.random.Generator, symbols: str) -> tuple[list[float], list[float], float]:
    """Durations, relative onsets and total span of ``symbols`` spoken by the user with GAP_S gaps."""
    durs = voice.durations(list(symbols), rng)
    gaps = rng.uniform(*GAP_S, max(len(symbols) - 1, 0))
    rel = [0.0]
    for d, g in zip(durs[:-1], gaps, strict=True):
        rel.append(rel[-1] + d + float(g))
    return durs, rel, rel[-1] + durs[-1]


def _events(start: float, symbols: str, durs: list[float], rel: list[float]) -> list[Event]:
    return [(_q(start + r), s, d) for s, d, r in zip(symbols, durs, rel, strict=True)]


def _model_says(voice: Voice, rng: np.random.Generator, symbols: Sequence[str], first_chunk: int) -> list[Event]:
    """The model's even pace: symbol i starts MODEL_JITTER_S after the boundary of chunk first_chunk + i * pace
    (pace = the voice's ``chunks_per_symbol``: 1 for DTMF tones, 3 for spoken words)."""
    pace = int(getattr(voice, "chunks_per_symbol", 1))
    durs = voice.durations(list(symbols), rng)
    jitter = rng.uniform(*MODEL_JITTER_S, len(symbols))
    return [(_q((first_chunk + i * pace) * CHUNK_S + float(j)), s, d)
            for i, (s, d, j) in enumerate(zip(symbols, durs, jitter, strict=True))]


def _heard(events: list[Event]) -> list[list[Any]]:
    """User events as the ``heard`` label: [[onset_s, duration_s, symbol], ...]."""
    return [[t, round(float(d), 6), sym] for t, sym, d in events]


def _end(events: list[Event]) -> float:
    return max((t + d for t, _, d in events), default=0.0)


def _length(rng: np.random.Generator, n: int | None, last_sound_s: float, task: str) -> int:
    """Chunks of an episode whose last sound ends at ``last_sound_s``: the minimum, plus a random tail."""
    need = _boundary_at_or_after(last_sound_s + TAIL_S)
    if n is None:
        return need + int(rng.integers(0, EXTRA_TAIL_CHUNKS + 1))
    if need > n:
        raise ValueError(f"{task}: duration_chunks={n} is too short for this episode (needs {need})")
    return n


def _limit(n: int | None) -> float:
    """Seconds available to plan in (the whole episode minus the final silence)."""
    return (n if n is not None else MAX_CHUNKS - EXTRA_TAIL_CHUNKS) * CHUNK_S - TAIL_S


def _render(voice: Voice, events: list[Event], n: int, rng: np.random.Generator) -> np.ndarray:
    return voice.render(events, n * CHUNK_SAMPLES, rng) if events else np.zeros(n * CHUNK_SAMPLES, np.float32)


def _words(events: list[Event]) -> list[tuple[float, str]]:
    return [(t, s) for t, s, _ in events]


# ------------------------------------------------------------------------------------------ the tasks
# Each plan takes (rng, user_voice, model_voice, duration_chunks or None) and returns a _Draft.


def _plan_repeat(rng: np.random.Generator, user_v: Voice, model_v: Voice, n: int | None) -> _Draft:
    """User says 3-6 digits; at the first chunk boundary >= 0.2 s after the last tone, the model says them."""
    digits = "".join(rng.choice(list(DIGITS), int(rng.integers(3, 7))))
    u_durs, u_rel, _ = _utterance(user_v, rng, digits)
    start = _q(rng.uniform(0.2, 1.0))
    user_ev = _events(start, digits, u_durs, u_rel)
    user_end = _end(user_ev)
    reply_chunk = _boundary_at_or_after(user_end + REPLY_SILENCE_S)
    model_ev = _model_says(model_v, rng, digits, reply_chunk)
    n = _length(rng, n, _end(model_ev), "repeat")
    return _Draft(n, _render(user_v, user_ev, n, rng), _render(model_v, model_ev, n, rng), None, [],
                  _words(model_ev), {
                      "task": "repeat", "user_digits": digits, "user_onsets_s": [e[0] for e in user_ev],
                      "user_end_s": user_end, "model_digits": digits, "model_onset_s": model_ev[0][0],
                      "model_onsets_s": [e[0] for e in model_ev], HEARD: _heard(user_ev)})


def _plan_timespeak(rng: np.random.Generator, user_v: Voice, model_v: Voice, n: int | None) -> _Draft:
    """User types "say 7 in 3 s" at t; the model says 7 in the interval that holds t + 3.

    A user voice that ``speaks_instructions`` (speech) says "say seven in three seconds" instead, and the
    delay counts from the end of the utterance, the moment the model has heard the whole instruction.
    """
    limit = _limit(n)
    digit = str(rng.integers(10))
    text_time = _q(rng.uniform(0.2, min(1.0, limit - 2.2)))
    delay = int(rng.integers(2, max(2, min(6, math.floor(limit - 0.2 - text_time))) + 1))
    user_ev: list[Event] = []
    if getattr(user_v, "speaks_instructions", False):
        for _ in range(4):  # a slow phrase leaves less time: shorten the delay and say the new phrase
            phrase = f"{SAY}{digit}{IN}{delay}{SECONDS}"
            durs, rel, span = _utterance(user_v, rng, phrase)
            fits = math.floor(limit - 0.2 - text_time - span)
            if delay <= fits:
                break
            delay = fits
        if delay < 2 or delay > fits:
            raise ValueError(f"timespeak: duration_chunks={n} is too short for a spoken instruction")
        user_ev = _events(text_time, phrase, durs, rel)
    heard = _end(user_ev) if user_ev else text_time
    target = _q(heard + delay)
    model_ev = _model_says(model_v, rng, digit, _chunk_of(target))
    n = _length(rng, n, _end(model_ev), "timespeak")
    text = f"say {digit} in {delay} s"
    user = _render(user_v, user_ev, n, rng)
    return _Draft(n, user, _render(model_v, model_ev, n, rng), None, [] if user_ev else [(text_time, text)],
                  _words(model_ev), {
                      "task": "timespeak", "digit": digit, "delay_s": delay, "text": text,
                      "text_time_s": text_time, "target_time_s": target, "model_onset_s": model_ev[0][0],
                      HEARD: _heard(user_ev), **({"spoken_instruction_end_s": heard} if user_ev else {})})


def _plan_cuespeak(rng: np.random.Generator, user_v: Voice, model_v: Voice, n: int | None,
                   hw: fr.HW = fr.DEFAULT_HW) -> _Draft:
    """A digit appears in frame k (t = 0.2 k); the model says it in interval k + 1, its first chance."""
    digit = str(rng.integers(10))
    cue = int(rng.integers(3, 11))
    visible = int(rng.integers(3, 11))  # 0.6-2 s on screen
    model_ev = _model_says(model_v, rng, digit, cue + 1)
    # By default the episode lasts until the digit has left the screen; a given length may cut it short.
    shown = (cue + visible + 1) * CHUNK_S - TAIL_S if n is None else 0.0
    n = _length(rng, n, max(_end(model_ev), shown), "cuespeak")
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
    return _Draft(n, np.zeros(n * CHUNK_SAMPLES, np.float32), _render(model_v, model_ev, n, rng),
                  np.stack(images), [], _words(model_ev), {
                      "task": "cuespeak", "digit": digit, "cue_frame": cue, "cue_time_s": _q(cue * CHUNK_S),
                      "cue_end_s": _q(min(cue + visible, n) * CHUNK_S), "model_onset_s": model_ev[0][0],
                      FRAME_TEXT: [digit if cue <= i < cue + visible else "" for i in range(n)]})


def _plan_repcount(rng: np.random.Generator, user_v: Voice, model_v: Voice, n: int | None,
                   hw: fr.HW = fr.DEFAULT_HW) -> _Draft:
    """An object repeats a motion N <= 9 times; the model says "k" after the frame showing repetition k done."""
    limit = _limit(n)
    start = float(rng.uniform(0.4, 1.0))
    fits = lambda c: (limit - start - 0.6) / c  # longest period that still fits c repetitions
    count = int(rng.integers(1, 10))
    while count > 1 and fits(count) < 0.7:
        count -= 1
    period = float(rng.uniform(0.7, max(0.7, min(1.2, fits(count)))))
    motion = fr.random_motion(rng, start, period, count)
    rep_times = motion.rep_times()
    first_frames = [_boundary_at_or_after(rep) for rep in rep_times]  # first frame showing rep k done
    model_ev: list[Event] = []
    for k, f in enumerate(first_frames, start=1):
        model_ev += _model_says(model_v, rng, str(k), f + 1)
    n = _length(rng, n, _end(model_ev), "repcount")
    images = np.stack([fr.render_object(i * CHUNK_S, motion, rng, hw) for i in range(n)])
    return _Draft(n, np.zeros(n * CHUNK_SAMPLES, np.float32), _render(model_v, model_ev, n, rng), images, [],
                  _words(model_ev), {
                      "task": "repcount", "count": count, "period_s": period, "start_s": start,
                      "rep_times_s": rep_times, "rep_frames": first_frames, "motion": motion.kind,
                      "model_onsets_s": [e[0] for e in model_ev], FRAME_TEXT: [""] * n,
                      FRAME_MOTION: [motion.phase(i * CHUNK_S) for i in range(n)]})


def _plan_interrupt(rng: np.random.Generator, user_v: Voice, model_v: Voice, n: int | None,
                    barge: bool = True) -> _Draft:
    """User types "count"; the model counts 1..9, one per chunk; the user barges in; the model stops.

    The barge-in (2-4 of ``BARGE_SYMBOLS``) starts between the onsets of "3" and "8". It becomes audible in
    chunk ``heard_chunk``, the chunk holding its first ``AUDIBLE_S``; every number planned for an interval
    after that chunk is dropped, so the voice stops within about 0.35 s of the barge-in and no target
    before ``heard_chunk`` depends on it. ``barge=False`` gives the same episode without the barge-in (the
    counterfactual the causality test compares against).
    """
    text_time = _q(rng.uniform(0.2, 1.0))
    first = _chunk_of(text_time) + COUNT_START_CHUNKS
    planned = _model_says(model_v, rng, "123456789", first)
    symbols = "".join(rng.choice(list(BARGE_SYMBOLS), int(rng.integers(2, 5))))
    u_durs, u_rel, _ = _utterance(user_v, rng, symbols)
    barge_s = _q(rng.uniform(planned[2][0], planned[7][0]))
    heard = _chunk_of(barge_s + AUDIBLE_S)
    user_ev = _events(barge_s, symbols, u_durs, u_rel)
    model_ev = [e for e in planned if _chunk_of(e[0]) <= heard] if barge else planned
    # The word under way when the barge-in is heard was decided before it and is finished: a voice whose
    # words outlast the 0.4 s tolerance (speech) is given until the worst-case end of its longest planned
    # word (+50 ms of smear). DTMF keeps 0.4 s and no label, so its episodes are unchanged.
    tol = max(YIELD_TOL_S, AUDIBLE_S + MODEL_JITTER_S[1] + max(d for _, _, d in planned) + 0.05)
    last = max(_end(model_ev), _end(user_ev))
    n = _length(rng, n, last, "interrupt")
    user = _render(user_v, user_ev, n, rng)  # rendered either way, so both variants draw the same numbers
    return _Draft(n, user if barge else np.zeros_like(user), _render(model_v, model_ev, n, rng), None,
                  [(text_time, COUNT_TEXT)], _words(model_ev), {
                      "task": "interrupt", "barge_in_s": barge_s if barge else None, "heard_chunk": heard,
                      "react_s": _q((heard + 1) * CHUNK_S), "model_stop_s": _end(model_ev),
                      "model_digits": "".join(e[1] for e in model_ev), "text_time_s": text_time,
                      "user_digits": symbols, "user_end_s": _end(user_ev), HEARD: _heard(user_ev) if barge else [],
                      **({"yield_tol_s": round(tol, 3)} if tol > YIELD_TOL_S else {})})


SINGLE_PLANS: dict[str, Callable[..., _Draft]] = {
    "repeat": _plan_repeat, "timespeak": _plan_timespeak, "cuespeak": _plan_cuespeak,
    "repcount": _plan_repcount, "interrupt": _plan_interrupt,
}
VIDEO_TASKS = ("cuespeak", "repcount")


def _concat(drafts: list[_Draft], rng: np.random.Generator, task: str) -> _Draft:
    """Back-to-back drafts (chunk-aligned) as one longer draft; scenes without video get blank frames."""
    bg = fr.random_style(rng).bg
    offset, segments, user_text, words, images, frame_text, heard = 0.0, [], [], [], [], [], []
    frame_motion: list[float | None] = []
    for d in drafts:
        frame_text += d.labels.get(FRAME_TEXT, [""] * d.n_chunks)
        frame_motion += d.labels.get(FRAME_MOTION, [None] * d.n_chunks)
        heard += [[_q(t + offset), dur, sym] for t, dur, sym in d.labels.get(HEARD, [])]
        segments.append({"task": d.labels["task"], "offset_s": offset, "duration_s": d.n_chunks * CHUNK_S,
                         "labels": d.labels})
        user_text += [(_q(t + offset), s) for t, s in d.user_text]
        words += [(_q(t + offset), s) for t, s in d.model_words]
        images.append(d.frames if d.frames is not None else
                      np.stack([fr.render_blank(rng, bg=bg) for _ in range(d.n_chunks)]))
        offset = _q(offset + d.n_chunks * CHUNK_S)
    has_video = any(d.frames is not None for d in drafts)
    return _Draft(sum(d.n_chunks for d in drafts), np.concatenate([d.user for d in drafts]),
                  np.concatenate([d.model for d in drafts]), np.concatenate(images) if has_video else None,
                  user_text, words, {"task": task, "segments": segments, HEARD: heard,
                                     **({FRAME_TEXT: frame_text, FRAME_MOTION: frame_motion} if has_video else {})})


def _plan_mixed(rng: np.random.Generator, user_v: Voice, model_v: Voice, n: int | None) -> _Draft:
    """2-3 random single tasks back to back (chunk-aligned), as one longer episode with one room and echo."""
    names = list(SINGLE_PLANS)
    if n is None:
        k = int(rng.integers(2, 4))
        lengths: list[int | None] = [None] * k
    else:
        k = max(1, min(3, n // MIN_CHUNKS["mixed"]))
        lengths = [n // k] * (k - 1) + [n - (n // k) * (k - 1)]
    tasks = [names[int(rng.integers(len(names)))] for _ in range(k)]
    drafts = [SINGLE_PLANS[t](np.random.default_rng(int(rng.integers(2**62))), user_v, model_v, m)
              for t, m in zip(tasks, lengths, strict=True)]
    return _concat(drafts, rng, "mixed")


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
    noise_dbfs: float | None = float(rng.uniform(-70.0, -50.0))
    noise = rng.normal(0.0, 10 ** (noise_dbfs / 20), draft.user.size).astype(np.float32)
    if rng.random() < DIGITAL_SILENCE_P:  # drawn last: every other draw (and episode) is unchanged by it
        noise_dbfs, noise = None, np.float32(0.0)
    user = draft.user + noise
    if echo:
        user = mix_echo(user, draft.model, gain_db, delay_s)
    labels = {HEARD: [], **draft.labels, "voice": voice, "echo": bool(echo), "echo_gain_db": gain_db,
              "echo_delay_s": delay_s, "noise_dbfs": noise_dbfs}
    ep = Episode(user.astype(np.float32), draft.model.astype(np.float32), draft.frames, draft.user_text,
                 draft.model_words, labels)
    return validate(ep, f"synthetic {labels['task']}")


def _generator(name: str, plan: Callable[..., _Draft]) -> Callable[..., Episode]:
    def generate_task(seed: int, duration_chunks: int | None = None, voice: str = "dtmf",
                      echo: bool = True, **options: Any) -> Episode:
        if duration_chunks is not None and duration_chunks < MIN_CHUNKS[name]:
            raise ValueError(f"{name}: duration_chunks={duration_chunks} is below the minimum "
                             f"{MIN_CHUNKS[name]} for this task")
        rng = np.random.default_rng(seed)
        return _finish(plan(rng, *get_voices(voice), duration_chunks, **options), rng, voice, echo)

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


def stream(seed: int, tasks: Sequence[str], min_chunks: int, voice: str = "dtmf", echo: bool = True,
           weights: Sequence[float] | None = None) -> Episode:
    """Random single tasks (drawn with ``weights``) back to back until the episode holds ``min_chunks``.

    Training windows are cut from these, so a window never holds zero-weight padding and every chunk
    carries a task. One room and one echo path per stream; labels list the segments like ``mixed``.
    """
    unknown = [t for t in tasks if t not in SINGLE_PLANS]
    if unknown or not tasks:
        raise ValueError(f"stream: tasks must be single tasks from {', '.join(SINGLE_PLANS)}, got {list(tasks)}")
    p = None
    if weights is not None:
        if len(weights) != len(tasks) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"stream: need one non-negative weight per task, got {list(weights)} for {list(tasks)}")
        p = np.asarray(weights, np.float64) / float(sum(weights))
    rng = np.random.default_rng(seed)
    user_v, model_v = get_voices(voice)
    drafts, total = [], 0
    while total < min_chunks:
        task = tasks[int(rng.choice(len(tasks), p=p))]
        drafts.append(SINGLE_PLANS[task](np.random.default_rng(int(rng.integers(2**62))), user_v, model_v, None))
        total += drafts[-1].n_chunks
    return _finish(_concat(drafts, rng, "stream"), rng, voice, echo)


def text_floor(task: str) -> float:
    """Bayes floor of the text-out loss (nats per weighted token) for ``task``: the entropy of what its
    targets depend on that the inputs do not reveal in time.

    Every target here is a function of what was audible or visible before its chunk (module docstring;
    ``tests/data/test_causal_targets.py`` checks it over many seeds per task), so the floor is 0. It is a
    function, not a constant, so that a task added with deliberate randomness declares its floor here and
    the trainer's ``text_loss_above_floor`` stays meaningful.
    """
    if task not in TASKS and task != "stream":
        raise ValueError(f"unknown task {task!r}; available: {', '.join(TASKS)}")
    return 0.0

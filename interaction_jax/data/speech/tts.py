"""Spoken voices for the synthetic tasks: word takes from two offline TTS engines, read back by ASR.

Every task symbol is one word (``WORDS``: digits by name, the barge-in keys as "stop", "wait", ...,
and "say", "in", "seconds" for the spoken timespeak instruction). A
voice synthesises a small bank of *takes* of each word (rates and seeds vary), trims them to their audible
extent and caches them per process, so an episode is only a mix of cached takes: generation costs
milliseconds, and word onsets are exact because words are placed one by one (no aligner needed).

* ``hibari`` (PyPI ``hibari-tts``, extra ``[speech]``): its bundled default voice ``heart`` only; every
  other voice would be downloaded on first use, which this project never does. 24 kHz, resampled with soxr.
* ``espeak-ng`` (Debian package ``espeak-ng``): a clearly different, formant-synthesised voice; its rate
  and pitch are varied per take. 22.05 kHz, resampled with soxr.

``durations`` draws a take per symbol and returns its exact length; ``render`` finds the same take again
by (symbol, length), which is unique per word, so the planner's durations are exactly what is rendered.
``decode`` is pocketsphinx with a grammar of the vocabulary's words (``asr.py``).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import threading
from collections.abc import Callable, Sequence

import numpy as np

from interaction_jax.data.synthetic.voices import SAMPLE_RATE, Event

WORDS = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six",
         "7": "seven", "8": "eight", "9": "nine", "*": "stop", "#": "wait", "A": "hey", "B": "listen",
         "C": "sorry", "D": "hello", "S": "say", "I": "in", "s": "seconds"}
SYMBOLS = "".join(WORDS)
_SYMBOL_OF = {w: s for s, w in WORDS.items()}
TRIM_DB = 35.0  # a take starts and ends where its 5 ms RMS is within this of the take's loudest frame
RAMP_S = 0.005


def _resample(y: np.ndarray, sr: int) -> np.ndarray:
    if sr == SAMPLE_RATE:
        return y.astype(np.float32)
    from interaction_jax.data.extras import require

    soxr = require("soxr", "speech", "the speech voice")
    return soxr.resample(y.astype(np.float32), sr, SAMPLE_RATE, "HQ").astype(np.float32)


def trim(y: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """The audible extent of one word (5 ms frames within TRIM_DB of the loudest), peak-normalised to 1."""
    hop = sr // 200
    n = y.size // hop
    if n == 0 or not np.any(y):
        raise ValueError("the TTS engine returned silence")
    rms = np.sqrt(np.mean(y[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1))
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (-TRIM_DB / 20))
    out = y[loud[0] * hop : (loud[-1] + 1) * hop].astype(np.float64)
    ramp = min(round(RAMP_S * sr), out.size // 2)
    if ramp:
        rise = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
        out[:ramp] *= rise
        out[-ramp:] *= rise[::-1]
    return (out / np.abs(out).max()).astype(np.float32)


# ------------------------------------------------------------------------------------------ engines
# An engine turns (word, take parameters, speed-up factor) into a 16 kHz wave.

Engine = Callable[[str, dict, float], np.ndarray]


class HibariEngine:
    """hibari-tts with its bundled voice; ``speed`` from the take, times the speed-up factor."""

    def __init__(self) -> None:
        self._tts = None
        self._lock = threading.Lock()

    def __call__(self, word: str, take: dict, faster: float) -> np.ndarray:
        with self._lock:
            if self._tts is None:
                from interaction_jax.data.extras import require

                hibari = require("hibari", "speech", "the speech voice")
                self._tts = hibari.Hibari(threads=1)  # voice "heart", bundled: no download
            y = self._tts(word, speed=take["speed"] * faster, seed=take["seed"])
        return _resample(np.asarray(y, np.float32), 24_000)


class EspeakEngine:
    """Debian's espeak-ng (``-v en-us``) as a subprocess; words per minute and pitch from the take."""

    def __call__(self, word: str, take: dict, faster: float) -> np.ndarray:
        import soundfile as sf

        exe = shutil.which("espeak-ng")
        if exe is None:
            from interaction_jax.data.extras import MissingExtra

            raise MissingExtra("the speech voice needs Debian's espeak-ng for the user: apt-get install espeak-ng")
        cmd = [exe, "-v", "en-us", "-s", str(round(take["wpm"] * faster)), "-p", str(take["pitch"]), "--stdout",
               word]
        proc = subprocess.run(cmd, capture_output=True, check=False, timeout=30)
        if proc.returncode != 0 or not proc.stdout:
            raise RuntimeError(f"espeak-ng failed on {word!r}: {proc.stderr.decode(errors='replace')[-300:]}")
        y, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
        return _resample(y.reshape(-1), sr)


# ------------------------------------------------------------------------------------------ voices


class WordVoice:
    """A voice that says each symbol as one word from a bank of cached takes (see the module docstring).

    ``level_db``: per-utterance peak level range (dBFS); each word jitters 1.5 dB around it. ``max_dur``:
    the longest a word may last (a take that is longer is re-synthesised faster, 15% at a time), so that
    words at the model's pace (``chunks_per_symbol`` = 3: onsets 0.57-0.63 s apart) never overlap.
    """

    def __init__(self, name: str, engine: Engine, takes: Sequence[dict], level_db: tuple[float, float],
                 max_dur: float | None = None, chunks_per_symbol: int = 1, symbols: str = SYMBOLS,
                 speaks_instructions: bool = False):
        unknown = [s for s in symbols if s not in WORDS]
        if unknown or not takes:
            raise ValueError(f"{name}: symbols must come from {SYMBOLS!r} (got {unknown}) and takes be non-empty")
        self.name, self.symbols, self.engine, self.takes = name, symbols, engine, list(takes)
        self.level_db, self.max_dur, self.chunks_per_symbol = level_db, max_dur, chunks_per_symbol
        self.speaks_instructions = speaks_instructions  # timespeak's "say seven in three seconds" is spoken
        self._bank: dict[tuple[str, int], np.ndarray] = {}
        self._lock = threading.Lock()

    def take(self, symbol: str, k: int) -> np.ndarray:
        """Take ``k`` of ``symbol``'s word: trimmed, peak 1, at most ``max_dur`` long.

        All takes of a word are made together, in order, and a take as long as an earlier one gets one more
        sample of trailing silence: lengths are unique per word, so ``render`` finds the very take that
        ``durations`` drew (trimming on 5 ms frames makes ties common).
        """
        if symbol not in self.symbols:
            raise ValueError(f"{self.name} voice cannot say {symbol!r}; symbols: {self.symbols}")
        with self._lock:
            if (symbol, 0) not in self._bank:
                lengths: set[int] = set()
                for i, params in enumerate(self.takes):
                    y = self._synthesise(symbol, params)
                    while y.size in lengths:
                        y = np.append(y, np.float32(0.0))
                    lengths.add(y.size)
                    self._bank[(symbol, i)] = y
            return self._bank[(symbol, k)]

    def _synthesise(self, symbol: str, params: dict) -> np.ndarray:
        faster = 1.0
        for _ in range(8):
            y = trim(self.engine(WORDS[symbol], params, faster))
            if self.max_dur is None or y.size < self.max_dur * SAMPLE_RATE - len(self.takes):
                return y
            faster *= 1.15
        raise ValueError(f"{self.name}: {WORDS[symbol]!r} stays longer than {self.max_dur} s")

    def durations(self, symbols: Sequence[str], rng: np.random.Generator) -> list[float]:
        ks = rng.integers(0, len(self.takes), len(symbols))
        return [self.take(s, int(k)).size / SAMPLE_RATE for s, k in zip(symbols, ks, strict=True)]

    def _find(self, symbol: str, dur: float) -> np.ndarray:
        n = round(dur * SAMPLE_RATE)
        takes = [self.take(symbol, k) for k in range(len(self.takes))]
        return min(takes, key=lambda y: abs(y.size - n))  # exact (lengths are unique) for drawn durations

    def render(self, events: Sequence[Event], total_samples: int, rng: np.random.Generator) -> np.ndarray:
        out = np.zeros(total_samples, np.float64)
        base = rng.uniform(*self.level_db)
        for onset, sym, dur in events:
            y = self._find(sym, dur)[: max(round(dur * SAMPLE_RATE), 0)]
            start = round(onset * SAMPLE_RATE)
            if y.size == 0 or start >= total_samples:
                continue
            level = np.clip(base + rng.normal(0.0, 1.5), *self.level_db)
            end = min(start + y.size, total_samples)
            out[start:end] += 10 ** (level / 20) * y[: end - start]
        return out.astype(np.float32)

    def decode(self, wave: np.ndarray, sr: int = SAMPLE_RATE, vocabulary: str | None = None
               ) -> list[tuple[float, str]]:
        from interaction_jax.data.speech.asr import recognize

        vocab = vocabulary or self.symbols
        return [(t, _SYMBOL_OF[w]) for t, w in recognize(wave, [WORDS[s] for s in vocab], sr) if w in _SYMBOL_OF]


# The model speaks steadily (one level band, a narrow rate range, <= 0.42 s per word, one word per 3 chunks);
# the user varies widely (level, rate, pitch), as a microphone would hear people. Only the model's voice is
# ever scored, and pocketsphinx reads hibari, not espeak-ng: with the digit grammar it got 10/10 words and
# 20/20 five-digit strings of hibari at speed 1.2, but 4/10 and 6/20 of espeak-ng at 180 wpm (measured
# here), so the model speaks with hibari. Faster hibari (speed 1.35-1.5) fell to 8/10 and 19/20.
MODEL_TAKES = [{"speed": s, "seed": k} for k, s in enumerate((1.1, 1.15, 1.2, 1.25))]
USER_TAKES = [{"wpm": w, "pitch": p} for w in (150, 190, 230, 270) for p in (30, 55, 80)]
MODEL_MAX_S = 0.42
MODEL_LEVEL_DB = (-10.0, -6.0)
USER_LEVEL_DB = (-26.0, -3.0)


def make_family() -> tuple[WordVoice, WordVoice]:
    """(user, model) voices: the user speaks with espeak-ng, the model with hibari-tts."""
    user = WordVoice("espeak-user", EspeakEngine(), USER_TAKES, USER_LEVEL_DB, speaks_instructions=True)
    model = WordVoice("hibari-model", HibariEngine(), MODEL_TAKES, MODEL_LEVEL_DB, max_dur=MODEL_MAX_S,
                      chunks_per_symbol=3)
    return user, model

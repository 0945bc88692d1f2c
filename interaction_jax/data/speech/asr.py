"""Offline ASR for scoring spoken answers: pocketsphinx restricted by a JSGF grammar to the task's words.

Extra ``[asr]``. The en-us acoustic model and dictionary ship inside the pocketsphinx wheel, so nothing is
downloaded. A grammar per task (``(w1 | w2 | ...)*``) is what makes the scores trustworthy: with its open
language model pocketsphinx got only 83-94% of digit strings right on clean synthetic speech, with the
digit grammar 30/30 (measured on this machine type; see issue 17).

``recognize(wave, words)`` returns ``[(onset_s, word)]`` with onsets on pocketsphinx's 10 ms frame grid,
so the timing metrics work for speech as they do for DTMF.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

SAMPLE_RATE = 16_000
FRAME_S = 0.01  # pocketsphinx's default frame rate: 100 frames per second
# Tuned on isolated takes and 5-word strings of the model voice (the tests and the eval use other seeds):
# word insertion penalty 0.2 (default 0.65), silence probability 0.5 (default 0.005), phone insertion penalty
# 0.3 (default 1). Single words 39/40, strings 29/30; pocketsphinx's defaults: short "eight" insertions
# between words and lost single words (an open vocabulary is worse still). Its dither option ruined it.
DECODER_OPTIONS = {"wip": 0.2, "silprob": 0.5, "pip": 0.3}
_NON_WORDS = ("<s>", "</s>", "<sil>", "[NOISE]", "<unk>")


def _pocketsphinx():
    from interaction_jax.data.extras import require

    return require("pocketsphinx", "asr", "ASR scoring")


def grammar(words: Sequence[str]) -> str:
    """A JSGF grammar accepting any sequence (including none) of ``words``."""
    clean = sorted({w.strip().lower() for w in words})
    if not clean or any(not w.replace("'", "").isalpha() for w in clean):
        raise ValueError(f"grammar words must be non-empty alphabetic words, got {list(words)}")
    return "#JSGF V1.0;\ngrammar task;\npublic <answer> = ( " + " | ".join(clean) + " )* ;\n"


class Recognizer:
    """One pocketsphinx decoder per vocabulary, built on first use (0.2 s) and reused; thread-safe."""

    def __init__(self) -> None:
        self._decoders: dict[tuple[str, ...], object] = {}
        self._lock = threading.Lock()

    def _decoder(self, words: tuple[str, ...]):
        ps = _pocketsphinx()
        if words not in self._decoders:
            dec = ps.Decoder(samprate=SAMPLE_RATE, loglevel="FATAL", **DECODER_OPTIONS)
            missing = [w for w in words if dec.lookup_word(w) is None]
            if missing:
                raise ValueError(f"words not in pocketsphinx's dictionary: {missing}")
            dec.add_jsgf_string("task", grammar(words))
            dec.activate_search("task")
            self._decoders[words] = dec
        return self._decoders[words]

    def __call__(self, wave: np.ndarray, words: Sequence[str], sr: int = SAMPLE_RATE) -> list[tuple[float, str]]:
        """``[(onset_s, word)]`` heard in ``wave`` (float in [-1, 1], 16 kHz), in time order."""
        if sr != SAMPLE_RATE:
            raise ValueError(f"the recogniser expects {SAMPLE_RATE} Hz audio, got {sr} Hz")
        x = np.asarray(wave, np.float32).reshape(-1)
        if x.size == 0 or not np.any(x):
            return []  # digital silence: nothing said (and pocketsphinx's CMN would divide by zero energy)
        pcm = (np.clip(np.nan_to_num(x), -1.0, 1.0) * 32767.0).astype(np.int16)
        key = tuple(sorted({w.lower() for w in words}))
        with self._lock:
            dec = self._decoder(key)
            dec.start_utt()
            dec.process_raw(pcm.tobytes(), full_utt=True)
            dec.end_utt()
            # No hypothesis at all (noise, a tone: nothing the grammar can end on) comes back as None.
            segments = [(s.start_frame * FRAME_S, s.word) for s in (dec.seg() or [])]
        out = []
        for t, word in segments:
            word = word.split("(")[0]  # alternate pronunciations come back as "zero(2)"
            if word not in _NON_WORDS and not word.startswith(("[", "<", "+")):
                out.append((round(float(t), 3), word))
        return out


_DEFAULT = Recognizer()


def recognize(wave: np.ndarray, words: Sequence[str], sr: int = SAMPLE_RATE) -> list[tuple[float, str]]:
    """``[(onset_s, word)]`` of ``words`` heard in ``wave``, with the process-wide recogniser."""
    return _DEFAULT(wave, words, sr)

"""Byte-level tokenizer with a handful of special ids.

Why bytes: the model's text streams are tiny (2–8 slots per 200 ms chunk) and must cover any language the user
types, with no vocabulary file to ship, version or download. Ids 0–255 are the UTF-8 bytes themselves; the
specials follow, and the total (264) is ``TextConfig.vocab_size``.

The specials:

- ``PAD``   fills a text slot that has nothing to say (TEXT_IN queue empty, TEXT_OUT between words).
- ``EPAD``  is written in the TEXT_OUT slot just before a word starts (Moshi's inner-monologue alignment), so
  the model announces a word one slot early.
- ``BOS`` / ``EOS`` bracket free-standing text (prompts, delegate results) when a caller wants them.
- ``DELEGATE_START`` / ``DELEGATE_END`` bracket a hand-off to the background model. They are rendered as the
  literal markers ``<delegate>`` / ``</delegate>`` and ``encode`` maps those literals back, so
  ``decode(encode(s)) == s`` for every string ``s``.
- two reserved ids, kept so a later special does not change the vocabulary size (and thus every checkpoint).

Everything here is plain Python over ``int`` lists; it runs in the data pipeline and the serving loop, never
inside ``jit``.
"""

from __future__ import annotations

from collections.abc import Iterable

NUM_BYTES = 256

PAD = 256
EPAD = 257
BOS = 258
EOS = 259
DELEGATE_START = 260
DELEGATE_END = 261
RESERVED_0 = 262
RESERVED_1 = 263

VOCAB_SIZE = 264

SPECIAL_NAMES: dict[int, str] = {
    PAD: "PAD",
    EPAD: "EPAD",
    BOS: "BOS",
    EOS: "EOS",
    DELEGATE_START: "DELEGATE_START",
    DELEGATE_END: "DELEGATE_END",
    RESERVED_0: "RESERVED_0",
    RESERVED_1: "RESERVED_1",
}

DELEGATE_START_TEXT = "<delegate>"
DELEGATE_END_TEXT = "</delegate>"

# Specials that carry no text: dropped by ``decode``. The reserved ids are dropped too, because no string
# encodes to them and a model that emits one has nothing to show.
_SILENT = frozenset({PAD, EPAD, BOS, EOS, RESERVED_0, RESERVED_1})
_MARKERS = {DELEGATE_START: DELEGATE_START_TEXT, DELEGATE_END: DELEGATE_END_TEXT}


def is_special(token_id: int) -> bool:
    """True for ids past the byte range (PAD, EPAD, BOS, EOS, delegate markers, reserved)."""
    _check_id(token_id)
    return token_id >= NUM_BYTES


def encode(text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
    """UTF-8 bytes of ``text``; the literal delegate markers become their special ids.

    Mapping the literals (rather than leaving them as bytes) is what makes the round trip exact: ``decode``
    renders the special ids as these same literals, so there is one token sequence per string.
    """
    if not isinstance(text, str):
        raise TypeError(f"encode expects str, got {type(text).__name__}")
    ids: list[int] = [BOS] if add_bos else []
    pos = 0
    while pos < len(text):
        start = text.find(DELEGATE_START_TEXT, pos)
        end = text.find(DELEGATE_END_TEXT, pos)
        hits = [(i, marker) for i, marker in ((start, DELEGATE_START), (end, DELEGATE_END)) if i >= 0]
        if not hits:
            ids.extend(text[pos:].encode("utf-8"))
            break
        at, marker = min(hits)
        ids.extend(text[pos:at].encode("utf-8"))
        ids.append(marker)
        pos = at + len(_MARKERS[marker])
    if add_eos:
        ids.append(EOS)
    return ids


def decode(ids: Iterable[int]) -> str:
    """Text of ``ids``: silent specials skipped, delegate ids rendered as markers, bad UTF-8 replaced.

    Bytes are buffered across silent specials, so a multi-byte character interrupted by a PAD (as a word can
    be when text-out spills into the next chunk) still decodes to the character, not to two replacements.
    Accepts any iterable of integers (lists, numpy or jax arrays); an id outside [0, VOCAB_SIZE) raises.
    """
    pieces: list[str] = []
    buffer = bytearray()
    for raw in ids:
        token = int(raw)
        _check_id(token)
        if token < NUM_BYTES:
            buffer.append(token)
        elif token in _MARKERS:
            pieces.append(buffer.decode("utf-8", errors="replace"))
            buffer.clear()
            pieces.append(_MARKERS[token])
        # Other specials (_SILENT) carry no text.
    pieces.append(buffer.decode("utf-8", errors="replace"))
    return "".join(pieces)


def _check_id(token_id: int) -> None:
    if not 0 <= token_id < VOCAB_SIZE:
        raise ValueError(f"token id {token_id} is outside the vocabulary [0, {VOCAB_SIZE})")

"""Byte-level tokenizer: exact round trip, special handling, range checks."""

import numpy as np
import pytest

from interaction_jax.config import TextConfig
from interaction_jax.text import tokenizer as tok

ROUND_TRIP = [
    "",
    "hello, world 123",
    "café naïve Ærøskøbing",
    "日本語のテキストと中文",
    "emoji 🎉👍🏽 and flags 🇫🇷",
    "<delegate>look up the weather</delegate>",
    "before <delegate>x</delegate> after </delegate><delegate>",
    "<delegat almost a marker </delegate",
    "<<delegate>>",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip(text: str) -> None:
    ids = tok.encode(text)
    assert all(0 <= i < tok.VOCAB_SIZE for i in ids)
    assert tok.decode(ids) == text


def test_vocab_matches_config() -> None:
    assert tok.VOCAB_SIZE == TextConfig().vocab_size == 264
    assert set(tok.SPECIAL_NAMES) == set(range(256, 264))
    assert tuple(range(256, 262)) == (tok.PAD, tok.EPAD, tok.BOS, tok.EOS, tok.DELEGATE_START, tok.DELEGATE_END)


def test_bytes_and_markers() -> None:
    assert tok.encode("A é") == [65, 32, 0xC3, 0xA9]
    assert tok.encode("a<delegate>b</delegate>") == [97, tok.DELEGATE_START, 98, tok.DELEGATE_END]
    assert tok.encode("hi", add_bos=True, add_eos=True) == [tok.BOS, 104, 105, tok.EOS]


def test_decode_skips_silent_specials() -> None:
    ids = [tok.PAD, tok.EPAD, *tok.encode("hé"), tok.PAD, tok.BOS, tok.EOS, tok.RESERVED_0, tok.RESERVED_1]
    assert tok.decode(ids) == "hé"
    # A multi-byte character split by PAD (text spilling into the next chunk) still decodes whole.
    e_acute = list("é".encode())
    assert tok.decode([e_acute[0], tok.PAD, tok.EPAD, e_acute[1]]) == "é"
    assert tok.decode(np.array([104, tok.PAD, 105], dtype=np.int32)) == "hi"


def test_invalid_utf8_is_replaced() -> None:
    assert tok.decode([0xFF, 65]) == "\ufffdA"
    # A delegate marker flushes the byte buffer: a dangling lead byte becomes one replacement char.
    assert tok.decode([0xC3, tok.DELEGATE_START]) == "\ufffd<delegate>"


def test_is_special() -> None:
    assert not tok.is_special(0) and not tok.is_special(255)
    assert all(tok.is_special(i) for i in range(256, 264))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.is_special(264)


@pytest.mark.parametrize("bad", [-1, 264, 10_000])
def test_out_of_range_raises(bad: int) -> None:
    with pytest.raises(ValueError, match=str(bad)):
        tok.decode([65, bad])


def test_encode_rejects_non_str() -> None:
    with pytest.raises(TypeError):
        tok.encode(b"bytes")  # type: ignore[arg-type]

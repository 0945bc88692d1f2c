"""The micro-turn slot layout: pure, static index arithmetic shared by the model, the data and the server.

Every 200 ms chunk is flattened into the same ``S`` slots::

    [TICK] [VIDEO x V] [AUDIO_IN x A] [TEXT_IN x Ti] [TEXT_OUT x To] [AUDIO_OUT x A]

so the flat position ``chunk * S + slot`` is linear in wall-clock time. Everything here is computed with numpy
from static config values, so the traced code only ever sees constant index arrays: no Python loop over
chunks ever reaches the compiled program.
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np

from interaction_jax.config import AudioConfig, TextConfig, VisionConfig


class SlotType(enum.IntEnum):
    TICK = 0
    VIDEO = 1
    AUDIO_IN = 2
    TEXT_IN = 3
    TEXT_OUT = 4
    AUDIO_OUT = 5


NUM_SLOT_TYPES = len(SlotType)
# Slots whose inputs come from the world (user side); the rest are the model's own outputs fed back.
INPUT_SLOT_TYPES = (SlotType.TICK, SlotType.VIDEO, SlotType.AUDIO_IN, SlotType.TEXT_IN)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Static slot layout of one chunk, derived from the signal configs."""

    num_video: int  # V: patches per frame (0 disables video)
    num_audio: int  # A: audio tokens per chunk, in and out (16 frames / k)
    frames_per_token: int  # k
    num_mels: int
    num_text_in: int  # Ti
    num_text_out: int  # To

    @classmethod
    def from_config(cls, audio: AudioConfig, vision: VisionConfig, text: TextConfig) -> Layout:
        if audio.frames_per_chunk % audio.frames_per_token:
            raise ValueError(
                f"audio.frames_per_token={audio.frames_per_token} must divide the "
                f"{audio.frames_per_chunk} mel frames of a chunk"
            )
        num_video = vision.num_patches if vision.height and vision.width else 0
        return cls(
            num_video=num_video,
            num_audio=audio.tokens_per_chunk,
            frames_per_token=audio.frames_per_token,
            num_mels=audio.n_mels,
            num_text_in=text.text_in_slots,
            num_text_out=text.text_out_slots,
        )

    # --- one chunk ------------------------------------------------------------------------------------
    @property
    def counts(self) -> dict[SlotType, int]:
        return {
            SlotType.TICK: 1,
            SlotType.VIDEO: self.num_video,
            SlotType.AUDIO_IN: self.num_audio,
            SlotType.TEXT_IN: self.num_text_in,
            SlotType.TEXT_OUT: self.num_text_out,
            SlotType.AUDIO_OUT: self.num_audio,
        }

    @property
    def slots_per_chunk(self) -> int:
        """S: tokens per 200 ms chunk."""
        return sum(self.counts.values())

    def offset(self, slot_type: SlotType) -> int:
        """First slot index of ``slot_type`` inside a chunk."""
        start = 0
        for kind, count in self.counts.items():
            if kind == slot_type:
                return start
            start += count
        raise KeyError(slot_type)

    def slot_range(self, slot_type: SlotType) -> slice:
        start = self.offset(slot_type)
        return slice(start, start + self.counts[slot_type])

    @property
    def num_input_slots(self) -> int:
        """Slots filled from the world before the model speaks (TICK..TEXT_IN): the streaming prefill."""
        return self.offset(SlotType.TEXT_OUT)

    @property
    def slot_types(self) -> np.ndarray:
        """int32[S]: the slot type of each slot of a chunk (indexes the learned slot-type embedding)."""
        return np.concatenate([np.full(n, int(kind), np.int32) for kind, n in self.counts.items()])

    @property
    def mel_block(self) -> int:
        """Values per AUDIO_OUT token: k frames x 80 mel channels."""
        return self.frames_per_token * self.num_mels

    # --- a window of chunks ---------------------------------------------------------------------------
    def seq_len(self, num_chunks: int) -> int:
        return num_chunks * self.slots_per_chunk

    def padded_len(self, num_chunks: int, multiple: int = 128) -> int:
        """Sequence length rounded up so cuDNN / splash kernels get tile-aligned shapes."""
        n = self.seq_len(num_chunks)
        return -(-n // multiple) * multiple if multiple > 1 else n

    def positions(self, num_chunks: int, start_chunk: int = 0) -> np.ndarray:
        """int32[num_chunks * S]: absolute flat positions ``chunk * S + slot`` (the RoPE index)."""
        s = self.slots_per_chunk
        return np.arange(start_chunk * s, (start_chunk + num_chunks) * s, dtype=np.int32)

    def flat_slot_types(self, num_chunks: int) -> np.ndarray:
        return np.tile(self.slot_types, num_chunks)

    def flat_indices(self, slot_type: SlotType, num_chunks: int) -> np.ndarray:
        """int32[num_chunks, count]: where the tokens of ``slot_type`` sit in the flat sequence.

        Used to gather head inputs back out of the flat hidden states (and by tests and the data viewer).
        """
        rng = self.slot_range(slot_type)
        chunk_base = np.arange(num_chunks, dtype=np.int32)[:, None] * self.slots_per_chunk
        return chunk_base + np.arange(rng.start, rng.stop, dtype=np.int32)[None, :]

    def describe(self) -> str:
        parts = [f"{kind.name}x{n}" for kind, n in self.counts.items() if n]
        return f"S={self.slots_per_chunk}: " + " ".join(parts)

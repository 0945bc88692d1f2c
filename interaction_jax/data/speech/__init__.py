"""Speech for the synthetic tasks (extras ``[speech,asr]``): TTS voices and a grammar-restricted ASR scorer.

The ``speech`` voice family is registered on first use by name (``voice="speech"`` in a task,
``data.voice`` in a config, ``data synth --voice speech``): the user speaks with espeak-ng, the model with
hibari-tts, and the model's voice is scored with pocketsphinx, restricted per task to the words the answer
may hold. (The reverse pairing is not offered: pocketsphinx cannot read espeak-ng reliably; see ``tts``.)
"""

from __future__ import annotations

from interaction_jax.data.speech.tts import WORDS, WordVoice, make_family

__all__ = ["WORDS", "WordVoice", "make_family", "register"]


def register() -> None:
    """Add the ``speech`` family to the synthetic voice registry."""
    from interaction_jax.data.synthetic.voices import register_voice

    register_voice("speech", *make_family())

"""Embedded synthetic interaction tasks: generators with exact labels, pluggable voices, exact scorers.

``generate(task, seed, duration_chunks=None, voice="dtmf", echo=True) -> Episode``; ``score(labels, wave,
text_events)`` and ``aggregate(list_of_metrics)`` measure generated audio: exact DTMF decoding by default,
pocketsphinx with a per-task grammar for the ``speech`` voice (``interaction_jax.data.speech``).
"""

from interaction_jax.data.synthetic.scoring import aggregate, score
from interaction_jax.data.synthetic.tasks import TASKS, generate, mix_echo, stream, text_floor, user_dry_audio
from interaction_jax.data.synthetic.voices import decode_dtmf, get_voice, register_voice


class TaskError(ValueError):
    """A bad task name or evaluation request from the command line."""


__all__ = ["TASKS", "TaskError", "aggregate", "decode_dtmf", "generate", "get_voice", "mix_echo", "register_voice",
           "score", "stream", "text_floor", "user_dry_audio"]

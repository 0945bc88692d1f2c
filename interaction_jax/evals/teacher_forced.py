"""Teacher-forced metrics per task: what the model gets right when it is fed the true history.

    python -m interaction_jax eval --checkpoint runs/tiny --teacher-forced [--json tf.json]

When a free-running score is 0, this says which part is missing: the timing (EPAD), the content (word
tokens) or the voice (flow loss on voiced vs silent blocks). Held-out episodes of one task are padded to a
common length and run through the training loss, so the numbers are the training objective per task.

Metrics per task (``{task: {metric: value}}``):

* ``text_loss``, ``text_ce_pad/epad/word``: weighted text CE and its parts by target kind (nats);
* ``text_floor``, ``text_loss_above_floor``: the task's Bayes floor (``tasks.text_floor``) and the excess;
* ``word_acc``, ``epad_acc``: greedy accuracy on word / EPAD targets;
* ``epad_timing_err_chunks``: for each target EPAD, chunks to the nearest predicted EPAD (capped at
  ``EPAD_ERR_CAP`` when none is predicted), averaged; ``false_epad_rate``: predicted EPADs on PAD targets;
* ``flow_loss``, ``flow_loss_voiced``, ``flow_loss_silent``: the audio-out head's loss overall and by block kind
  (CFM for ``flow``, L1/L2 for ``regress``, bin CE for ``dmel_bins``: comparable within one head only);
* ``mel_l1_voiced``, ``mel_l1_silent``: log10-mel L1 of a block *sampled* from each AUDIO_OUT slot, against
  its target, on voiced / silent blocks: the output error every head can be compared on;
* ``word_acc_pos{i}``: greedy accuracy of each episode's i-th word target (i < ``WORD_POSITIONS``): in
  ``repeat`` the first digit can be named from the last tones heard, the later ones must be fetched from
  further back (an induction-style copy), so the two are learned at very different speeds;
* ``stop_acc``: accuracy at the first text slot after each episode's last word (its target is PAD: the reply
  is over). A reply that does not stop in free running either has not learned how many words it heard
  (low ``stop_acc``) or drifts from its own history (high ``stop_acc``, exposure).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from interaction_jax.config import Config

EPAD_ERR_CAP = 5
WORD_POSITIONS = 6


@functools.lru_cache(maxsize=4)
def _programs(config: Config):
    import jax
    import jax.numpy as jnp

    from interaction_jax.audio.dmel import FULL_SCALE_MEL, SILENCE_MEL
    from interaction_jax.layout import Layout
    from interaction_jax.model import InteractionModel, Sampling

    model = InteractionModel.from_config(config)
    loss = jax.jit(lambda p, b: model.apply({"params": p}, b, jax.random.key(0), method=InteractionModel.loss)[1])
    sampling = Sampling.from_config(config)
    block = Layout.from_config(config.audio, config.vision, config.text).mel_block

    def forward(p, b):
        """Greedy text logits, and one sampled mel block per AUDIO_OUT slot given the true history (clipped
        like the engine's), so every ``model.audio_out`` head is compared on the blocks it would emit."""
        out = model.apply({"params": p}, b)
        cond = out["flow_cond"]
        noise = sampling.audio_temperature * jax.random.normal(jax.random.key(0), (*cond.shape[:-1], block))
        mel = model.apply({"params": p}, cond, noise, method=lambda m, c, z: m.audio_head.sample_with_noise(
            c, z, sampling.flow_steps, sampling.cfg_scale, sampling.flow_solver))
        return out["text_logits"], jnp.clip(mel, SILENCE_MEL, FULL_SCALE_MEL)

    return loss, jax.jit(forward)


def mel_l1(sampled: np.ndarray, target: np.ndarray, valid: np.ndarray, config: Config) -> tuple[float, float]:
    """Mean |sampled - target| in log10-mel over (voiced, silent) valid blocks; blocks are [..., k*M]."""
    from interaction_jax.audio import dmel
    from interaction_jax.model import SILENT_BLOCK_MAX

    m = config.audio.n_mels
    err = np.abs(dmel.denormalize_mel(sampled.reshape(*sampled.shape[:-1], -1, m), config.audio)
                 - dmel.denormalize_mel(target.reshape(*target.shape[:-1], -1, m), config.audio)).mean(axis=(-1, -2))
    voiced = target.max(axis=-1) > SILENT_BLOCK_MAX

    def mean(mask: np.ndarray) -> float:
        return float(err[mask].mean()) if mask.any() else float("nan")

    return mean(voiced & valid), mean(~voiced & valid)


def stop_hit(pred: np.ndarray, target: np.ndarray, valid: np.ndarray) -> list[bool]:
    """[whether ``pred`` matches the target at the first valid slot after the last word], or [] when the
    episode has no word or ends on it (flat text-out streams)."""
    words = np.flatnonzero((target < 256) & valid)
    after = int(words[-1]) + 1 if words.size else target.size
    return [bool(pred[after] == target[after])] if after < target.size and valid[after] else []


def epad_timing(pred: np.ndarray, target: np.ndarray, valid: np.ndarray) -> tuple[float, float, int]:
    """(sum of timing errors in chunks, false EPADs, number of target EPADs) for one episode.

    ``pred``/``target`` are token ids [N, To]; ``valid`` [N] marks chunks inside the episode.
    """
    from interaction_jax.text import tokenizer

    pred_chunks = np.flatnonzero(((pred == tokenizer.EPAD).any(-1)) & valid)
    tgt_chunks = np.flatnonzero(((target == tokenizer.EPAD).any(-1)) & valid)
    err = sum(min(EPAD_ERR_CAP, int(np.min(np.abs(pred_chunks - c)))) if pred_chunks.size else EPAD_ERR_CAP
              for c in tgt_chunks)
    false = int(np.sum((pred == tokenizer.EPAD) & (target == tokenizer.PAD) & valid[:, None]))
    return float(err), float(false), int(tgt_chunks.size)


def teacher_forced(config: Config, params: Any, tasks: tuple[str, ...], num_episodes: int, *,
                   seed: int | None = None) -> dict[str, dict[str, float]]:
    """Teacher-forced metrics (module docstring) of each task on ``num_episodes`` held-out episodes."""
    from interaction_jax.data import synthetic
    from interaction_jax.data.pipeline import crop_window, episode_arrays
    from interaction_jax.data.synthetic.tasks import text_floor
    from interaction_jax.evals.run import HELD_OUT_SEED
    from interaction_jax.text import tokenizer

    seed = HELD_OUT_SEED if seed is None else seed
    loss_fn, forward_fn = _programs(config)
    out: dict[str, dict[str, float]] = {}
    for task in tasks:
        episodes = [synthetic.generate(task, seed + i, voice=config.data.voice, echo=config.data.echo)
                    for i in range(num_episodes)]
        # One padded length for every task (the training window, or more for long episodes): one compile.
        w = max(config.data.window_chunks, max(ep.num_chunks for ep in episodes))
        rows = [crop_window(episode_arrays(ep, config), 0, w) for ep in episodes]
        batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        m = {k: float(v) for k, v in loss_fn(params, batch).items()}
        logits, sampled = forward_fn(params, batch)
        pred = np.argmax(np.asarray(logits), -1)
        blocks = batch["mel_out"].reshape(*sampled.shape)
        block_valid = np.repeat(batch["mel_out_weight"][..., None] > 0, sampled.shape[2], axis=-1)
        l1_voiced, l1_silent = mel_l1(np.asarray(sampled), blocks, block_valid, config)
        err = false = count = 0.0
        hits, seen = np.zeros(WORD_POSITIONS), np.zeros(WORD_POSITIONS)
        stops = []
        for i in range(num_episodes):
            e, f, c = epad_timing(pred[i], batch["text_out"][i], batch["text_out_weight"][i, :, 0] > 0)
            err, false, count = err + e, false + f, count + c
            target = batch["text_out"][i].reshape(-1)
            words = np.flatnonzero((target < 256) & (batch["text_out_weight"][i].reshape(-1) > 0))[:WORD_POSITIONS]
            hits[: words.size] += pred[i].reshape(-1)[words] == target[words]
            seen[: words.size] += 1
            stops += stop_hit(pred[i].reshape(-1), target, batch["text_out_weight"][i].reshape(-1) > 0)
        n_pad = float(np.sum((batch["text_out"] == tokenizer.PAD) & (batch["text_out_weight"] > 0)))
        floor = text_floor(task)
        out[task] = {
            "text_loss": m["text_loss"], "text_floor": floor, "text_loss_above_floor": m["text_loss"] - floor,
            "text_ce_pad": m["text_ce_pad"], "text_ce_epad": m["text_ce_epad"], "text_ce_word": m["text_ce_word"],
            "word_acc": m["text_out_acc_word"], "epad_acc": m["text_out_acc_epad"],
            "epad_timing_err_chunks": err / max(count, 1.0), "false_epad_rate": false / max(n_pad, 1.0),
            "flow_loss": m["flow_loss"], "flow_loss_voiced": m["flow_loss_voiced"],
            "flow_loss_silent": m["flow_loss_silent"], "mel_l1_voiced": l1_voiced, "mel_l1_silent": l1_silent,
            "episodes": float(num_episodes),
            **({"stop_acc": float(np.mean(stops))} if stops else {}),
            **{f"word_acc_pos{j}": float(hits[j] / seen[j]) for j in range(WORD_POSITIONS) if seen[j]},
        }
    return out


def markdown(results: dict[str, dict[str, float]]) -> str:
    keys = ("text_loss_above_floor", "word_acc", "epad_acc", "epad_timing_err_chunks", "false_epad_rate",
            "flow_loss_voiced", "flow_loss_silent", "mel_l1_voiced", "mel_l1_silent")
    lines = ["| task | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for task, m in results.items():
        lines.append(f"| {task} | " + " | ".join(f"{m[k]:.3f}" for k in keys) + " |")
    return "\n".join(lines)

"""Parameter and FLOP accounting: the single source for `params`, MFU in training/bench, and AOT checks.

Model FLOPs per *sequence token* for one training step (forward + backward) follow MaxText's convention::

    flops_per_token = 6 * N_eff + 6 * L * H * Dh * T

* ``N_eff`` sums, over every matmul-bearing component, its parameter count times the fraction of sequence
  tokens it is applied to: the transformer's *active* params on every token (routed experts scaled by
  top_k / E), the unembedding on To/S of them, the audio-out head on A/S of them (times the CFM noise
  multiplier for the flow head), the mel-input projection on A/S, the audio-in front-end on A/S (the dMel
  one-hot contraction, or the linear layer of ``mel_linear`` / ``wave_linear``), the video stem's per-patch
  work on V/S (hMLP: its 5x5, 2x2, 2x2, 2x2 stages run 64, 16, 4 and 1 times per patch; linear: one
  patch x patch x 3 -> D map), and the
  frame-text auxiliary (when on) one vocabulary projection per frame, on 1/S (it reuses the VIDEO slots'
  stem pass).
  Lookups (text embedding, tick, slot type, position tables) cost no matmul FLOPs and are excluded.
* The attention term is causal: query i attends to ~i keys, so the ``2 * 2 * H * Dh * T`` forward
  FLOPs of QK^T and AV over a full T x T score matrix are halved, then x3 for forward + backward.
  ``T`` is the padded training sequence length.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np

from interaction_jax.config import Config
from interaction_jax.frontends import audio_out as audio_out_lib
from interaction_jax.frontends import video_in as video_in_lib
from interaction_jax.layout import Layout


def abstract_params(config: Config) -> Any:
    """Param shapes without allocating anything (works for 276B configs on a laptop)."""
    from interaction_jax import model as model_lib

    return jax.eval_shape(lambda: model_lib.init(jax.random.key(0), config))


def _size(tree: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nn.unbox(tree))))


def _routed_expert_params(transformer_params: Any) -> int:
    """Params of routed experts: leaves whose logical axes include "expert"."""
    total = 0
    for leaf in jax.tree.leaves(transformer_params, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
        if isinstance(leaf, nn.Partitioned) and "expert" in (leaf.names or ()):
            total += int(np.prod(leaf.value.shape))
    return total


def report(config: Config, params: Any | None = None) -> dict[str, Any]:
    """Parameters per component, total and active, and model FLOPs per token (see module docstring)."""
    params = abstract_params(config) if params is None else params
    lay = Layout.from_config(config.audio, config.vision, config.text)
    tcfg = config.model.transformer
    s = lay.slots_per_chunk
    d = tcfg.d_model

    components = {name: _size(sub) for name, sub in params.items()}
    total = sum(components.values())
    transformer = components.get("transformer", 0)
    routed = _routed_expert_params(params.get("transformer", {}))
    moe = tcfg.moe
    routed_active = routed * moe.top_k // moe.num_experts if moe.num_experts else 0
    active = total - routed + routed_active

    m = config.model
    stem = video_in_lib.stem_flops_params(m.video_in, d, config.vision.patch) if lay.num_video else 0
    head = f"{m.audio_out}_head"
    audio_in = {  # matmul params per AUDIO_IN token: the dMel one-hot contraction, or the linear layer
        "dmel": lay.mel_block * config.audio.dmel_bins * d,
        "mel_linear": lay.mel_block * d,
        "wave_linear": config.audio.chunk_samples // max(lay.num_audio, 1) * d,
    }[m.audio_in]
    n_eff = {
        "transformer": float(transformer - routed + routed_active),
        "unembed": config.text.vocab_size * d * lay.num_text_out / s,  # tied or not, the same matmul
        head: components.get(head, 0) * lay.num_audio / s * audio_out_lib.flops_multiplier(m.audio_out, m.flow_head),
        "mel_in": components.get("mel_in", 0) * lay.num_audio / s,
        f"audio_in_{m.audio_in}": audio_in * lay.num_audio / s,
        "video_stem": stem * lay.num_video / s,
        # the frame-text auxiliary scores one hidden state per frame against the vocabulary (model.py)
        "frame_text_unembed": config.text.vocab_size * d / s if lay.num_video and config.model.frame_text_weight
        else 0.0,
        # the frame-motion auxiliary: one linear probe over all of a frame's patch tokens
        "frame_motion_probe": lay.num_video * d / s if lay.num_video and config.model.frame_motion_weight else 0.0,
        # the heard-text auxiliary scores every AUDIO_IN token against the vocabulary
        "heard_text_unembed": config.text.vocab_size * d * lay.num_audio / s if config.model.heard_text_weight
        else 0.0,
        "heard_onset_unembed": config.text.vocab_size * d * lay.num_audio / s if config.model.heard_onset_weight
        else 0.0,
        # the heard-prev auxiliary: a d x d probe, then the same vocabulary scores
        "heard_prev_probe": (d + config.text.vocab_size) * d * lay.num_audio / s if config.model.heard_prev_weight
        else 0.0,
    }
    seq = lay.padded_len(config.data.window_chunks, config.model.pad_multiple)
    attention = 6 * tcfg.num_layers * tcfg.num_heads * tcfg.head_dim * seq
    flops_per_token = 6 * sum(n_eff.values()) + attention
    return {
        "config": config.name,
        "total": total,
        "active": active,
        "components": components,
        "flops_per_token": float(flops_per_token),
        "attention_flops_per_token": float(attention),
        "matmul_params_per_token": {k: float(v) for k, v in n_eff.items()},
        "seq_len": seq,
        "tokens_per_chunk": s,
    }


def tokens_per_step(config: Config) -> int:
    lay = Layout.from_config(config.audio, config.vision, config.text)
    return config.data.batch_size * lay.padded_len(config.data.window_chunks, config.model.pad_multiple)


def format_report(rep: dict[str, Any]) -> str:
    lines = [f"## params: {rep['config']}  (S={rep['tokens_per_chunk']} tokens/chunk, T={rep['seq_len']})", ""]
    lines += ["| component | params |", "|---|---:|"]
    for name, n in sorted(rep["components"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {n:,} |")
    lines.append(f"| **total** | **{rep['total']:,}** |")
    lines.append(f"| **active** | **{rep['active']:,}** |")
    lines += ["", f"model FLOPs per token (train, fwd+bwd): {rep['flops_per_token']:.4g} "
              f"(attention {rep['attention_flops_per_token']:.3g}); formula: 6*N_eff + 6*L*H*Dh*T"]
    return "\n".join(lines)

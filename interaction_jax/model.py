"""InteractionModel: thin front-ends -> one interleaved micro-turn sequence -> transformer -> text + mel heads.

Batch contract (produced by ``interaction_jax.data.pipeline``; ``B`` batch, ``N`` chunks per window,
``H x W`` frame size, ``Ti/To`` text slots, ``F = 16`` mel frames per chunk, ``M = 80`` mel channels):

==================  ===================  =======  =============================================================
key                 shape                dtype    meaning
==================  ===================  =======  =============================================================
``audio_in``        [B, N, F, M]         int32    dMel bins of the microphone for interval n (streaming frames);
                                                 ``model.audio_in`` variants carry float log-mel [B, N, F, M]
                                                 or waveform [B, N, 3200] (frontends/audio_in.py)
``frames``          [B, N, H, W, 3]      uint8    the video frame of interval n (absent if the config has V=0)
``frame_mask``      [B, N]               bool     False -> the learned "no frame" tokens replace the hMLP output
``text_in``         [B, N, Ti]           int32    typed user text / background results, PAD when empty
``text_out``        [B, N, To]           int32    inner-monologue targets describing interval n+1
``text_out_weight`` [B, N, To]           float32  1 inside the episode, 0 for padding (the loss weighs by kind)
``mel_out``         [B, N, F, M]         float32  normalised log-mel (-1 silence .. 1 full scale), interval n+1
``mel_out_weight``  [B, N]               float32  1 inside the episode, 0 for padding chunks
``frame_text``      [B, N]               int32    first byte of the text readable in frame n, PAD for none
``frame_text_weight`` [B, N]             float32  1 where the episode labels its frames (synthetic), else 0
``frame_motion``    [B, N]               float32  displacement (0 rest .. 1 far end) of repcount's object, frame n
``frame_motion_weight`` [B, N]           float32  1 where labelled (synthetic repcount scenes), else 0
``heard_text``      [B, N, A]            int32    first byte of what the user says in AUDIO_IN token a, PAD for none
``heard_text_weight`` [B, N, A]          float32  1 where labelled (synthetic; not on the model's echo), else 0
``heard_onset``     [B, N, A]            int32    the symbol in the token where the user starts saying it, else PAD
``heard_prev``      [B, N, A]            int32    at onsets the symbol heard before (PAD: first); at ends the last
==================  ===================  =======  =============================================================

Inputs at the model's own output slots are teacher-forced from the targets, shifted by one token in flat
order: the input at TEXT_OUT slot j is the previous text-out token (BOS at the window start), and the input
at AUDIO_OUT slot i is the previous k-frame mel block (silence at the window start).

Loss weights are the loss's business, not the data's: text targets weigh ``text.pad_weight`` /
``epad_weight`` / ``word_weight`` by kind, silent mel blocks ``model.silent_mel_weight`` (voiced ones 1).
Input tokens of every slot type start at RMS ~1 (text, tick and dMel tables are scaled for it), so no input
stream starts 40x quieter than another.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from interaction_jax.audio.dmel import FULL_SCALE_MEL, SILENCE_MEL
from interaction_jax.config import AudioConfig, Config, ModelConfig, TextConfig, VisionConfig
from interaction_jax.frontends import audio_in as audio_in_lib
from interaction_jax.frontends import audio_out as audio_out_lib
from interaction_jax.frontends import video_in as video_in_lib
from interaction_jax.layers import Transformer
from interaction_jax.layout import Layout, SlotType
from interaction_jax.text import tokenizer
from interaction_jax.vision.hmlp import frames_to_input

SILENT_BLOCK_MAX = -0.9  # a target block whose maximum stays below this is silence (see data.pipeline)


def _param(name: str, axes: tuple[str | None, ...], init, shape, module: nn.Module):
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


class InteractionModel(nn.Module):
    """The whole network. Pure: ``init(rng, batch)`` / ``apply(params, batch)``; no global state."""

    model: ModelConfig
    audio: AudioConfig
    vision: VisionConfig
    text: TextConfig

    @classmethod
    def from_config(cls, config: Config) -> InteractionModel:
        return cls(model=config.model, audio=config.audio, vision=config.vision, text=config.text)

    @property
    def layout(self) -> Layout:
        return Layout.from_config(self.audio, self.vision, self.text)

    @property
    def dtype(self) -> jnp.dtype:
        return jnp.dtype(self.model.transformer.dtype)

    def setup(self) -> None:
        lay = self.layout
        d = self.model.transformer.d_model
        unit_init = nn.initializers.normal(stddev=1.0)  # token embeddings start at RMS 1, like the video stem
        self.tick_embed = _param("tick_embed", ("embed",), unit_init, (d,), self)
        # As large as the content: a typed "7" and a spoken-by-me "7" share a row of text_embed, and only
        # this tells them apart (at std 0.02 it was 2% of the token, so attention could not find slot types).
        self.slot_type_embed = _param("slot_type_embed", (None, "embed"), unit_init, (len(SlotType), d), self)
        if self.model.slot_embedding == "slot":
            self.slot_index_embed = _param("slot_index_embed", (None, "embed"), unit_init,
                                           (lay.slots_per_chunk, d), self)
        # The three front-end switches (frontends/): shared scope keeps the audio-in params at the top of the
        # tree (``dmel_table``, ``audio_in_linear``), where checkpoints from before the switch have them.
        self.audio_in_embed = audio_in_lib.make(self.model.audio_in, self.audio, d, self.dtype)
        nn.share_scope(self, self.audio_in_embed)
        if lay.num_video:
            self.video_stem = video_in_lib.make(self.model.video_in, d, self.vision.patch, self.dtype)
            self.no_frame_embed = _param("no_frame_embed", (None, "embed"), unit_init, (lay.num_video, d), self)
        self.text_embed = _param("text_embed", ("vocab", "embed"), unit_init, (self.text.vocab_size, d), self)
        self.mel_in = nn.Dense(
            d, dtype=self.dtype, name="mel_in",
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        )
        tapped = self.model.heard_onset_weight or self.model.heard_prev_weight
        self.transformer = Transformer(self.model.transformer, tap_layer=self.model.heard_onset_layer if tapped else -1)
        if self.model.heard_prev_weight:  # a linear probe: the onset's own symbol stays readable by the tied logits
            self.heard_prev_proj = nn.Dense(
                d, use_bias=False, dtype=jnp.float32, name="heard_prev_proj",
                kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", None)),
            )
        if self.model.frame_motion_weight and lay.num_video:  # a linear probe on all of a frame's patch tokens
            self.frame_motion_proj = nn.Dense(
                1, dtype=jnp.float32, name="frame_motion_proj",
                kernel_init=nn.with_logical_partitioning(nn.initializers.zeros, (None, None)),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
            )
        if not self.model.tie_text_embeddings:
            self.unembed = nn.Dense(
                self.text.vocab_size, use_bias=False, dtype=jnp.float32, name="unembed",
                kernel_init=nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), ("embed", "vocab")),
            )
        head = audio_out_lib.make(self.model.audio_out, self.model.flow_head, lay.mel_block, self.audio,
                                  self.model.regress_loss, self.dtype)
        # one attribute per variant, so the param name says which head a checkpoint holds
        if self.model.audio_out == "flow":
            self.flow_head = head
        elif self.model.audio_out == "regress":
            self.regress_head = head
        else:
            self.dmel_bins_head = head

    @property
    def audio_head(self) -> nn.Module:
        """The AUDIO_OUT head (``model.audio_out``): every variant has ``loss`` and ``sample_with_noise``."""
        return getattr(self, f"{self.model.audio_out}_head")

    # ------------------------------------------------------------------ front-ends (one chunk axis N)
    def _slot(self, x: jax.Array, kind: SlotType, first: int = 0) -> jax.Array:
        """Add the slot-type embedding (and, with ``slot_embedding="slot"``, the slot-index one).

        ``x`` is [..., count, D] for the ``count`` consecutive slots of ``kind`` starting at its slot
        ``first`` (decode feeds one slot at a time), or [D] for the single TICK slot.
        """
        x = x + self.slot_type_embed[int(kind)]
        if self.model.slot_embedding == "slot":
            start = self.layout.offset(kind) + first
            x = x + (self.slot_index_embed[start] if x.ndim == 1 else
                     self.slot_index_embed[start : start + x.shape[-2]])
        return x.astype(self.dtype)

    def embed_audio_in(self, feats: jax.Array, stem: jax.Array | None = None) -> jax.Array:
        """One chunk's ``audio_in`` feature per leading index -> [..., A, D] tokens (``model.audio_in``:
        dMel bins [..., F, M] by default; frontends/audio_in.py lists the variants). ``stem`` is
        ``audio_in_embed(feats)`` when the caller already has it (the heard-text auxiliary)."""
        return self._slot(self.audio_in_embed(feats) if stem is None else stem, SlotType.AUDIO_IN)

    def video_patches(self, frames: jax.Array) -> jax.Array:
        """uint8[..., H, W, 3] -> [..., V, D] stem patch tokens (``model.video_in``), before the no-frame mask and
        slot embeddings."""
        return self.video_stem(frames_to_input(frames).astype(self.dtype))

    def embed_video(self, frames: jax.Array, frame_mask: jax.Array, patches: jax.Array | None = None) -> jax.Array:
        """uint8[..., H, W, 3] + bool[...] -> [..., V, D]; missing frames use learned no-frame tokens.

        ``patches`` are ``video_patches(frames)`` when the caller already has them (the frame-text auxiliary).
        """
        tokens = self.video_patches(frames) if patches is None else patches
        tokens = jnp.where(frame_mask[..., None, None], tokens, self.no_frame_embed.astype(tokens.dtype))
        return self._slot(tokens, SlotType.VIDEO)

    def embed_text(self, ids: jax.Array, kind: SlotType, first: int = 0) -> jax.Array:
        """int32[..., count] -> [..., count, D] for ``count`` slots of ``kind`` starting at slot ``first``."""
        return self._slot(jnp.take(self.text_embed, ids, axis=0), kind, first)

    def embed_mel(self, blocks: jax.Array, last_text: jax.Array | None = None, first: int = 0) -> jax.Array:
        """float32[..., A, k*M] previous mel blocks -> AUDIO_OUT input tokens.

        ``last_text`` [...] is the chunk's last text-out token: it is added to the first AUDIO_OUT slot, the
        next position in flat order. No other input carries it before the next chunk, so without it the
        voice of interval n+1 could not see the word it is meant to say (with the ``[EPAD, digit]`` layout,
        never the digit). With ``model.text_to_voice="all"`` it is added to every AUDIO_OUT slot, so a block
        need not find the word through attention, nor infer it from the tone it continues.
        """
        x = self.mel_in(blocks.astype(self.dtype))
        if last_text is not None:
            word = jnp.take(self.text_embed, last_text, axis=0).astype(x.dtype)
            x = x + word[..., None, :] if self.model.text_to_voice == "all" else x.at[..., 0, :].add(word)
        return self._slot(x, SlotType.AUDIO_OUT, first)

    def embed_inputs(self, audio_in, frames, frame_mask, text_in, patches=None, audio_stem=None) -> jax.Array:
        """World-side slots of each chunk, [..., N, num_input_slots, D] in layout order (TICK..TEXT_IN)."""
        lead = text_in.shape[:-1]
        tick = jnp.broadcast_to(self._slot(self.tick_embed, SlotType.TICK), (*lead, 1, self.tick_embed.shape[0]))
        parts = [tick]
        if self.layout.num_video:
            parts.append(self.embed_video(frames, frame_mask, patches))
        parts += [self.embed_audio_in(audio_in, audio_stem), self.embed_text(text_in, SlotType.TEXT_IN)]
        return jnp.concatenate(parts, axis=-2)

    # ------------------------------------------------------------------ core
    def run_transformer(self, x: jax.Array, positions: jax.Array, cache: Any = None):
        """[B, T, D] tokens at absolute ``positions`` -> (hidden, new_cache, aux_loss). Used by train and serve."""
        return self._transformer(x, positions, cache)[:3]

    def _transformer(self, x: jax.Array, positions: jax.Array, cache: Any = None) -> tuple:
        """``run_transformer`` plus, with the heard-onset auxiliary on, the tapped middle layer."""
        x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))
        return self.transformer(x, positions, cache=cache)

    def text_logits(self, hidden: jax.Array) -> jax.Array:
        """Text-out logits. Tied: scored against the (RMS-1) input embeddings scaled by 1/sqrt(d), so a byte
        the model reads (typed text, its own last token) is already the byte it would write."""
        if self.model.tie_text_embeddings:
            d = self.text_embed.shape[-1]
            return jnp.einsum("...d,vd->...v", hidden.astype(jnp.float32), self.text_embed) * d**-0.5
        return self.unembed(hidden.astype(jnp.float32))

    def __call__(self, batch: dict[str, jax.Array], rng: jax.Array | None = None) -> dict[str, jax.Array]:
        """Teacher-forced forward over whole windows: returns text logits, flow conditions and aux loss.

        With ``rng`` (training), each fed-back mel block is replaced by silence with probability
        ``model.mel_feedback_dropout``: otherwise the AUDIO_OUT slots learn to continue the tone in their
        input and ignore the text, and in free running the first block of every word comes out wrong.
        """
        lay = self.layout
        text_out, mel_out = batch["text_out"], batch["mel_out"]
        b, n = text_out.shape[:2]
        # Shift the model's own streams right by one token in flat time order.
        flat_text = text_out.reshape(b, n * lay.num_text_out)
        text_prev = jnp.concatenate([jnp.full((b, 1), tokenizer.BOS, flat_text.dtype), flat_text[:, :-1]], 1)
        blocks = mel_out.reshape(b, n * lay.num_audio, lay.mel_block)
        mel_prev = jnp.concatenate([jnp.full_like(blocks[:, :1], SILENCE_MEL), blocks[:, :-1]], axis=1)
        if rng is not None and self.model.mel_feedback_dropout > 0:
            drop = jax.random.bernoulli(rng, self.model.mel_feedback_dropout, mel_prev.shape[:2])
            mel_prev = jnp.where(drop[..., None], SILENCE_MEL, mel_prev)

        # The frame-text auxiliary reads the same patch tokens the VIDEO slots get: compute the stem once.
        video_aux = self.model.frame_text_weight or self.model.frame_motion_weight
        patches = self.video_patches(batch["frames"]) if lay.num_video and video_aux else None
        # The heard-text auxiliary reads the AUDIO_IN front-end's output: compute it once too.
        heard = self.audio_in_embed(batch["audio_in"]) if self.model.heard_text_weight else None
        inputs = self.embed_inputs(batch["audio_in"], batch.get("frames"), batch.get("frame_mask"), batch["text_in"],
                                   patches, heard)
        tokens = jnp.concatenate(
            [
                inputs,
                self.embed_text(text_prev.reshape(b, n, lay.num_text_out), SlotType.TEXT_OUT),
                self.embed_mel(mel_prev.reshape(b, n, lay.num_audio, lay.mel_block), text_out[:, :, -1]),
            ],
            axis=2,
        )
        seq = lay.seq_len(n)
        padded = lay.padded_len(n, self.model.pad_multiple)
        x = tokens.reshape(b, seq, -1)
        x = jnp.pad(x, ((0, 0), (0, padded - seq), (0, 0)))
        positions = jnp.broadcast_to(jnp.arange(padded, dtype=jnp.int32), (b, padded))
        hidden, _, aux, *tapped = self._transformer(x, positions)
        hidden = hidden[:, :seq].reshape(b, n, lay.slots_per_chunk, -1)
        text_h = hidden[:, :, lay.slot_range(SlotType.TEXT_OUT)]
        audio_h = hidden[:, :, lay.slot_range(SlotType.AUDIO_OUT)]
        out = {"text_logits": self.text_logits(text_h), "flow_cond": audio_h, "aux_loss": aux}
        if patches is not None and self.model.frame_text_weight:
            out["frame_text_logits"] = self.frame_text_logits(patches)
        if patches is not None and self.model.frame_motion_weight:
            out["frame_motion_pred"] = self.frame_motion_proj(
                patches.astype(jnp.float32).reshape(*patches.shape[:-2], -1))[..., 0]
        if heard is not None:
            out["heard_text_logits"] = self.text_logits(heard)
        if tapped:
            mid = tapped[0][:, :seq].reshape(b, n, lay.slots_per_chunk, -1)[:, :, lay.slot_range(SlotType.AUDIO_IN)]
            mid = mid.astype(jnp.float32)
            if self.model.heard_onset_weight:
                out["heard_onset_logits"] = self.text_logits(_rms_normalise(mid))
            if self.model.heard_prev_weight:
                out["heard_prev_logits"] = self.text_logits(_rms_normalise(self.heard_prev_proj(mid)))
        return out

    def frame_text_logits(self, patches: jax.Array) -> jax.Array:
        """[..., V, D] patch tokens (``video_patches``) -> [..., vocab]: their mean read as a text token.

        The auxiliary target sits on the stem's output, not on a transformer output: there the frame's digit
        becomes a vector like the typed digit's embedding in the *input*, which any layer can copy (a label
        on the last layer's output taught the stem to read digits, 0.85 accuracy, but no later layer could
        use it and the spoken digit stayed at chance; experiments/002_learning/README.md, probe).
        """
        return self.text_logits(jnp.mean(patches.astype(jnp.float32), axis=-2))

    def decode_chunk(
        self,
        cache: Any,
        chunk_index: jax.Array,
        audio_in: jax.Array,
        frames: jax.Array | None,
        frame_mask: jax.Array | None,
        text_in: jax.Array,
        prev_text: jax.Array,
        prev_mel: jax.Array,
        keys: jax.Array,
        sampling: Sampling,
        active: jax.Array | None = None,
    ) -> dict[str, Any]:
        """One micro-turn for B streams with a KV cache: prefill the world slots, then speak.

        ``chunk_index`` [B] may differ per row (sessions join at any time). The prefill covers the input
        slots plus the first TEXT_OUT slot (its input, the previous text-out token, is already known);
        then each remaining TEXT_OUT token and each AUDIO_OUT block is decoded one slot at a time, feeding
        the sample back as the next slot's input. ``keys`` [B] are per-row PRNG keys, so a row's samples
        do not depend on which other rows share the batch.

        ``active`` [B] bool (default: all): rows that consume this chunk. The others run at negative positions
        (near INT32_MIN / 2), which the cache neither writes nor attends to, so their cache is untouched *in
        place*; selecting the old cache back afterwards kept two copies of it alive and made every cache
        write a full copy. Their outputs are meaningless (computed with no context) and must be ignored.
        """
        lay = self.layout
        s = lay.slots_per_chunk
        start = (chunk_index * s).astype(jnp.int32)[:, None]
        base = start if active is None else jnp.where(active[:, None], start, jnp.iinfo(jnp.int32).min // 2)
        x = self.embed_inputs(audio_in[:, None], None if frames is None else frames[:, None],
                              None if frame_mask is None else frame_mask[:, None], text_in[:, None])[:, 0]
        x = jnp.concatenate([x, self.embed_text(prev_text[:, None], SlotType.TEXT_OUT)], axis=1)
        n_pre = x.shape[1]
        h, cache, _ = self.run_transformer(x, base + jnp.arange(n_pre, dtype=jnp.int32), cache)
        text_keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, 0), lay.num_text_out))(keys)
        logits = [self.text_logits(h[:, -1])]
        tokens = [sample_tokens(logits[0], text_keys[:, 0], sampling)]
        off_text = lay.offset(SlotType.TEXT_OUT)
        for j in range(1, lay.num_text_out):
            x = self.embed_text(tokens[-1][:, None], SlotType.TEXT_OUT, first=j)
            h, cache, _ = self.run_transformer(x, base + off_text + j, cache)
            logits.append(self.text_logits(h[:, -1]))
            tokens.append(sample_tokens(logits[-1], text_keys[:, j], sampling))
        noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), (lay.num_audio, lay.mel_block)))(keys)
        off_audio = lay.offset(SlotType.AUDIO_OUT)
        blocks, conds, prev = [], [], prev_mel
        for i in range(lay.num_audio):
            x = self.embed_mel(prev[:, None], tokens[-1] if i == 0 or self.model.text_to_voice == "all" else None,
                               first=i)
            h, cache, _ = self.run_transformer(x, base + off_audio + i, cache)
            conds.append(h[:, 0])
            sample = self.audio_head.sample_with_noise(
                h[:, 0], noise[:, i] * sampling.audio_temperature, steps=sampling.flow_steps,
                cfg_scale=sampling.cfg_scale, solver=sampling.flow_solver,
            )
            # Targets live in [SILENCE_MEL, FULL_SCALE_MEL] (digital silence .. a 0 dBFS sine, per channel):
            # what the model says, and so what it hears itself say at the next slot, is clipped the same way.
            prev = jnp.clip(sample.astype(jnp.float32), SILENCE_MEL, FULL_SCALE_MEL)
            blocks.append(prev)
        return {
            "cache": cache,
            "text_tokens": jnp.stack(tokens, axis=1),
            "text_logits": jnp.stack(logits, axis=1),
            "mel_blocks": jnp.stack(blocks, axis=1),
            "flow_cond": jnp.stack(conds, axis=1),
        }

    def loss(self, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Text CE (weighted by target kind) + lambda * flow CFM (silent blocks down-weighted) + MoE aux."""
        rng, feedback_rng = jax.random.split(rng)
        out = self(batch, feedback_rng)
        lay = self.layout
        logits, targets = out["text_logits"], batch["text_out"]
        valid = batch["text_out_weight"].astype(jnp.float32)
        is_pad, is_epad = targets == tokenizer.PAD, targets == tokenizer.EPAD
        is_word = ~(is_pad | is_epad)
        t = self.text
        weights = valid * jnp.where(is_pad, t.pad_weight, jnp.where(is_epad, t.epad_weight, t.word_weight))
        ce = _token_ce(logits, targets)
        text_loss = jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1e-6)

        b, n = targets.shape[:2]
        cond = out["flow_cond"].reshape(b * n * lay.num_audio, -1)
        target = batch["mel_out"].reshape(b * n * lay.num_audio, lay.mel_block)
        block_valid = jnp.repeat(batch["mel_out_weight"].astype(jnp.float32).reshape(b * n), lay.num_audio)
        voiced = (jnp.max(target, axis=-1) > SILENT_BLOCK_MAX).astype(jnp.float32)
        mel_w = block_valid * (voiced + (1.0 - voiced) * self.model.silent_mel_weight)
        per_block = self.audio_head.loss(cond, target, rng, weights=mel_w, per_row=True)
        flow_loss = jnp.sum(per_block * mel_w) / jnp.maximum(jnp.sum(mel_w), 1.0)

        aux_w = self.model.transformer.moe.aux_loss_weight if self.model.transformer.moe.num_experts else 0.0
        loss = text_loss + self.model.flow_loss_weight * flow_loss + aux_w * out["aux_loss"]
        frame_metrics = {}
        # Auxiliary label losses: (output key, batch target, batch weight, loss weight); each adds weight x its
        # CE over labelled tokens and logs its loss and its accuracy on labelled non-PAD targets.
        for name, weight_key, weight in (("frame_text", "frame_text_weight", self.model.frame_text_weight),
                                         ("heard_text", "heard_text_weight", self.model.heard_text_weight),
                                         ("heard_onset", "heard_text_weight", self.model.heard_onset_weight),
                                         ("heard_prev", None, self.model.heard_prev_weight)):
            if f"{name}_logits" not in out or name not in batch:
                continue
            a_logits, a_target = out[f"{name}_logits"], batch[name]
            if weight_key is None:  # heard_prev: onsets (where PAD names "first of its utterance") and ends
                labelled = (batch["heard_onset"] != tokenizer.PAD) | (a_target != tokenizer.PAD)
            else:
                labelled = batch[weight_key] > 0
            a_loss = _masked_mean(_token_ce(a_logits, a_target), labelled)
            loss = loss + weight * a_loss
            a_pred = jnp.argmax(a_logits, -1)
            frame_metrics[f"{name}_loss"] = a_loss
            frame_metrics[f"{name}_acc"] = _masked_mean((a_pred == a_target).astype(jnp.float32),
                                                        labelled & (a_target != tokenizer.PAD))
            if name == "heard_onset":  # onsets are rare: also log how often a PAD token is named
                frame_metrics["heard_onset_false"] = _masked_mean((a_pred != tokenizer.PAD).astype(jnp.float32),
                                                                  labelled & (a_target == tokenizer.PAD))
        if "frame_motion_pred" in out and "frame_motion" in batch:
            # Regression, not a token: where the object is (0 at rest .. 1 at the far end) is what a count of
            # completed cycles is read from, and the patch mean the frame-text label uses would lose position.
            labelled = batch["frame_motion_weight"] > 0
            err = out["frame_motion_pred"] - batch["frame_motion"]
            m_loss = _masked_mean(err**2, labelled)
            loss = loss + self.model.frame_motion_weight * m_loss
            frame_metrics["frame_motion_loss"] = m_loss
            frame_metrics["frame_motion_mae"] = _masked_mean(jnp.abs(err), labelled)

        pred = jnp.argmax(logits, -1)
        correct = (pred == targets).astype(jnp.float32)
        v = valid > 0
        metrics = {
            "loss": loss,
            "text_loss": text_loss,
            "flow_loss": flow_loss,
            "moe_aux_loss": out["aux_loss"],
            "text_ce_pad": _masked_mean(ce, is_pad & v),
            "text_ce_epad": _masked_mean(ce, is_epad & v),
            "text_ce_word": _masked_mean(ce, is_word & v),
            "text_out_acc_word": _masked_mean(correct, is_word & v),
            "text_out_acc_epad": _masked_mean(correct, is_epad & v),
            "text_out_acc_pad": _masked_mean(correct, is_pad & v),
            "text_out_false_epad": _masked_mean((pred == tokenizer.EPAD).astype(jnp.float32), is_pad & v),
            "text_out_word_frac": _masked_mean(is_word.astype(jnp.float32), v),
            "flow_loss_voiced": _masked_mean(per_block, (voiced * block_valid) > 0),
            "flow_loss_silent": _masked_mean(per_block, ((1.0 - voiced) * block_valid) > 0),
            **frame_metrics,
        }
        return loss, metrics


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Decode-time sampling knobs (static under jit)."""

    temperature: float = 0.0  # 0 = greedy text
    top_k: int = 0  # 0 = no top-k filter
    audio_temperature: float = 1.0  # scales the flow head's initial noise
    flow_steps: int = 8
    cfg_scale: float = 1.0
    flow_solver: str = "euler"  # "midpoint" reaches the true spread at 8 steps for 2x the head evaluations

    @classmethod
    def from_config(cls, config: Config) -> Sampling:
        """Defaults from the config: ``model.flow_head.sample_steps`` and ``cfg_scale`` (so ``--set`` reaches
        eval, stream and serve; every one of them used to sample with the class defaults)."""
        head = config.model.flow_head
        return cls(flow_steps=head.sample_steps, cfg_scale=head.cfg_scale)


def sample_tokens(logits: jax.Array, keys: jax.Array, sampling: Sampling) -> jax.Array:
    """Per-row sampling with temperature and top-k; greedy when temperature is 0."""
    if sampling.temperature <= 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / sampling.temperature
    if sampling.top_k:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


def _token_ce(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token cross-entropy (nats) of integer ``targets`` under ``logits`` [..., vocab]."""
    return jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]


def _rms_normalise(x: jax.Array) -> jax.Array:
    """Parameter-free RMS norm: the tied text logits expect RMS-1 vectors."""
    return x * jax.lax.rsqrt(jnp.mean(x**2, -1, keepdims=True) + 1e-6)


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    mask = mask.astype(jnp.float32)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


# ---------------------------------------------------------------------- pure-functional entry points


# Batch keys that hold byte tokens (PAD-filled where there is nothing; the pipeline pads windows with PAD).
TOKEN_KEYS = ("text_in", "text_out", "frame_text", "heard_text", "heard_onset", "heard_prev")


def batch_spec(config: Config, batch_size: int, num_chunks: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of one batch (the contract above); used for init, AOT compilation and tests."""
    lay = Layout.from_config(config.audio, config.vision, config.text)
    f, m = config.audio.frames_per_chunk, config.audio.n_mels
    b, n = batch_size, num_chunks
    in_shape, in_dtype = audio_in_lib.feature_spec(config.model.audio_in, config.audio)
    spec = {
        "audio_in": ((b, n, *in_shape), in_dtype),
        "text_in": ((b, n, lay.num_text_in), jnp.int32),
        "text_out": ((b, n, lay.num_text_out), jnp.int32),
        "text_out_weight": ((b, n, lay.num_text_out), jnp.float32),
        "mel_out": ((b, n, f, m), jnp.float32),
        "mel_out_weight": ((b, n), jnp.float32),
    }
    if lay.num_video:
        spec["frames"] = ((b, n, config.vision.height, config.vision.width, 3), jnp.uint8)
        spec["frame_mask"] = ((b, n), jnp.bool_)
        spec["frame_text"] = ((b, n), jnp.int32)
        spec["frame_text_weight"] = ((b, n), jnp.float32)
        spec["frame_motion"] = ((b, n), jnp.float32)
        spec["frame_motion_weight"] = ((b, n), jnp.float32)
    spec["heard_text"] = ((b, n, lay.num_audio), jnp.int32)
    spec["heard_text_weight"] = ((b, n, lay.num_audio), jnp.float32)
    spec["heard_onset"] = ((b, n, lay.num_audio), jnp.int32)
    spec["heard_prev"] = ((b, n, lay.num_audio), jnp.int32)
    return {k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in spec.items()}


def dummy_batch(config: Config, batch_size: int = 1, num_chunks: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """A random batch that satisfies the contract: for init, tests and benchmarks."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for key, s in batch_spec(config, batch_size, num_chunks).items():
        if key == "audio_in":
            out[key] = audio_in_lib.random_features(config.model.audio_in, s.shape, config.audio, rng)
        elif key in TOKEN_KEYS:
            out[key] = rng.integers(0, 256, s.shape, dtype=np.int32)
        elif key == "frames":
            out[key] = rng.integers(0, 256, s.shape, dtype=np.uint8)
        elif key == "frame_mask":
            out[key] = np.ones(s.shape, bool)
        elif key == "mel_out":
            out[key] = rng.uniform(SILENCE_MEL, FULL_SCALE_MEL, s.shape).astype(np.float32)
        else:
            out[key] = np.ones(s.shape, np.float32)
    return out


def init(rng: jax.Array, config: Config, num_chunks: int = 2) -> Any:
    """Fresh params (boxed with logical axis names; ``nn.unbox`` / ``nn.get_partition_spec`` read them)."""
    model = InteractionModel.from_config(config)
    batch = jax.tree.map(jnp.asarray, dummy_batch(config, 1, num_chunks))
    # Through `loss`, so every submodule (the flow head and its learned null condition too) creates its params.
    return model.init(rng, batch, jax.random.key(0), method=InteractionModel.loss)["params"]


def loss_fn(params: Any, batch: dict[str, jax.Array], rng: jax.Array, *, config: Config):
    """``(loss, metrics)`` for one batch: the training objective as a pure function of (params, batch, rng)."""
    model = InteractionModel.from_config(config)
    return model.apply({"params": params}, batch, rng, method=InteractionModel.loss)


def count_params(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nn.unbox(params))))


def replace_transformer(config: Config, **changes: Any) -> Config:
    """Convenience for sweeps and tests: ``replace_transformer(cfg, num_layers=2)``."""
    model = dataclasses.replace(config.model, transformer=dataclasses.replace(config.model.transformer, **changes))
    return dataclasses.replace(config, model=model)

"""Streaming engine: a fixed batch of session slots stepped together, one jitted call per 200 ms micro-turn.

The call takes 3200 new microphone samples (plus an optional frame and text-in tokens) per slot and
returns 3200 output samples and the text-out tokens. Inside it: streaming dMel, the input prefill, the
text and audio decode with the KV cache, and streaming Griffin-Lim. The state (KV cache included) is
donated, so it is updated in place. Sessions join and leave by resetting their row: shapes never change,
so nothing recompiles.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from interaction_jax.audio import dmel, vocoder
from interaction_jax.config import Config
from interaction_jax.frontends import audio_in as audio_in_lib
from interaction_jax.layers import init_cache
from interaction_jax.layout import Layout
from interaction_jax.model import SILENCE_MEL, InteractionModel, Sampling
from interaction_jax.text import tokenizer


class SessionEnded(RuntimeError):
    """A session reached the end of its KV cache and sliding-window attention is off."""


@flax.struct.dataclass
class EngineState:
    cache: Any
    chunk_index: jax.Array  # [B] int32: next chunk of each slot
    prev_text: jax.Array  # [B] int32: last text-out token (input of the next TEXT_OUT slot 0)
    prev_mel: jax.Array  # [B, k*80]: last generated mel block (input of the next AUDIO_OUT slot 0)
    dmel_state: Any  # streaming log-mel context of each slot
    vocoder_state: Any  # streaming Griffin-Lim context of each slot
    seed: jax.Array  # [B] uint32: per-session sampling seed


_COMPILED: dict[tuple, tuple[Any, Any]] = {}


class Engine:
    """``B`` session slots of one model. ``step`` runs one micro-turn for all of them."""

    def __init__(self, config: Config, params: Any, *, batch_slots: int, cache_chunks: int | None = None,
                 sampling: Sampling | None = None, row_invariant: bool = False):
        """``row_invariant``: decode row by row so outputs are bit-identical across *different* slot counts
        (slower on CPU). Without it, a session's outputs are still independent of what the other slots
        hold, because rows never interact and the shapes are fixed by ``batch_slots``."""
        self.config, self.params, self.batch_slots = config, _on_one_device(params), batch_slots
        self.sampling = sampling or Sampling.from_config(config)
        self.row_invariant = row_invariant
        self.model = InteractionModel.from_config(config)
        self.layout = Layout.from_config(config.audio, config.vision, config.text)
        self.cache_chunks = cache_chunks or config.model.max_chunks
        self.cache_len = self.cache_chunks * self.layout.slots_per_chunk
        window = config.model.transformer.sliding_window
        if window and window - 1 > self.cache_len:  # attention reads the cache before writing (layers/attention)
            raise ValueError(f"sliding_window={window} needs a cache of at least {window - 1} tokens, "
                             f"got {self.cache_len} ({self.cache_chunks} chunks)")
        # Compiled once per (config, sampling, mode, shapes) and shared by every Engine with the same key:
        # evaluating five tasks or reloading a checkpoint does not recompile.
        key = (config, self.sampling, row_invariant, batch_slots, self.cache_chunks)
        if key not in _COMPILED:
            program = Engine.__new__(Engine)
            program.__dict__.update({k: v for k, v in self.__dict__.items() if k != "params"})
            _COMPILED[key] = (jax.jit(program._step_impl, donate_argnums=(1,)),
                              jax.jit(program._reset_impl, donate_argnums=(0,)))
        self._step, self._reset = _COMPILED[key]

    def warm_up(self, state: EngineState) -> tuple[EngineState, float]:
        """Compile the micro-turn before the first session arrives; returns the state (unchanged: no row
        advances) and the warm step time in seconds. Two steps, so a second-step recompile would show here."""
        zeros = np.zeros((self.batch_slots, self.config.audio.chunk_samples), np.float32)
        hold = np.zeros(self.batch_slots, bool)
        for _ in range(2):
            state, out = self.step(state, zeros, advance=hold)
        return state, float(out["step_s"])

    # ---------------------------------------------------------------------------- state
    def init_state(self, seeds: jax.Array | None = None) -> EngineState:
        """Fresh state for all slots. Every per-session random stream (text sampling, flow noise, vocoder
        phases) is keyed by that session's seed alone, so a session's output never depends on its slot or
        on which other sessions share the batch.

        Committed to the params' device like the step's outputs, so the second step hits the compile cache
        (jit keys on committed-ness: an uncommitted fresh state recompiled the whole micro-turn)."""
        state = self._fresh_state(seeds)
        one = _one_device(self.params)
        return state if one is None else jax.device_put(state, one)

    def _fresh_state(self, seeds: jax.Array | None = None) -> EngineState:
        b = self.batch_slots
        tcfg = self.config.model.transformer
        seeds = jnp.zeros((b,), jnp.uint32) if seeds is None else jnp.asarray(seeds, jnp.uint32)
        state = EngineState(
            cache=init_cache(tcfg, b, self.cache_len),  # dtype: transformer.cache_dtype (or its dtype)
            chunk_index=jnp.zeros((b,), jnp.int32),
            prev_text=jnp.full((b,), tokenizer.BOS, jnp.int32),
            prev_mel=jnp.full((b, self.layout.mel_block), SILENCE_MEL, jnp.float32),
            dmel_state=dmel.stream_init((b,)),
            vocoder_state=vocoder_init(seeds),
            seed=seeds,
        )
        return state

    @staticmethod
    def _select_rows(rows: jax.Array, new: EngineState, old: EngineState) -> EngineState:
        """Per-row select between two states; cache leaves are stacked over layers (batch is axis 1)."""

        def pick(path, a, b):
            axis = 1 if any(getattr(k, "name", None) == "cache" for k in path) else 0
            shape = [1] * a.ndim
            shape[axis] = -1
            return jnp.where(rows.reshape(shape), a, b)

        return jax.tree_util.tree_map_with_path(pick, new, old)

    def _reset_impl(self, state: EngineState, rows: jax.Array, seeds: jax.Array) -> EngineState:
        """Clear the given rows (bool [B]) so a new session can start there; other rows are untouched."""
        return self._select_rows(rows, self._fresh_state(seeds), state)

    def reset(self, state: EngineState, rows: np.ndarray, seeds: np.ndarray | None = None) -> EngineState:
        seeds = np.zeros(self.batch_slots, np.uint32) if seeds is None else np.asarray(seeds, np.uint32)
        return self._reset(state, jnp.asarray(rows, bool), jnp.asarray(seeds))

    # ---------------------------------------------------------------------------- the micro-turn
    def _decode(self, params, cache, chunk_index, bins, frames, frame_mask, text_in, prev_text, prev_mel, keys,
                active):
        return self.model.apply(
            {"params": params}, cache, chunk_index, bins, frames, frame_mask, text_in, prev_text, prev_mel, keys,
            self.sampling, active, method=InteractionModel.decode_chunk,
        )

    def _decode_rows(self, params, cache, *row_args):
        """Row by row (``lax.map``): each session runs the batch-1 program, so its outputs are bit-identical
        for any slot count. Batched matmuls on XLA:CPU block, and so round, differently for different M."""
        cache_rows = jax.tree.map(lambda c: jnp.moveaxis(c, 1, 0), cache)  # [L, B, ...] -> [B, L, ...]

        def one(args):
            c, *rest = args
            c = jax.tree.map(lambda x: x[:, None], c)
            rest = [None if r is None else r[None] for r in rest]
            out = self._decode(params, c, *rest)
            out["cache"] = jax.tree.map(lambda x: x[:, 0], out["cache"])
            return jax.tree.map(lambda x: x[0], {k: v for k, v in out.items() if k != "cache"}) | {
                "cache": out["cache"]}

        present = [a for a in row_args if a is not None]
        slots = [i for i, a in enumerate(row_args) if a is not None]

        def unpack(args):
            full = [None] * len(row_args)
            for i, a in zip(slots, args[1:], strict=True):
                full[i] = a
            return one((args[0], *full))

        out = jax.lax.map(unpack, (cache_rows, *present))
        out["cache"] = jax.tree.map(lambda c: jnp.moveaxis(c, 0, 1), out["cache"])
        return out

    def _step_impl(self, params, state: EngineState, audio, frames, frame_mask, text_in, advance):
        a = self.config.audio
        dmel_state, mel_in = dmel.stream_step(state.dmel_state, audio)
        bins = dmel.discretize(mel_in)  # what the page's "heard" mel shows, whatever the model's front-end
        feats = audio_in_lib.features(self.config.model.audio_in, mel_in, audio, a)
        keys = jax.vmap(lambda s, n: jax.random.fold_in(jax.random.key(s), n))(state.seed, state.chunk_index)
        decode = self._decode_rows if self.row_invariant else self._decode
        out = decode(params, state.cache, state.chunk_index, feats, frames, frame_mask, text_in, state.prev_text,
                     state.prev_mel, keys, advance)  # idle rows write nothing: their cache is left in place
        blocks = out["mel_blocks"]  # [B, A, k*80] normalised, clipped to [-1, 1]
        mel = blocks.reshape(blocks.shape[0], a.frames_per_chunk, a.n_mels)
        vocoder_state, wave = vocode_rows(state.vocoder_state, mel, a, advance)  # idle slots skip the vocoder
        new_state = EngineState(
            cache=None, chunk_index=state.chunk_index + 1, prev_text=out["text_tokens"][:, -1],
            prev_mel=blocks[:, -1], dmel_state=dmel_state, vocoder_state=vocoder_state, seed=state.seed,
        )
        # Idle rows keep their state exactly. The cache is not selected (that read and wrote all of it, and kept
        # the old copy alive so no write was in place): the decode already left idle rows' slots untouched.
        new_state = self._select_rows(advance, new_state, state.replace(cache=None)).replace(cache=out["cache"])
        outputs = {"audio": wave, "text_tokens": out["text_tokens"], "mel": mel, "text_logits": out["text_logits"],
                   "flow_cond": out["flow_cond"], "audio_in_bins": bins,
                   "audio_in": feats}  # the model's input (= audio_in_bins for the default dMel front-end)
        return new_state, outputs

    def step(self, state: EngineState, audio: np.ndarray, frames: np.ndarray | None = None,
             frame_mask: np.ndarray | None = None, text_in: np.ndarray | None = None,
             active: np.ndarray | None = None, advance: np.ndarray | None = None,
             ) -> tuple[EngineState, dict[str, np.ndarray]]:
        """One micro-turn for every slot. ``audio`` float32 [B, 3200]; returns host numpy outputs.

        ``active`` marks rows holding a live session (capacity is checked only for those); ``advance``
        marks rows that consume this chunk; the others are computed but their state is left untouched, and
        their outputs are meaningless (decoded with no context; their audio is silence).
        """
        b, lay = self.batch_slots, self.layout
        audio = np.asarray(audio, np.float32)
        if audio.shape != (b, self.config.audio.chunk_samples):
            raise ValueError(f"audio must be float32 [{b}, {self.config.audio.chunk_samples}], got {audio.shape}")
        if not np.isfinite(audio).all():
            raise ValueError("audio contains NaN or inf")
        self._check_capacity(state, active)
        if lay.num_video:
            h, w = self.config.vision.height, self.config.vision.width
            frames = np.zeros((b, h, w, 3), np.uint8) if frames is None else np.asarray(frames, np.uint8)
            frame_mask = np.zeros(b, bool) if frame_mask is None else np.asarray(frame_mask, bool)
        else:
            frames = frame_mask = None
        if text_in is None:
            text_in = np.full((b, lay.num_text_in), tokenizer.PAD, np.int32)
        start = time.perf_counter()
        advance = np.ones(b, bool) if advance is None else np.asarray(advance, bool)
        state, out = self._step(self.params, state, audio, frames, frame_mask, np.asarray(text_in, np.int32),
                                advance)
        out = jax.device_get(out)
        out["step_s"] = time.perf_counter() - start
        out["rtf"] = out["step_s"] / (self.config.audio.chunk_samples / self.config.audio.sample_rate)
        return state, out

    def _check_capacity(self, state: EngineState, active: np.ndarray | None) -> None:
        if self.config.model.transformer.sliding_window:
            return  # the cache rolls: positions keep growing, slots wrap modulo the cache length
        idx = np.asarray(state.chunk_index)
        full = idx >= self.cache_chunks
        if active is not None:
            full &= np.asarray(active, bool)
        if full.any():
            raise SessionEnded(
                f"session slot(s) {np.flatnonzero(full).tolist()} reached the KV cache length "
                f"({self.cache_chunks} chunks = {self.cache_chunks * 0.2:.0f} s); end the session, or train with "
                "model.transformer.sliding_window > 0 so the cache can roll"
            )


def _on_one_device(params: Any) -> Any:
    """Params that live on one device, as plain single-device arrays.

    A checkpoint restored through a 1-device mesh carries ``NamedSharding`` params; jit then returns the
    state under that sharding while ``init_state`` made it single-device, and the *second* step recompiled
    (6 s on CPU, measured). Host (numpy) params are put on the default device once, not on every step.
    Params sharded over several devices are left as they are."""
    target = _one_device(params)
    return params if target is None else jax.device_put(params, target)


def _one_device(params: Any) -> jax.sharding.SingleDeviceSharding | None:
    """The single device ``params`` live on (the default one for host params); None if sharded or absent."""
    if params is None:
        return None
    devices = {d for x in jax.tree.leaves(params) if isinstance(x, jax.Array) for d in x.sharding.device_set}
    if len(devices) > 1:
        return None
    return jax.sharding.SingleDeviceSharding(devices.pop() if devices else jax.devices()[0])


def vocoder_init(seeds: jax.Array) -> Any:
    """Per-session streaming Griffin-Lim states, each keyed by its session's seed alone."""
    return jax.vmap(lambda s: vocoder.griffin_lim_stream_init((), seed=s))(jnp.asarray(seeds, jnp.uint32))


def vocode_rows(vocoder_state: Any, mel: jax.Array, audio: Any, rows: jax.Array | None = None
                ) -> tuple[Any, jax.Array]:
    """Normalised mel chunks [B, 16, 80] -> (state, waves [B, 3200]): the one vocoder path of the engine,
    the eval and the oracle. ``lax.map`` over rows keeps each row batch-invariant in every mode.

    ``rows`` (bool [B]) skips the others at run time (``lax.cond``: their state is returned unchanged and
    their wave is silence), so an idle server slot does not pay for Griffin-Lim, the largest per-row cost."""
    log_mel = dmel.denormalize_mel(mel, audio)

    def one(args):
        state, block, run = args
        step = lambda s, m: vocoder.griffin_lim_stream_step(s, m, config=audio)
        idle = lambda s, m: (s, jnp.zeros((audio.chunk_samples,), jnp.float32))
        return jax.lax.cond(run, step, idle, state, block)

    rows = jnp.ones(mel.shape[:1], bool) if rows is None else rows
    return jax.lax.map(one, (vocoder_state, log_mel, rows))


@dataclasses.dataclass
class TextInQueue:
    """Host-side FIFO feeding TEXT_IN: typed text and background-model results, Ti tokens per chunk."""

    slots: int
    pending: list[int] = dataclasses.field(default_factory=list)

    def push(self, text: str) -> None:
        self.pending.extend(tokenizer.encode(text))

    def pop_chunk(self) -> np.ndarray:
        out = np.full(self.slots, tokenizer.PAD, np.int32)
        take = self.pending[: self.slots]
        out[: len(take)] = take
        del self.pending[: len(take)]
        return out


@dataclasses.dataclass
class DelegateTracker:
    """Finds ``<delegate>...</delegate>`` spans in the text-out stream and reports each closed span once."""

    buffer: list[int] = dataclasses.field(default_factory=list)
    inside: bool = False

    def feed(self, tokens: np.ndarray) -> list[str]:
        spans = []
        for t in np.asarray(tokens).tolist():
            if t == tokenizer.DELEGATE_START:
                self.inside, self.buffer = True, []
            elif t == tokenizer.DELEGATE_END and self.inside:
                spans.append(tokenizer.decode(self.buffer))
                self.inside, self.buffer = False, []
            elif self.inside and t not in (tokenizer.PAD, tokenizer.EPAD):
                self.buffer.append(t)
        return spans


def load_params(checkpoint_dir: str, config: Config | None = None) -> tuple[Config, Any]:
    """Params of the latest checkpoint in a training workdir (or its ``checkpoints`` folder), unsharded."""
    from interaction_jax import sharding
    from interaction_jax.checkpoint import EXPORT_FILE, Checkpointer, CheckpointError, load_exported, load_run_config
    from interaction_jax.config import MeshConfig
    from interaction_jax.paths import as_path
    from interaction_jax.train import Trainer

    path = as_path(checkpoint_dir)  # local or gs://
    if (path / EXPORT_FILE).exists():  # a params-only export (`python -m interaction_jax export`)
        exported_config, params = load_exported(path)
        check_params_match(config or exported_config, params)
        return config or exported_config, params
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {checkpoint_dir} does not exist")
    config = config or load_run_config(path)
    mesh = sharding.make_mesh(MeshConfig(data=1), jax.devices()[:1])
    trainer = Trainer(dataclasses.replace(config, mesh=MeshConfig(data=1)), mesh)
    _, state = Checkpointer(str(path), async_save=False).restore(trainer.abstract_state)
    return config, nn.unbox(state.params)


def check_params_match(config: Config, params: Any,
                       what: str = "the params export does not match its config.json") -> None:
    """Params must match the model ``config`` describes (a clear error instead of a jit one)."""
    from interaction_jax import model as model_lib
    from interaction_jax.checkpoint import CheckpointError

    def shapes(tree: Any) -> dict[str, tuple[int, ...]]:
        return {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}

    want = shapes(jax.eval_shape(lambda: nn.unbox(model_lib.init(jax.random.key(0), config))))
    got = shapes(params)
    if want != got:
        diff = sorted(set(want) ^ set(got)) or [k for k in want if want[k] != got[k]]
        raise CheckpointError(f"{what} (different model; first mismatch: {diff[0]})")

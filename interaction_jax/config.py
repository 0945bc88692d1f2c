"""Typed, frozen run configuration.

A config is a tree of frozen dataclasses, one per part of the system. Config files under ``configs/`` are
plain Python modules exposing ``get_config() -> Config``; their docstring documents the command and the
expected result (big_vision style). ``load_config(path, overrides)`` applies dotted ``key=value`` overrides
with type checking, and ``to_dict``/``dump`` give the resolved form that every run saves next to its outputs.

This module imports nothing heavy (no jax), so the CLI can resolve and print a config instantly, and the
layers can take their own small sub-config (``TransformerConfig``, ``FlowHeadConfig``...) without ever
seeing the whole tree.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

# ----------------------------------------------------------------------------------------------------------
# Signal front-ends
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AudioConfig:
    """Signal constants shared by audio in, audio out, the vocoder and the tests (DESIGN §2)."""

    sample_rate: int = 16_000
    n_fft: int = 1024
    win_length: int = 800
    hop_length: int = 200
    n_mels: int = 80
    fmin: float = 80.0
    fmax: float = 7600.0
    log_floor: float = 1e-10
    dmel_bins: int = 16
    dmel_min: float = -7.0
    dmel_max: float = 2.0
    chunk_samples: int = 3200  # 200 ms
    frames_per_token: int = 4  # k: mel frames grouped into one AUDIO_IN / AUDIO_OUT token
    griffin_lim_iters: int = 32
    griffin_lim_momentum: float = 0.99

    @property
    def frames_per_chunk(self) -> int:
        return self.chunk_samples // self.hop_length

    @property
    def tokens_per_chunk(self) -> int:
        return self.frames_per_chunk // self.frames_per_token


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """Video input: one frame per 200 ms chunk (5 fps), cut into ``patch``-pixel square patches."""

    height: int = 80
    width: int = 80
    patch: int = 40
    fps: int = 5

    @property
    def num_patches(self) -> int:
        return (self.height // self.patch) * (self.width // self.patch)


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Byte-level text with a handful of specials; slots per chunk for typed input and inner monologue."""

    vocab_size: int = 264  # 256 bytes + 8 specials (see text/tokenizer.py)
    text_in_slots: int = 2
    text_out_slots: int = 2
    # Text-out loss weights by target kind. PAD is ~90% of targets and mostly trivial; EPAD carries the timing
    # (when to speak) and words the content, so both get full weight.
    pad_weight: float = 0.25
    epad_weight: float = 1.0
    word_weight: float = 1.0


# ----------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------

RematPolicy = Literal["none", "dots", "full"]
AttentionBackend = Literal["auto", "dot", "splash", "cudnn"]
MoeDispatch = Literal["onehot", "sort", "alltoall"]


@dataclasses.dataclass(frozen=True)
class MoeConfig:
    """Top-k routed experts plus an optional shared expert. ``num_experts == 0`` means a dense FFN."""

    num_experts: int = 0
    top_k: int = 2
    expert_mlp_dim: int = 0
    shared_expert: bool = True
    aux_loss_weight: float = 0.01
    capacity_factor: float = 1.25
    dispatch: MoeDispatch = "onehot"


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Pre-norm decoder stack: RMSNorm, RoPE, GQA, SwiGLU (or MoE), scanned over layers."""

    d_model: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    mlp_dim: int = 768
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6
    sliding_window: int = 0  # 0 = full causal attention
    attention_backend: AttentionBackend = "auto"
    causal_block: int = 128  # dot backend: query/key block size for skipping future blocks (0 = dense)
    remat: RematPolicy = "none"
    scan_layers: bool = True
    scan_unroll: int = 1  # layers per scan iteration (XLA loop unrolling; the AOT FLOP count uses 2)
    dtype: str = "float32"  # compute dtype; params are always float32
    # KV-cache decode (serving, eval): "flash" reads only the filled key blocks of the cache (online softmax,
    # dynamic trip count), "dense" reads the whole allocation (the reference it is tested against), "auto"
    # picks flash while the cache is under half full and dense above, and flash whenever a layer's K is over
    # 4 MiB: since the layers read the stacked cache in place, dense's whole-layer read is a copy (bench stream,
    # 32 sessions at 20 s: flash 238-254 ms, the old fill-only auto 327-336 ms; 1 session at 40 s: dense
    # 8-13% faster than flash).
    decode_attention: Literal["auto", "flash", "dense"] = "auto"
    # Cache slots per flash-decoding block; 0 = sized by the batch (layers/attention.decode_block_size).
    decode_block: int = 0
    cache_dtype: str = ""  # KV-cache storage dtype ("" = dtype); "bfloat16" halves the bytes a decode reads
    moe: MoeConfig = dataclasses.field(default_factory=MoeConfig)


@dataclasses.dataclass(frozen=True)
class FlowHeadConfig:
    """adaLN MLP flow-matching head (MAR / Pocket-TTS style) that emits one k x 80 mel block per token."""

    width: int = 256
    depth: int = 3
    prediction: Literal["x", "velocity"] = "x"  # x: full-rank for any width (flow_head.py); velocity: width >= k*80
    min_one_minus_t: float = 0.05  # x-prediction: v = (x̂ - x_t) / max(1 - t, this)
    noise_multiplier: int = 4  # noise samples per condition in the CFM loss
    sample_steps: int = 8
    cfg_dropout: float = 0.1  # probability the condition is replaced by the learned null condition
    cfg_scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    transformer: TransformerConfig = dataclasses.field(default_factory=TransformerConfig)
    flow_head: FlowHeadConfig = dataclasses.field(default_factory=FlowHeadConfig)
    flow_loss_weight: float = 1.0
    # which AUDIO_OUT slots get the chunk's last text-out token added to their input: "all" (every block of
    # the voice sees the word it is saying) or "first" (the next slot in flat order). See model.embed_mel:
    # at 350 tiny steps the voice said what its text said 0.00-0.19 of the time with "first", 0.77-1.00 with "all"
    text_to_voice: Literal["first", "all"] = "all"
    mel_feedback_dropout: float = 0.25  # training: fed-back mel blocks replaced by silence (see model.__call__)
    tie_text_embeddings: bool = False  # text-out logits from the text input table (see model.text_logits)
    # Position inside the chunk: "type" adds one embedding per slot type (a token knows it is TEXT_IN, not
    # which of the TEXT_IN slots); "slot" adds one more per slot index, so a token knows it is the 2nd typed
    # byte or the 3rd 50 ms of audio of its chunk without inferring it through RoPE (model._slot).
    slot_embedding: Literal["type", "slot"] = "type"
    # Auxiliary loss (0 = off): the mean of a frame's patch tokens, read through the text logits, must name the
    # text visible in the frame (batch ``frame_text``; only synthetic video tasks label it). Reading a digit
    # from pixels with a from-scratch stem needs thousands of examples; this gives every frame a label
    # instead of one cue per episode. In the five-task mix it taught the video timing but blocked the
    # text copies (experiments/002_learning/README.md, runs 5-6), so it is off by default.
    frame_text_weight: float = 0.0
    # Auxiliary loss (0 = off), repcount's twin of frame_text: a linear probe on all of a frame's patch tokens
    # (batch ``frame_motion``; only synthetic repcount scenes label it) must give the moving object's
    # displacement (0 at rest .. 1 at the far end). Without it the model counted at a fixed ~0.7 s rhythm
    # whatever the video's period (experiments/002_learning/README.md, "Repcount counts open-loop").
    frame_motion_weight: float = 0.0
    # Auxiliary loss (0 = off), the audio twin of frame_text: each AUDIO_IN token, read through the text logits
    # straight from the front-end, must name the symbol the user is saying in it (batch ``heard_text``; only
    # synthetic tasks label it). Repeat's reply copies digits it heard; with the label, a heard "7" enters the
    # transformer already close to the embedding of the "7" the model would write.
    heard_text_weight: float = 0.0
    # Auxiliary loss (0 = off): the residual stream of each AUDIO_IN token after block ``heard_onset_layer``,
    # read through the text logits, must name a symbol only in the token where the user starts saying it (batch
    # ``heard_onset``), PAD elsewhere. A tone spans 2-4 tokens and the front-end cannot see where it began; a
    # layer that can, turns "5 5 5" into one "5", so the heard string is laid out like typed text.
    heard_onset_weight: float = 0.0
    heard_onset_layer: int = 1
    # Auxiliary loss (0 = off): at each onset token, the same tapped stream through a learned linear probe must
    # name the symbol heard just before it in the same utterance (PAD for the first), and at the token where the
    # utterance is heard to have ended, its last symbol (batch ``heard_prev``). This is the first half of an
    # induction copy: a reply that has just said "4" finds the heard token whose predecessor was "4" and says
    # its symbol, or stops if that token is the utterance's end. Read perfectly by step 200; with the other two
    # it lifts a repeat-only probe a little at learning rate 1e-3 (word accuracy 0.95 vs 0.91 without any).
    heard_prev_weight: float = 0.0
    # Front-end switches (frontends/; experiments/003_frontends asks which one wins): what AUDIO_IN slots hear
    # (dMel bag, linear on log-mel, linear on the raw 50 ms waveform), how VIDEO patches are embedded (hMLP
    # stem or one linear map per patch) and what emits the voice (flow head, direct regression, or a 16-way
    # dMel-bin softmax per mel cell). flow_head.width / depth size every audio-out head.
    audio_in: Literal["dmel", "mel_linear", "wave_linear"] = "dmel"
    video_in: Literal["hmlp", "linear"] = "hmlp"
    audio_out: Literal["flow", "regress", "dmel_bins"] = "flow"
    regress_loss: Literal["l1", "l2"] = "l1"  # audio_out="regress" only
    silent_mel_weight: float = 0.25  # flow loss weight of silent target blocks (voiced ones weigh 1; ~8% are voiced)
    max_chunks: int = 600  # longest context (chunks) a session or window may hold: 600 = 120 s
    pad_multiple: int = 128  # training sequences are padded to this (cuDNN / splash tiles); padding is masked


# ----------------------------------------------------------------------------------------------------------
# Data, training, mesh
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataConfig:
    tasks: tuple[str, ...] = ("repeat", "timespeak", "cuespeak", "repcount", "interrupt")
    task_weights: tuple[float, ...] = ()  # sampling weight per task (empty = uniform)
    pack: bool = True  # synthetic: fill each window with back-to-back tasks (no zero-weight padding chunks)
    voice: str = "dtmf"
    shards: str = ""  # glob of ArrayRecord shards; empty = generate episodes on the fly
    window_chunks: int = 40  # chunks per training window (40 x 200 ms = 8 s: the longest synthetic episode)
    batch_size: int = 8  # global batch
    seed: int = 0
    num_workers: int = 0  # grain mp_prefetch workers; 0 = in-process
    # In-process read-ahead. grain's defaults (16 threads, 500 batches) make a 2-core host spend its first
    # minutes synthesising batches nobody needs yet, starving tracing, compilation and checkpoint writes.
    read_threads: int = 2
    prefetch_batches: int = 4
    echo: bool = True


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.95
    grad_clip: float = 1.0
    grad_accum: int = 1
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    eval_every: int = 0  # 0 = only at the end
    eval_episodes: int = 8
    distributed: bool = False  # call jax.distributed.initialize() (also auto-detected on Cloud TPU)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh. -1 on one axis means "all remaining devices"; ``dcn_data`` > 1 builds a multi-slice mesh."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    expert: int = 1
    dcn_data: int = 1


@dataclasses.dataclass(frozen=True)
class Config:
    name: str = "unnamed"
    topology: str = ""  # TPU topology this config is sized for, e.g. "v5e:4x4" (used by `aot`)
    audio: AudioConfig = dataclasses.field(default_factory=AudioConfig)
    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)


# ----------------------------------------------------------------------------------------------------------
# Loading, overrides, serialisation
# ----------------------------------------------------------------------------------------------------------


class ConfigError(ValueError):
    """A config file, override or serialized config that cannot be applied."""


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> Config:
    """Import ``path`` (a Python file with ``get_config()``) and apply ``a.b=c`` overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_ij_config_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} must define get_config() -> Config")
    config = module.get_config()
    if not isinstance(config, Config):
        raise ConfigError(f"{path}: get_config() returned {type(config).__name__}, expected Config")
    return apply_overrides(config, overrides)


def apply_overrides(config: Config, overrides: typing.Sequence[str]) -> Config:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        config = _set_path(config, key.strip().split("."), raw.strip(), key.strip())
    return config


def _set_path(node: Any, parts: list[str], raw: str, full_key: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(node)}
    name = parts[0]
    if name not in fields:
        raise ConfigError(
            f"unknown config key {full_key!r}: {type(node).__name__} has no field {name!r}; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(type(node))
    current = getattr(node, name)
    if len(parts) == 1:
        if dataclasses.is_dataclass(current):
            raise ConfigError(f"{full_key!r} is a section; set one of its keys: {', '.join(_keys(current))}")
        value = _parse(raw, hints[name], full_key)
    else:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"{'.'.join(full_key.split('.')[:-len(parts) + 1])!r} is not a section")
        value = _set_path(current, parts[1:], raw, full_key)
    return dataclasses.replace(node, **{name: value})


def _keys(node: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(node)]


def _parse(raw: str, hint: Any, key: str) -> Any:
    """Parse an override string into the field's declared type, or raise naming the expected type."""
    origin = typing.get_origin(hint)
    try:
        if hint is bool:
            low = raw.lower()
            if low in ("true", "1", "yes"):
                return True
            if low in ("false", "0", "no"):
                return False
            raise ValueError
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        if hint is str:
            return raw
        if origin is Literal:
            choices = typing.get_args(hint)
            if raw not in choices:
                raise ConfigError(f"{key}={raw!r}: must be one of {', '.join(map(str, choices))}")
            return raw
        if origin is tuple:
            (elem,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
            items = [s.strip() for s in raw.strip("()[]").split(",") if s.strip()]
            return tuple(_parse(s, elem, key) for s in items)
        if origin in (types.UnionType, typing.Union):
            raise ValueError
    except ConfigError:
        raise
    except ValueError:
        raise ConfigError(f"{key}={raw!r}: expected a value of type {getattr(hint, '__name__', hint)}") from None
    raise ConfigError(f"{key}: cannot override a field of type {hint}")


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(data: dict[str, Any], cls: type = Config) -> Any:
    """Rebuild a config from ``to_dict`` output (e.g. the ``config.json`` saved in a run or checkpoint)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {sorted(unknown)}; valid keys: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(value, hint)
        elif typing.get_origin(hint) is tuple:
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def dumps(config: Config) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=False)


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model.transformer.d_model": 256, ...}``: the form shown by ``config`` and stored in TensorBoard."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, key + "."))
        else:
            out[key] = value
    return out

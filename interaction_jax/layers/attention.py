"""Grouped-query self-attention with RoPE, a fixed-shape KV cache and switchable kernels.

``attend`` is the one entry point for the attention math; the backends are
  * ``dot``: XLA einsums, usable everywhere. It is the reference the kernels are tested against and the
    only backend that masks by explicit positions, so the KV-cache path always uses it;
  * ``splash``: the Pallas TPU splash kernel, run per device inside ``shard_map`` when a mesh is set;
  * ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")`` on NVIDIA GPUs;
  * ``auto``: splash on TPU, cuDNN on GPU (bf16/fp16), dot otherwise. Kernels need ``T % 128 == 0``.
The kernels only see the *full-sequence* training path and assume each row's positions are contiguous
(``start + arange(T)``, as the model's padded windows are), because they mask by index, not position.

GQA in ``dot`` reshapes queries to ``[B, T, Hkv, G, D]`` so K/V are never repeated in memory.

KV cache (one per layer): ``{"k": [B, Hkv, C, D], "v": [B, Hkv, C, D], "pos": [B, C] int32}``, head-major
so the decode dots read keys in place (a ``[B, C, Hkv, D]`` cache made XLA transpose the whole cache on
every call); ``pos`` is the absolute position held by each slot (-1 = empty) and a token at position ``p``
lives in slot ``p % C``. Decode is flash-decoding (``decode_attention="flash"``, or ``"auto"``: flash while
the cache is under half full, one dense read above): fixed-size key blocks
with an online softmax and a *dynamic* trip count that stops after the last block holding a visible key,
so a step's cost follows the filled context, not the allocation, and nothing recompiles as it fills.
A step attends the new queries to ``old cache ++ new keys`` and then writes the new keys. Attending *before*
the write (instead of write-then-attend) means a chunk longer than 1 never overwrites keys that its own
earliest queries still need, so a rolling cache is exact for sliding-window attention whenever
``C >= sliding_window - 1`` whatever the chunk size, and chunks may even be longer than ``C``. Old slots are
only visible if ``pos < `` the row's first new position, which also makes re-writing positions (rollback)
safe. Tokens with a negative position are neither written nor attended to: a serving row with no new
token passes ``-1`` and its cache is untouched.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from interaction_jax.config import TransformerConfig
from interaction_jax.layers.partitioning import (
    BATCH_LEN_HEADS,
    BATCH_LEN_KV_HEADS,
    constrain,
    to_dtype,
    with_axes,
)
from interaction_jax.layers.rope import apply_rope

Backend = Literal["auto", "dot", "splash", "cudnn"]
Cache = dict[str, jax.Array]

_NEG = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite, so fully masked rows give no NaN
_KERNEL_TILE = 128


# ---------------------------------------------------------------------------------------------- backends


def resolve_backend(backend: str, q_len: int, kv_len: int, dtype: Any, platform: str | None = None) -> str:
    """Pick the concrete backend for ``auto``; explicit choices are returned unchanged."""
    if backend not in ("auto", "dot", "splash", "cudnn"):
        raise ValueError(f"unknown attention backend {backend!r}")
    if backend != "auto":
        return backend
    if q_len != kv_len or q_len % _KERNEL_TILE:
        return "dot"  # decode / cache path, or a length the kernels cannot tile
    platform = platform or jax.default_backend()
    if platform == "tpu":
        return "splash"
    if platform in ("gpu", "cuda") and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return "cudnn"
    return "dot"


def attention_mask(q_positions: jax.Array, kv_positions: jax.Array, sliding_window: int = 0) -> jax.Array:
    """bool ``[B, T, S]``: key valid (pos >= 0), not in the future, and within the window if one is set."""
    q = q_positions[:, :, None]
    kv = kv_positions[:, None, :]
    mask = (kv >= 0) & (kv <= q)
    if sliding_window > 0:
        mask &= q - kv < sliding_window
    return mask


def _masked_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax over the last axis restricted to ``mask``, in one pass: a query with no valid key gets exp(0)
    everywhere from the shift, so its row is zeroed by a per-row factor that fuses into the normalisation
    (no second pass over ``[T, S]``)."""
    masked = jnp.where(mask, logits, _NEG)
    shifted = jnp.exp(masked - jax.lax.stop_gradient(jnp.max(masked, axis=-1, keepdims=True)))
    return shifted * (jnp.any(mask, axis=-1, keepdims=True) / jnp.sum(shifted, axis=-1, keepdims=True))


def _dot_attention(q, k, v, q_positions, kv_positions, sliding_window: int) -> jax.Array:
    b, t, h, d = q.shape
    hkv = k.shape[2]
    qg = q.reshape(b, t, hkv, h // hkv, d)
    logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) / math.sqrt(d)
    mask = attention_mask(q_positions, kv_positions, sliding_window)[:, None, None]  # [B, 1, 1, T, S]
    probs = _masked_softmax(logits, mask)
    out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(v.dtype), v)
    return out.reshape(b, t, h, d)


def _causal_block_attention(q, k, v, q_positions, kv_positions, sliding_window: int, block: int) -> jax.Array:
    """Self-attention that skips key blocks that are entirely in the future (or out of the window).

    Valid only when positions increase with the index (a training window: ``start + arange(T)``, padding
    at the end), so key index > query index means "future". Each query block attends to a static key
    range, which cuts the score work from T^2 to ~T^2/2: the dense ``dot`` path spends most of a CPU
    training step on elementwise softmax passes over masked scores.
    """
    t = q.shape[1]
    outs = []
    for start in range(0, t, block):
        stop = min(start + block, t)
        lo = 0 if sliding_window <= 0 else max(0, (start - sliding_window + 1) // block * block)
        outs.append(_dot_attention(q[:, start:stop], k[:, lo:stop], v[:, lo:stop], q_positions[:, start:stop],
                                   kv_positions[:, lo:stop], sliding_window))
    return jnp.concatenate(outs, axis=1)


def _pick_block(t: int) -> int:
    for block in (512, 256, 128):
        if t % block == 0:
            return block
    raise ValueError(f"splash attention needs a sequence length divisible by 128, got {t}")


def _mesh_axes_size(mesh: Any, entry: Any) -> int:
    names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    return math.prod(mesh.shape[n] for n in names)


def _usable(mesh: Any, entry: Any, dim: int) -> Any:
    """Keep a logical->mesh mapping only if its axes exist in the mesh and divide ``dim``."""
    if entry is None:
        return None
    names = (entry,) if isinstance(entry, str) else tuple(entry)
    names = tuple(n for n in names if n in mesh.axis_names)
    if not names or dim % _mesh_axes_size(mesh, names):
        return None
    return names[0] if len(names) == 1 else names


def _splash_attention(q, k, v, sliding_window: int, interpret: bool, block: int | None) -> jax.Array:
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b, t, h, d = q.shape
    blk = block or _pick_block(t)
    # The kernel does not scale logits; scale q in fp32 once, then go head-major [B, H, T, D].
    q = (q.astype(jnp.float32) / math.sqrt(d)).astype(q.dtype).transpose(0, 2, 1, 3)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)

    def local(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        if sliding_window > 0:
            one = sm.LocalMask((t, t), window_size=(sliding_window - 1, 0), offset=0)
        else:
            one = sm.CausalMask((t, t))
        sizes = sk.BlockSizes(
            block_q=blk, block_kv=blk, block_kv_compute=blk,
            block_q_dkv=blk, block_kv_dkv=blk, block_kv_dkv_compute=blk, block_q_dq=blk, block_kv_dq=blk,
        )
        kernel = sk.make_splash_mha(
            sm.MultiHeadMask([one] * q.shape[1]), block_sizes=sizes, head_shards=1, q_seq_shards=1,
            interpret=interpret,
        )
        return jax.vmap(kernel)(q, k, v)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        out = local(q, k, v)
    else:
        # Shard batch and heads as the logical rules shard the activations; the sequence stays whole.
        batch_ax, heads_ax, kv_ax = nn.logical_to_mesh_axes(("act_batch", "act_heads", "act_kv_heads"))
        batch_ax = _usable(mesh, batch_ax, b)
        heads_ax = _usable(mesh, heads_ax, h)
        if _usable(mesh, kv_ax, k.shape[1]) != heads_ax:
            # Per-shard GQA grouping would be wrong if kv heads were split differently from q heads.
            k = jnp.repeat(k, h // k.shape[1], axis=1)
            v = jnp.repeat(v, h // v.shape[1], axis=1)
        spec = jax.sharding.PartitionSpec(batch_ax, heads_ax, None, None)
        sharded = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)
        out = sharded(q, k, v)
    return out.transpose(0, 2, 1, 3)


def _cudnn_attention(q, k, v, sliding_window: int, implementation: str = "cudnn") -> jax.Array:
    """``implementation="xla"`` runs the same call anywhere, so CPU tests can check our window convention."""
    if implementation == "cudnn" and jax.default_backend() != "gpu":
        raise ValueError(f"the cudnn attention backend needs an NVIDIA GPU; running on {jax.default_backend()}")
    window = (sliding_window - 1, 0) if sliding_window > 0 else None
    return jax.nn.dot_product_attention(
        q, k, v, is_causal=True, implementation=implementation, local_window_size=window,
        scale=1.0 / math.sqrt(q.shape[-1]),
    )


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_positions: jax.Array,
    kv_positions: jax.Array,
    *,
    backend: str = "dot",
    sliding_window: int = 0,
    interpret: bool = False,
    block_size: int | None = None,
    causal_block: int = 0,
) -> jax.Array:
    """Causal (optionally sliding-window) GQA attention: q ``[B,T,H,D]``, k/v ``[B,S,Hkv,D]`` -> ``[B,T,H,D]``.

    ``*_positions`` are int32 ``[B, T]`` / ``[B, S]`` absolute positions (negative = invalid key). Softmax
    statistics are fp32 in every backend. ``interpret`` runs splash in Pallas interpret mode (CPU tests);
    ``block_size`` overrides splash's tile size. ``causal_block > 0`` lets ``dot`` skip future key blocks of
    that size; the caller promises ``q_positions == kv_positions`` increase with the index (training path).
    """
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads ({q.shape[2]}) must be a multiple of kv heads ({k.shape[2]})")
    backend = resolve_backend(backend, q.shape[1], k.shape[1], q.dtype)
    if backend != "dot" and q.shape[1] != k.shape[1]:
        raise ValueError(f"the {backend} backend only supports the full-sequence path (no KV cache)")
    if backend == "dot":
        if causal_block and q.shape[1] == k.shape[1] and q.shape[1] > causal_block:
            return _causal_block_attention(q, k, v, q_positions, kv_positions, sliding_window, causal_block)
        return _dot_attention(q, k, v, q_positions, kv_positions, sliding_window)
    if backend == "splash":
        return _splash_attention(q, k, v, sliding_window, interpret, block_size)
    return _cudnn_attention(q, k, v, sliding_window)


# ---------------------------------------------------------------------------------------------- KV cache


def init_cache(config: TransformerConfig, batch: int, cache_len: int, dtype: Any = None) -> Cache:
    """Empty cache for the whole stack: k/v ``[L, B, Hkv, C, D]`` zeros, pos ``[L, B, C]`` = -1.

    ``dtype`` defaults to ``config.cache_dtype`` (or the compute dtype when that is empty)."""
    dtype = to_dtype(dtype if dtype is not None else (config.cache_dtype or config.dtype))
    kv_shape = (config.num_layers, batch, config.num_kv_heads, cache_len, config.head_dim)
    return {
        "k": jnp.zeros(kv_shape, dtype),
        "v": jnp.zeros(kv_shape, dtype),
        "pos": jnp.full((config.num_layers, batch, cache_len), -1, jnp.int32),
    }


def cache_logical_axes() -> dict[str, tuple[str | None, ...]]:
    """Logical axes of the stacked cache (for the serving engine's shardings)."""
    return {
        "k": ("layers", "act_batch", "act_kv_heads", "act_len", "head_dim"),
        "v": ("layers", "act_batch", "act_kv_heads", "act_len", "head_dim"),
        "pos": ("layers", "act_batch", "act_len"),
    }


def layer_view(cache: Cache, layer: Any) -> Cache:
    """One layer of the stacked cache, *without slicing it*: the stack plus the layer index.

    The attention reads K/V blocks straight out of the ``[L, B, Hkv, C, D]`` stack at ``layer``. Handing each
    scanned layer its ``[B, Hkv, C, D]`` slice instead made XLA copy the whole slice on every call (a
    dynamic-slice per layer and per K/V: on XLA:CPU, tiny with 32 sessions, 136 of the step's ~550
    thread-ms, and a cost that grew with the *allocated* cache, not the filled one)."""
    return {**cache, "layer": jnp.asarray(layer, jnp.int32)}


def _kv(cache: Cache, name: str, start: Any = 0, size: int | None = None) -> jax.Array:
    """Slots ``[start, start + size)`` of a layer's ``k`` or ``v`` as ``[B, Hkv, size, D]``; reads a
    ``layer_view`` in place at its layer, or a single layer's cache."""
    a = cache[name]
    size = _cache_len(cache) if size is None else size
    if "layer" not in cache:
        return a if size == a.shape[2] else jax.lax.dynamic_slice_in_dim(a, start, size, axis=2)
    _, b, h, _, d = a.shape
    return jax.lax.dynamic_slice(a, (cache["layer"], 0, 0, start, 0), (1, b, h, size, d))[0]


def _cache_pos(cache: Cache) -> jax.Array:
    """A layer's slot positions ``[B, C]``."""
    return cache["pos"] if "layer" not in cache else jax.lax.dynamic_index_in_dim(cache["pos"], cache["layer"], 0,
                                                                                    keepdims=False)


def _cache_len(cache: Cache) -> int:
    return cache["k"].shape[-2]


def visible_old_positions(cache_pos: jax.Array, positions: jax.Array) -> jax.Array:
    """Cache slot positions the new queries may see (older than the row's first new token), else -1."""
    big = jnp.iinfo(jnp.int32).max
    start = jnp.min(jnp.where(positions >= 0, positions, big), axis=1, keepdims=True)
    return jnp.where((cache_pos >= 0) & (cache_pos < start), cache_pos, -1)


def cache_context(cache: Cache, k: jax.Array, v: jax.Array, positions: jax.Array):
    """Keys/values ``[B, C + T, Hkv, D]`` and positions the new queries see: visible old slots, then the new
    tokens (sequence-major, as ``attend`` takes them)."""
    old_pos = visible_old_positions(_cache_pos(cache), positions)
    k_all = jnp.concatenate([jnp.swapaxes(_kv(cache, "k"), 1, 2).astype(k.dtype), k], axis=1)
    v_all = jnp.concatenate([jnp.swapaxes(_kv(cache, "v"), 1, 2).astype(v.dtype), v], axis=1)
    return k_all, v_all, jnp.concatenate([old_pos, positions.astype(jnp.int32)], axis=1)


def _grouped_queries(q: jax.Array, hkv: int) -> jax.Array:
    """``[B, T, H, D]`` -> ``[B, Hkv, G, T, D]``, scaled by 1/sqrt(D): GQA without repeating keys."""
    b, t, h, d = q.shape
    scaled = (q.astype(jnp.float32) / math.sqrt(d)).astype(q.dtype)
    return scaled.reshape(b, t, hkv, h // hkv, d).transpose(0, 2, 3, 1, 4)


def _ungroup(out: jax.Array, dtype: Any) -> jax.Array:
    """``[B, Hkv, G, T, D]`` -> ``[B, T, H, D]``."""
    b, hkv, g, t, d = out.shape
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, hkv * g, d).astype(dtype)


def dense_cached_attention(q, cache: Cache, k, v, positions, sliding_window: int = 0) -> jax.Array:
    """``attend(q, old ++ new)`` over the whole allocated cache, the reference flash-decoding is tested
    against. The scores of the two parts are concatenated (``T x (C + T)`` numbers) instead of the keys.
    Given a ``layer_view`` it slices the layer's whole K/V out of the stack, a copy: one reason flash, which
    slices only its key tiles, is the default."""
    hkv = k.shape[2]
    qg = _grouped_queries(q, hkv)
    old_pos = visible_old_positions(_cache_pos(cache), positions)
    k_old, v_old = _kv(cache, "k").astype(k.dtype), _kv(cache, "v").astype(v.dtype)
    logits = jnp.concatenate([
        jnp.einsum("bkgtd,bksd->bkgts", qg, k_old, preferred_element_type=jnp.float32),
        jnp.einsum("bkgtd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32),
    ], axis=-1)
    kv_pos = jnp.concatenate([old_pos, positions.astype(jnp.int32)], axis=1)
    probs = _masked_softmax(logits, attention_mask(positions, kv_pos, sliding_window)[:, None, None])
    c = k_old.shape[2]
    out = (jnp.einsum("bkgts,bksd->bkgtd", probs[..., :c].astype(v.dtype), v_old,
                      preferred_element_type=jnp.float32)
           + jnp.einsum("bkgts,bskd->bkgtd", probs[..., c:].astype(v.dtype), v, preferred_element_type=jnp.float32))
    return _ungroup(out, v.dtype)


def _online_softmax_update(carry, logits, mask, values, spec: str):
    """Fold one key block into the running (max, sum, weighted values) of an online softmax (fp32)."""
    m, total, acc = carry
    logits = jnp.where(mask, logits, _NEG)
    m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
    p = jnp.where(mask, jnp.exp(logits - m_new[..., None]), 0.0)
    correction = jnp.exp(m - m_new)
    acc = acc * correction[..., None] + jnp.einsum(spec, p.astype(values.dtype), values,
                                                   preferred_element_type=jnp.float32)
    return m_new, total * correction + jnp.sum(p, axis=-1), acc


DECODE_BLOCK_BYTES = 4 * 2**20
DECODE_BLOCK_SLOTS = (128, 1024)


def decode_block_size(block: int, cache: Cache) -> int:
    """Slots per flash-decoding block: ``block``, or for 0 the power of two in ``DECODE_BLOCK_SLOTS`` whose
    keys of every row take ~``DECODE_BLOCK_BYTES``: few loop trips for one session (each trip costs
    dispatch), cache-sized tiles for many; at most C. Measured on XLA:CPU (tiny): 1 session at 40 s 30 ms
    with 256-slot blocks, 22 with 1024; 32 sessions at 20 s best with 256 (512: +35%)."""
    c = _cache_len(cache)
    if block <= 0:
        b, h, _, d = cache["k"].shape[-4:]  # [(L,) B, Hkv, C, D]
        per_slot = b * h * d * cache["k"].dtype.itemsize
        lo, hi = DECODE_BLOCK_SLOTS
        block = min(hi, max(lo, 2 ** int(math.log2(max(DECODE_BLOCK_BYTES // per_slot, 1)))))
    return min(block, c)


def filled_blocks(old_pos: jax.Array, block: int) -> jax.Array:
    """Key blocks a step must read: up to the last block with a visible slot in any row (int32 scalar).

    Sessions fill slots ``0, 1, 2, ...`` (slot = pos % C), so this is ``ceil(filled / block)`` until the
    rolling cache wraps, and every block after."""
    slot = jnp.arange(old_pos.shape[-1], dtype=jnp.int32)
    last = jnp.max(jnp.where(old_pos >= 0, slot, -1))
    return (last + block) // block


def flash_cached_attention(q, cache: Cache, k, v, positions, sliding_window: int = 0, block: int = 0):
    """``dense_cached_attention`` that reads only the filled part of the cache (flash-decoding).

    Keys are visited in fixed ``block``-slot tiles by a ``while`` loop whose trip count is data
    (``filled_blocks``): one compiled program for every fill level, and a step at 1 s of context reads
    1 s of keys. The last tile is clamped to the cache end and masks the slots an earlier tile already
    covered, so any cache length works. The new tokens are one more tile. Exact up to fp32 rounding."""
    block = decode_block_size(block, cache)
    old_pos = visible_old_positions(_cache_pos(cache), positions)
    return _flash_decode(q, cache, k, v, positions, old_pos, filled_blocks(old_pos, block), sliding_window, block)


def _flash_decode(q, cache: Cache, k, v, positions, old_pos, n_blocks, sliding_window: int, block: int):
    """The block loop of ``flash_cached_attention``, given the visible old positions and the trip count."""
    b, t, h, d = q.shape
    hkv, c = k.shape[2], _cache_len(cache)
    qg = _grouped_queries(q, hkv)
    q_pos = positions.astype(jnp.int32)
    stats = jnp.full((b, hkv, h // hkv, t), _NEG, jnp.float32)
    carry = (stats, jnp.zeros_like(stats), jnp.zeros((b, hkv, h // hkv, t, d), jnp.float32))

    def body(i, carry):
        start = jnp.minimum(i * block, c - block)
        kb = _kv(cache, "k", start, block).astype(q.dtype)
        vb = _kv(cache, "v", start, block).astype(v.dtype)
        pb = jax.lax.dynamic_slice_in_dim(old_pos, start, block, axis=1)
        fresh = start + jnp.arange(block) >= i * block  # not already covered by the previous tile
        pb = jnp.where(fresh[None], pb, -1)
        logits = jnp.einsum("bkgtd,bksd->bkgts", qg, kb, preferred_element_type=jnp.float32)
        mask = attention_mask(q_pos, pb, sliding_window)[:, None, None]
        return _online_softmax_update(carry, logits, mask, vb, "bkgts,bksd->bkgtd")

    carry = jax.lax.fori_loop(0, n_blocks, body, carry)
    logits = jnp.einsum("bkgtd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
    mask = attention_mask(q_pos, q_pos, sliding_window)[:, None, None]
    _, total, acc = _online_softmax_update(carry, logits, mask, v, "bkgts,bskd->bkgtd")
    out = jnp.where(total[..., None] > 0, acc / jnp.where(total > 0, total, 1.0)[..., None], 0.0)  # no key: 0
    return _ungroup(out, v.dtype)


def auto_cached_attention(q, cache: Cache, k, v, positions, sliding_window: int = 0, block: int = 0):
    """Flash-decoding while under half the cache holds visible keys, one dense read above that, when a
    layer's whole K fits ``DECODE_BLOCK_BYTES``; flash always for a larger cache.

    Both are exact; the switch is a run-time ``lax.cond`` on the fill, so it never recompiles. Measured on
    XLA:CPU (tiny, bench stream): one session with a nearly full 40 s cache steps 8-13% faster with the
    dense read (the block loop's dispatch), but 32 sessions step 35% slower (the dense read slices the
    whole layer out of the stacked cache, a copy), hence the size rule."""
    b, h, c, d = cache["k"].shape[-4:]
    if b * h * c * d * cache["k"].dtype.itemsize > DECODE_BLOCK_BYTES:
        return flash_cached_attention(q, cache, k, v, positions, sliding_window, block)
    block = decode_block_size(block, cache)
    old_pos = visible_old_positions(_cache_pos(cache), positions)
    n_blocks = filled_blocks(old_pos, block)
    return jax.lax.cond(
        2 * n_blocks * block < old_pos.shape[-1],
        lambda: _flash_decode(q, cache, k, v, positions, old_pos, n_blocks, sliding_window, block),
        lambda: dense_cached_attention(q, cache, k, v, positions, sliding_window),
    )


def _cache_slots(positions: jax.Array, size: int) -> jax.Array:
    """Slot of each new token (``pos % C``), or ``C`` (out of bounds: dropped) for tokens not kept: only
    each row's last ``C`` valid tokens are written."""
    last = jnp.max(positions, axis=1, keepdims=True)
    keep = (positions >= 0) & (positions > last - size)
    return jnp.where(keep, positions % size, size)


def update_cache(cache: Cache, k: jax.Array, v: jax.Array, positions: jax.Array) -> Cache:
    """Scatter the new tokens into slots ``pos % C``; only each row's last ``C`` valid tokens are kept.

    Works for one layer's cache (k ``[B, Hkv, C, D]``, new k ``[B, T, Hkv, D]``) and for the stacked cache
    (k ``[L, B, Hkv, C, D]``, new k ``[L, B, T, Hkv, D]``; ``positions`` ``[B, T]`` either way).
    """
    batch, size = cache["pos"].shape[-2:]
    slot = _cache_slots(positions, size)
    rows = jnp.arange(batch)[:, None]
    pos = positions.astype(jnp.int32)
    if cache["pos"].ndim == 3:  # stacked over layers: one scatter for the whole stack, in place when donated
        pos = jnp.broadcast_to(pos, (cache["pos"].shape[0], *pos.shape))
        at_pos, at_kv = (slice(None), rows, slot), (slice(None), rows, slice(None), slot)
        # NumPy indexing: the (rows, slot) dims are split by a slice, so they lead: values are [B, T, L, Hkv, D].
        k, v = (jnp.moveaxis(a, 0, 2) for a in (k, v))
    else:
        at_pos, at_kv = (rows, slot), (rows, slice(None), slot)
    return {
        "k": cache["k"].at[at_kv].set(k.astype(cache["k"].dtype), mode="drop"),
        "v": cache["v"].at[at_kv].set(v.astype(cache["v"].dtype), mode="drop"),
        "pos": cache["pos"].at[at_pos].set(pos, mode="drop"),
    }


# ---------------------------------------------------------------------------------------------- module


class Projection(nn.Module):
    """Bias-free ``DenseGeneral``: contract the last ``num_contract`` dims of x with a kernel of logical ``axes``.

    Not ``nn.DenseGeneral`` because it initialises a flattened 2-D kernel and reshapes it; with a boxed
    (logically partitioned) initializer that applies a 3-name sharding constraint to a 2-D array, which
    fails as soon as rules and a mesh are active (flax re-traces the initializer to check shapes).
    """

    features: tuple[int, ...]
    axes: tuple[str, ...]
    num_contract: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, f = self.num_contract, len(self.features)
        init = nn.initializers.variance_scaling(
            1.0, "fan_in", "truncated_normal", in_axis=tuple(range(n)), out_axis=tuple(range(n, n + f))
        )
        kernel = self.param("kernel", with_axes(init, self.axes), (*x.shape[-n:], *self.features), jnp.float32)
        dims = ((tuple(range(x.ndim - n, x.ndim)), tuple(range(n))), ((), ()))
        return jax.lax.dot_general(jnp.asarray(x, self.dtype), kernel.astype(self.dtype), dims)


class Attention(nn.Module):
    """GQA self-attention: ``(x [B,T,D], positions [B,T], cache|None) -> (y [B,T,D], new_cache|None)``.

    Kernels: query ``[embed, heads, head_dim]``, key/value ``[embed, kv_heads, head_dim]``,
    out ``[heads, head_dim, embed]``; no biases.
    """

    config: TransformerConfig
    return_new_kv: bool = False  # with a cache: return only the new {"k", "v"} (the stack scatters them)

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, cache: Cache | None = None):
        cfg = self.config
        dtype = to_dtype(cfg.dtype)
        if cfg.num_heads % cfg.num_kv_heads:
            raise ValueError(f"num_heads ({cfg.num_heads}) must be a multiple of num_kv_heads {cfg.num_kv_heads}")

        def proj(heads: int, axis: str, name: str) -> Projection:
            return Projection((heads, cfg.head_dim), ("embed", axis, "head_dim"), dtype=dtype, name=name)

        q = apply_rope(proj(cfg.num_heads, "heads", "query")(x), positions, cfg.rope_theta)
        k = apply_rope(proj(cfg.num_kv_heads, "kv_heads", "key")(x), positions, cfg.rope_theta)
        v = proj(cfg.num_kv_heads, "kv_heads", "value")(x)
        q = constrain(q, BATCH_LEN_HEADS)
        k = constrain(k, BATCH_LEN_KV_HEADS)
        v = constrain(v, BATCH_LEN_KV_HEADS)

        if cache is None:
            out = attend(q, k, v, positions, positions, backend=cfg.attention_backend,
                         sliding_window=cfg.sliding_window, causal_block=cfg.causal_block)
            new_cache = None
        else:
            if cfg.decode_attention == "auto":
                out = auto_cached_attention(q, cache, k, v, positions, cfg.sliding_window, cfg.decode_block)
            elif cfg.decode_attention == "flash":
                out = flash_cached_attention(q, cache, k, v, positions, cfg.sliding_window, cfg.decode_block)
            elif cfg.decode_attention == "dense":
                out = dense_cached_attention(q, cache, k, v, positions, cfg.sliding_window)
            else:
                raise ValueError(f"unknown decode_attention {cfg.decode_attention!r}; expected flash or dense")
            # The stack writes every layer's new keys with one scatter into the stacked cache; a lone layer
            # returns its updated cache.
            if not self.return_new_kv and "layer" in cache:
                raise ValueError("a layer_view of the stacked cache is written by the stack: use return_new_kv")
            new_cache = {"k": k, "v": v} if self.return_new_kv else update_cache(cache, k, v, positions)
        out = constrain(out, BATCH_LEN_HEADS)
        out_axes = ("heads", "head_dim", "embed")
        out_proj = Projection((x.shape[-1],), out_axes, num_contract=2, dtype=dtype, name="out")
        return out_proj(out), new_cache

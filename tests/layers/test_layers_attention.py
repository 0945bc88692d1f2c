"""Attention math: GQA dot vs naive MHA, masks, backend choice, and the KV cache vs the full forward."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interaction_jax.layers import Transformer, attend, attention_mask, init_cache, resolve_backend


def _naive_mha(q, k, v, q_pos, kv_pos, window):
    """Repeat kv heads up to the query heads and loop over (batch, head, query): the obvious reference."""
    b, t, h, d = q.shape
    g = h // k.shape[2]
    k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    out = np.zeros_like(q)
    for bi in range(b):
        for hi in range(h):
            for ti in range(t):
                ok = (kv_pos[bi] >= 0) & (kv_pos[bi] <= q_pos[bi, ti])
                if window:
                    ok &= q_pos[bi, ti] - kv_pos[bi] < window
                if not ok.any():
                    continue
                s = k[bi, :, hi] @ q[bi, ti, hi] / np.sqrt(d)
                s = np.where(ok, s, -np.inf)
                p = np.exp(s - s.max())
                out[bi, ti, hi] = (p / p.sum()) @ v[bi, :, hi]
    return out


@pytest.mark.parametrize("window", [0, 3])
def test_gqa_dot_matches_naive_repeated_kv(window):
    rng = np.random.default_rng(0)
    q = rng.normal(size=(2, 6, 6, 4)).astype(np.float32)
    k, v = rng.normal(size=(2, 2, 9, 2, 4)).astype(np.float32)
    q_pos = np.array([[3, 4, 5, 6, 7, 8], [10, 11, 12, 13, 14, 15]], np.int32)
    kv_pos = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8], [-1, 7, 8, 9, 10, 11, 12, 13, -1]], np.int32)
    out = attend(q, k, v, q_pos, kv_pos, backend="dot", sliding_window=window)
    np.testing.assert_allclose(out, _naive_mha(q, k, v, q_pos, kv_pos, window), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window,block", [(0, 4), (5, 4), (0, 3), (7, 5)])
def test_causal_block_skipping_equals_dense_dot_and_its_gradient(window, block):
    """The training path skips future key blocks; values and gradients must equal the dense masked softmax."""
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.normal(size=(2, 13, 4, 8)), jnp.float32)
    k, v = jnp.asarray(rng.normal(size=(2, 2, 13, 2, 8)), jnp.float32)
    pos = jnp.broadcast_to(jnp.arange(13, dtype=jnp.int32), (2, 13)).at[1, 11:].set(-1)  # padded tail

    def loss(q, k, v, causal_block):
        out = attend(q, k, v, pos, pos, backend="dot", sliding_window=window, causal_block=causal_block)
        return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape))), out

    (_, dense), g_dense = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v, 0)
    (_, blocked), g_blocked = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v, block)
    np.testing.assert_allclose(blocked, dense, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dense, _naive_mha(*map(np.asarray, (q, k, v, pos, pos)), window), rtol=1e-5, atol=1e-5)
    for a, b in zip(g_blocked, g_dense, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_query_without_visible_keys_outputs_zero_not_nan():
    q = jnp.ones((1, 2, 2, 4))
    k = v = jnp.ones((1, 3, 1, 4))
    out = attend(q, k, v, jnp.array([[-1, 0]]), jnp.array([[-1, 1, 2]]))
    assert np.all(np.isfinite(out)) and np.all(np.asarray(out) == 0)


def test_attention_mask_window():
    m = np.asarray(attention_mask(jnp.arange(5)[None], jnp.arange(5)[None], 2))[0]
    assert m.sum() == 9 and m[4, 3] and not m[4, 2] and not m[2, 3]


def test_auto_backend_never_picks_a_kernel_on_cpu():
    assert jax.default_backend() == "cpu"
    for dtype in (jnp.float32, jnp.bfloat16):
        for t in (128, 256, 100):
            assert resolve_backend("auto", t, t, dtype) == "dot"
    assert resolve_backend("auto", 256, 256, jnp.bfloat16, platform="gpu") == "cudnn"
    assert resolve_backend("auto", 256, 256, jnp.float32, platform="gpu") == "dot"
    assert resolve_backend("auto", 256, 256, jnp.float32, platform="tpu") == "splash"
    assert resolve_backend("auto", 1, 257, jnp.bfloat16, platform="tpu") == "dot"  # decode with cache
    assert resolve_backend("auto", 200, 200, jnp.bfloat16, platform="gpu") == "dot"
    with pytest.raises(ValueError, match="GPU"):
        x = jnp.ones((1, 128, 2, 8), jnp.bfloat16)
        attend(x, x, x, None, None, backend="cudnn")


@pytest.mark.parametrize("window", [0, 5])
def test_cudnn_call_conventions_match_dot(window):
    """The cudnn backend's exact call (causal flag, window tuple, scale) run with XLA's implementation on CPU."""
    from interaction_jax.layers.attention import _cudnn_attention

    rng = np.random.default_rng(6)
    q = rng.normal(size=(2, 12, 4, 8)).astype(np.float32)
    k, v = rng.normal(size=(2, 2, 12, 2, 8)).astype(np.float32)
    pos = np.broadcast_to(np.arange(12, dtype=np.int32), (2, 12))
    ref = attend(q, k, v, pos, pos, backend="dot", sliding_window=window)
    out = _cudnn_attention(q, k, v, window, implementation="xla")
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- KV cache

B, T = 2, 16
OFFSETS = np.array([0, 5], np.int32)  # the two rows live at different absolute positions


_FULL: dict = {}  # (scan, window) -> full-forward output; cases share it to save compilations


def _full(jit, cfg, params, x, pos):
    key = (cfg.scan_layers, cfg.sliding_window)
    if key not in _FULL:
        _FULL[key] = np.asarray(jit(Transformer(cfg).apply)({"params": params}, x, pos)[0])
    return _FULL[key]


def _run_chunks(jit, cfg, params, x, pos, schedules, cache_len):
    """Feed row r its tokens in chunks ``schedules[r]``; rows are padded to one static width with position -1.

    Also checks that a row with nothing to add (chunk size 0) leaves its cache untouched.
    """
    b, t, d = x.shape
    cache = init_cache(cfg, b, cache_len, jnp.float32)
    out = np.full((b, t, d), np.nan, np.float32)
    cursor = [0] * b
    model = Transformer(cfg)
    step = jit(lambda p, xc, pc, c: model.apply({"params": p}, xc, pc, cache=c))
    width = max(max(s) for s in schedules)  # one static step shape -> one compilation
    for sizes in zip(*schedules, strict=True):
        xc = np.zeros((b, width, d), np.float32)
        pc = np.full((b, width), -1, np.int32)
        for r, n in enumerate(sizes):
            xc[r, :n] = x[r, cursor[r] : cursor[r] + n]
            pc[r, :n] = pos[r, cursor[r] : cursor[r] + n]
        y, new_cache, _ = step(params, xc, pc, cache)
        for r, n in enumerate(sizes):
            out[r, cursor[r] : cursor[r] + n] = np.asarray(y[r, :n])
            cursor[r] += n
            if n == 0:
                for key in cache:
                    np.testing.assert_array_equal(new_cache[key][:, r], cache[key][:, r])
        cache = new_cache
    assert cursor == [t] * b
    return out, cache


# (scan, sliding window, cache length, per-row chunk schedules, expect equal)
CASES = {
    # Uneven chunks, different per row, with steps where a row adds nothing.
    "uneven_chunks": (True, 0, 24, [[3, 5, 1, 0, 7], [1, 6, 4, 5, 0]], True),
    "decode_unrolled": (False, 0, 16, [[1] * 16, [1] * 16], True),
    "window_full_cache": (True, 5, 16, [[2, 7, 7], [5, 5, 6]], True),
    # window 5 needs the 4 previous keys: a 4-slot rolling cache suffices, even for chunks longer than it.
    "window_rolling_cache": (True, 5, 4, [[3, 6, 1, 6], [1, 1, 7, 7]], True),
    # ...and a 3-slot one must not (shows the comparison can fail).
    "window_cache_too_small": (True, 5, 3, [[4, 4, 4, 4], [4, 4, 4, 4]], False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_chunked_cache_equals_full_forward(make_cfg, make_params, fast_jit, case):
    scan, window, cache_len, schedules, expect_equal = CASES[case]
    cfg = make_cfg(scan_layers=scan, sliding_window=window)
    x = np.asarray(jax.random.normal(jax.random.key(1), (B, T, cfg.d_model)))
    pos = OFFSETS[:, None] + np.arange(T, dtype=np.int32)[None]
    params = make_params(Transformer(cfg), x, pos)
    full = _full(fast_jit, cfg, params, x, pos)
    out, cache = _run_chunks(fast_jit, cfg, params, x, pos, schedules, cache_len)
    if not expect_equal:
        assert np.abs(out - full).max() > 1e-3
        return
    np.testing.assert_allclose(out, full, atol=1e-5, rtol=1e-5)
    assert cache["k"].shape == (cfg.num_layers, B, cfg.num_kv_heads, cache_len, cfg.head_dim)
    held = np.sort(np.where(cache["pos"][0] >= 0, cache["pos"][0], 10**6), axis=-1)[:, : min(cache_len, T)]
    np.testing.assert_array_equal(held, pos[:, -min(cache_len, T) :])  # each row holds its last C positions


def test_cache_logical_axes_cover_cache(make_cfg):
    from interaction_jax.layers import cache_logical_axes

    cache = init_cache(make_cfg(), 2, 4)
    axes = cache_logical_axes()
    assert set(axes) == set(cache) and all(len(axes[k]) == cache[k].ndim for k in cache)
    assert nn.logical_to_mesh_axes(axes["k"], [("act_batch", "data")])[1] == "data"


def test_rewriting_positions_replaces_stale_keys(make_cfg, make_params, fast_jit):
    """Rollback: re-sending positions 3..5 with new tokens must hide the old keys at 3..5, not duplicate them."""
    from interaction_jax.layers import Attention

    cfg = make_cfg()
    attn = Attention(cfg)
    rng = np.random.default_rng(5)
    xa, xb = rng.normal(size=(1, 6, cfg.d_model)), rng.normal(size=(1, 3, cfg.d_model))
    pos = np.arange(6, dtype=np.int32)[None]
    params = make_params(attn, xa, pos)
    apply = fast_jit(lambda x, p, c: attn.apply({"params": params}, x, p, c))
    ref, _ = apply(np.concatenate([xa[:, :3], xb], 1), pos, None)
    cache = jax.tree.map(lambda c: c[0], init_cache(cfg, 1, 8, jnp.float32))
    _, cache = apply(xa, pos, cache)
    out, cache = apply(xb, pos[:, 3:], cache)
    np.testing.assert_allclose(out, ref[:, 3:], atol=1e-5, rtol=1e-5)
    assert sorted(np.asarray(cache["pos"][0])) == [-1, -1, 0, 1, 2, 3, 4, 5]


# ---------------------------------------------------------------------------------------------- flash decoding


def _filled_cache(rng, b, hkv, d, size, fill, lag):
    """A cache of ``size`` slots that row 0 filled with positions 0..fill-1 and row 1 with 0..fill-1-lag."""
    from interaction_jax.layers import update_cache

    cache = {"k": jnp.zeros((b, hkv, size, d)), "v": jnp.zeros((b, hkv, size, d)),
             "pos": jnp.full((b, size), -1, jnp.int32)}
    for start in range(0, fill, 7):
        p = np.arange(start, min(start + 7, fill))
        pos = np.stack([p, np.where(p - lag >= 0, p - lag, -1)]).astype(np.int32)
        kv = rng.normal(size=(2, b, len(p), hkv, d)).astype(np.float32)
        cache = update_cache(cache, jnp.asarray(kv[0]), jnp.asarray(kv[1]), jnp.asarray(pos))
    return cache


# (sliding window, cache slots, filled positions, new tokens, block): empty, partial blocks, a clamped last
# tile (37 % 8 != 0), a full cache, and rolling caches that wrapped around once and three times.
FLASH_CASES = [(0, 37, 0, 3, 8), (0, 37, 5, 3, 8), (0, 37, 20, 1, 8), (0, 37, 34, 3, 8), (0, 37, 34, 12, 64),
               (5, 37, 60, 3, 8), (12, 37, 120, 5, 16), (30, 32, 75, 2, 8)]


@pytest.mark.parametrize("window,size,fill,t,block", FLASH_CASES)
def test_flash_decoding_equals_dense_cached_attention(window, size, fill, t, block):
    from interaction_jax.layers import auto_cached_attention, dense_cached_attention, flash_cached_attention

    rng = np.random.default_rng(fill + t)
    b, h, hkv, d, lag = 2, 4, 2, 16, 3
    cache = _filled_cache(rng, b, hkv, d, size, fill, lag)
    q = jnp.asarray(rng.normal(size=(b, t, h, d)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(b, t, hkv, d)), jnp.float32) for _ in range(2))
    pos = np.stack([fill + np.arange(t), fill - lag + np.arange(t)]).astype(np.int32)
    pos[1, -1] = -1  # a padded query: no new token in that slot
    flash = jax.jit(flash_cached_attention, static_argnums=(5, 6))(q, cache, k, v, jnp.asarray(pos), window, block)
    dense = dense_cached_attention(q, cache, k, v, jnp.asarray(pos), window)
    np.testing.assert_allclose(flash, dense, atol=1e-5, rtol=1e-5)
    auto = jax.jit(auto_cached_attention, static_argnums=(5, 6))(q, cache, k, v, jnp.asarray(pos), window, block)
    np.testing.assert_allclose(auto, dense, atol=1e-5, rtol=1e-5)  # whichever branch the fill picks
    assert np.all(np.asarray(flash)[1, -1] == 0)  # a query with no visible key gives zeros, as dense does
    # The transformer hands each layer the whole stack and its index (layer_view): the same numbers.
    from interaction_jax.layers.attention import layer_view

    other = jax.tree.map(lambda a: jnp.where(a == -1, a, a + 1) if a.dtype == jnp.int32 else a + 1.0, cache)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), other, cache, other)
    for fn in (flash_cached_attention, auto_cached_attention, dense_cached_attention):
        args = (window, block) if fn is not dense_cached_attention else (window,)
        viewed = jax.jit(lambda layer, fn=fn, args=args: fn(q, layer_view(stacked, layer), k, v, jnp.asarray(pos),
                                                            *args))(1)
        np.testing.assert_allclose(viewed, dense, atol=1e-5, rtol=1e-5)


def test_decode_block_follows_the_batch():
    """0 picks ~4 MiB of keys per block over all rows: long blocks for one session (few loop trips), short
    ones for many (tiles that stay in cache); always a power of two in range and never past the cache."""
    from interaction_jax.layers.attention import DECODE_BLOCK_SLOTS, decode_block_size

    def size(batch, cache_len, block=0):
        return decode_block_size(block, {"k": jax.ShapeDtypeStruct((5, batch, 2, cache_len, 64), jnp.float32)})

    lo, hi = DECODE_BLOCK_SLOTS
    assert size(1, 4000) == hi and size(32, 4000) == 256 and size(16, 4000) == 512 and size(4096, 4000) == lo
    assert size(1, 300) == 300  # never longer than the cache

    # "auto" may switch to the dense read (a whole-layer slice of the stack) only for a small cache
    from interaction_jax.layers import auto_cached_attention

    def has_switch(cache_len, batch):
        q = jnp.zeros((batch, 1, 4, 64))
        kv = jnp.zeros((batch, 1, 2, 64))
        cache = {"k": jnp.zeros((batch, 2, cache_len, 64)), "v": jnp.zeros((batch, 2, cache_len, 64)),
                 "pos": jnp.full((batch, cache_len), -1, jnp.int32)}
        jaxpr = jax.make_jaxpr(lambda c: auto_cached_attention(q, c, kv, kv, jnp.zeros((batch, 1), jnp.int32)))
        return " cond[" in str(jaxpr(cache))  # the lax.cond primitive (a while loop prints cond_jaxpr)

    assert has_switch(3400, 1) and not has_switch(3400, 32)
    assert size(32, 4000, block=64) == 64  # an explicit block is kept


def test_flash_decoding_reads_only_the_filled_blocks():
    """The trip count follows the fill (one compiled program), and reaches every block once wrapped."""
    from interaction_jax.layers import filled_blocks

    count = jax.jit(filled_blocks, static_argnums=1)
    pos = np.full((2, 100), -1, np.int32)
    assert int(count(pos, 16)) == 0
    pos[0, :17] = np.arange(17)
    assert int(count(pos, 16)) == 2
    pos[1, :40] = np.arange(40)
    assert int(count(pos, 16)) == 3  # the fullest row decides
    pos[0] = np.arange(100, 200)  # wrapped
    assert int(count(pos, 16)) == 7


def test_bf16_cache_stays_close_to_fp32(make_cfg, make_params, fast_jit):
    """A bf16 cache halves the bytes a decode step reads; its outputs stay within bf16 rounding of fp32."""
    import dataclasses

    cfg = make_cfg()
    x = np.asarray(jax.random.normal(jax.random.key(3), (1, 12, cfg.d_model)))
    pos = np.arange(12, dtype=np.int32)[None]
    params = make_params(Transformer(cfg), x, pos)
    outs = {}
    for dtype in ("float32", "bfloat16"):
        c = dataclasses.replace(cfg, cache_dtype=dtype)
        cache = init_cache(c, 1, 16)
        assert cache["k"].dtype == jnp.dtype(dtype)
        step = fast_jit(lambda p, xc, pc, cc, c=c: Transformer(c).apply({"params": p}, xc, pc, cache=cc))
        _, cache, _ = step(params, x[:, :8], pos[:, :8], cache)
        outs[dtype], _, _ = step(params, x[:, 8:], pos[:, 8:], cache)
    err = np.abs(np.asarray(outs["bfloat16"]) - np.asarray(outs["float32"])).max()
    assert 0 < err < 0.05

"""adaLN MLP flow-matching head: turns a hidden state into one k×80 mel block (DESIGN §3, AUDIO_OUT).

The transformer's hidden state at an AUDIO_OUT slot is a *condition*, not a prediction: a small MLP learns
the velocity field of a rectified flow from N(0, I) to the mel block given that condition (MAR's DiffLoss
MLP, Pocket-TTS style), so the model can express a whole distribution of mel blocks (breath, pitch jitter)
instead of regressing to their blurry mean.

- Rectified flow, σ_min = 0: x_t = (1 − t)·x0 + t·x1, target velocity x1 − x0, t ~ U(0, 1).
- **x-prediction** (default, ``prediction="x"``): the network outputs the clean block x̂1 and the velocity
  is derived, v = (x̂1 − x_t) / (1 − t). The x_t term is an identity skip, so the field is full-rank by
  construction even when the MLP is narrower than its output (tiny: width 256, 4×80 = 320 values). A
  velocity-predicting MLP that narrow cannot see or cancel ``out_dim − width`` noise directions: that put
  a floor of 64/320 = 0.2 under tiny's CFM loss and left σ ≈ 0.47 of noise on sampled silence.
  ``prediction="velocity"`` (the plain MAR head) is kept for ablations and needs ``width ≥ out_dim``.
  The loss stays the velocity MSE (x-prediction, v-loss); 1 − t is floored at ``min_one_minus_t``.
- Each condition is paired with ``noise_multiplier`` independent (x0, t) draws: the head is cheap next to
  the transformer, so extra noise samples lower the loss variance almost for free.
- Conditioning is adaLN: the time embedding plus the projected condition produce per-block shift / scale /
  gate. The adaLN and output layers start at zero, so the head starts as the zero velocity field and the
  residual blocks start as identities, which keeps early training stable (DiT's adaLN-Zero).
- Classifier-free guidance: a learned ``null_cond`` vector replaces the condition with probability
  ``cfg_dropout`` during training; sampling with ``cfg_scale`` s uses v_null + s·(v_cond − v_null).
- Sampling integrates the ODE from t = 0 to 1 with ``steps`` uniform Euler steps (default 8, DESIGN §3).
  Note: uniform Euler at 8 steps shrinks the sample variance of a Gaussian target by ~28% even with the
  exact velocity field (the marginal flow is curved when x0 and x1 are independent). ``solver="midpoint"``
  (2 evaluations per step) removes that bias at 8 steps; see tests/test_flow_head.py.

``FlowHead`` methods (``velocity``, ``loss``, ``sample``, ``sample_with_noise``) work inside a parent module;
the module-level ``init`` / ``loss`` / ``sample`` are the same computations as pure functions of params.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from interaction_jax.config import FlowHeadConfig

Dtype = Any
Solver = Literal["euler", "midpoint"]


def _dense(features: int, dtype: Dtype, name: str, *, zero: bool = False, axes: tuple = (None, "embed")) -> nn.Dense:
    kernel_init = nn.initializers.zeros_init() if zero else nn.initializers.xavier_uniform()
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(kernel_init, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)),
        name=name,
    )


def _plain_norm(x: jax.Array) -> jax.Array:
    """LayerNorm without affine params, in fp32: adaLN supplies the scale and shift instead."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-6)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Sinusoidal features of t ∈ [0, 1] (scaled by 1000 so the fastest frequencies resolve fine steps)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = (1000.0 * t.astype(jnp.float32))[..., None] * freqs
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class _AdaLNBlock(nn.Module):
    """LN → modulate(shift, scale) → MLP(SiLU) → residual scaled by a gate; shift/scale/gate from the condition."""

    width: int
    dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array, c_act: jax.Array) -> jax.Array:
        mod = _dense(3 * self.width, self.dtype, "adaln", zero=True)(c_act).astype(jnp.float32)
        shift, scale, gate = jnp.split(mod, 3, axis=-1)
        h = _plain_norm(x) * (1.0 + scale) + shift
        h = _dense(self.width, self.dtype, "mlp_in")(h.astype(self.dtype))
        h = _dense(self.width, self.dtype, "mlp_out")(nn.silu(h))
        return x + gate * h.astype(jnp.float32)


def check_full_rank(config: FlowHeadConfig, out_dim: int) -> None:
    """Refuse a head that cannot represent its own output (a velocity head narrower than the block)."""
    if config.prediction == "velocity" and config.width < out_dim:
        raise ValueError(
            f"flow head: prediction='velocity' with width={config.width} < out_dim={out_dim} is rank-deficient "
            f"({out_dim - config.width} noise directions can never be cancelled); use prediction='x' or "
            f"width >= {out_dim}"
        )
    if config.prediction not in ("x", "velocity"):
        raise ValueError(f"flow head: unknown prediction {config.prediction!r}; use 'x' or 'velocity'")


class FlowHead(nn.Module):
    """Velocity field v(x_t, t | cond) for ``out_dim``-dim targets (k·80 mel values), conditioned on any width.

    Param tree: ``input_proj``, ``time_in``, ``time_out``, ``cond_proj`` (Dense), ``block{i}`` {``adaln``,
    ``mlp_in``, ``mlp_out``}, ``final_adaln``, ``output`` (Dense, zero-init), ``null_cond`` [cond_dim].
    The residual stream stays fp32; Dense layers compute in ``dtype``.
    """

    config: FlowHeadConfig
    out_dim: int
    dtype: Dtype = jnp.float32
    time_freq_dim: int = 256

    def setup(self) -> None:
        check_full_rank(self.config, self.out_dim)
        width = self.config.width
        self.input_proj = _dense(width, self.dtype, "input_proj")
        self.time_in = _dense(width, self.dtype, "time_in")
        self.time_out = _dense(width, self.dtype, "time_out")
        self.cond_proj = _dense(width, self.dtype, "cond_proj")
        self.blocks = [_AdaLNBlock(width, self.dtype, name=f"block{i}") for i in range(self.config.depth)]
        self.final_adaln = _dense(2 * width, self.dtype, "final_adaln", zero=True)
        self.output = _dense(self.out_dim, self.dtype, "output", zero=True, axes=("embed", None))

    @nn.compact
    def null_cond(self, cond_dim: int) -> jax.Array:
        """The learned "no condition" vector [cond_dim] (created lazily: its width is the caller's)."""
        init = nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), ("embed",))
        return self.param("null_cond", init, (cond_dim,), jnp.float32)

    def __call__(self, x_t: jax.Array, t: jax.Array, cond: jax.Array) -> jax.Array:
        """``velocity`` that also touches ``null_cond``, so a plain ``init`` creates the whole param tree."""
        self.null_cond(cond.shape[-1])
        return self.velocity(x_t, t, cond)

    def velocity(self, x_t: jax.Array, t: jax.Array, cond: jax.Array) -> jax.Array:
        """v(x_t, t | cond): x_t [..., out_dim], t broadcastable to [...], cond [..., C] → fp32 [..., out_dim]."""
        if x_t.shape[-1] != self.out_dim:
            raise ValueError(f"FlowHead: x_t has {x_t.shape[-1]} features, expected out_dim={self.out_dim}")
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x_t.shape[:-1])
        temb = timestep_embedding(t, self.time_freq_dim).astype(self.dtype)
        temb = self.time_out(nn.silu(self.time_in(temb)))
        c = temb.astype(jnp.float32) + self.cond_proj(cond.astype(self.dtype)).astype(jnp.float32)
        c_act = nn.silu(c).astype(self.dtype)
        x = self.input_proj(x_t.astype(self.dtype)).astype(jnp.float32)
        for block in self.blocks:
            x = block(x, c_act)
        shift, scale = jnp.split(self.final_adaln(c_act).astype(jnp.float32), 2, axis=-1)
        x = _plain_norm(x) * (1.0 + scale) + shift
        out = self.output(x.astype(self.dtype)).astype(jnp.float32)
        if self.config.prediction == "velocity":
            return out
        # x-prediction: out is the clean block; the identity path through x_t makes the field full-rank.
        one_minus_t = jnp.maximum(1.0 - t, self.config.min_one_minus_t)[..., None]
        return (out - x_t.astype(jnp.float32)) / one_minus_t

    def loss(
        self,
        cond: jax.Array,
        target: jax.Array,
        rng: jax.Array,
        weights: jax.Array | None = None,
        *,
        train: bool = True,
        per_row: bool = False,
    ) -> jax.Array:
        """Rectified-flow CFM loss, a fp32 scalar: sum(w · mse) / max(sum(w), 1) over the rows of ``cond``.

        cond [..., C], target [..., out_dim], weights [...] (a per-row loss mask; default all ones). The
        per-row mse is averaged over out_dim and over the ``noise_multiplier`` (x0, t) draws. With ``train``
        the condition is swapped for ``null_cond`` with probability ``cfg_dropout`` per draw. ``per_row``
        returns the unweighted per-row mse [n] instead (for per-kind metrics and custom weighting).
        """
        lead = cond.shape[:-1]
        if target.shape != (*lead, self.out_dim):
            raise ValueError(
                f"FlowHead.loss: target {target.shape} must be {(*lead, self.out_dim)} for cond {cond.shape}"
            )
        n, reps = math.prod(lead), self.config.noise_multiplier
        cond = cond.reshape(n, cond.shape[-1])
        x1 = jnp.repeat(target.reshape(n, self.out_dim).astype(jnp.float32), reps, axis=0)
        cond = jnp.repeat(cond, reps, axis=0)
        # One uniform draw, split into columns (noise | t | dropout), instead of three jax.random calls: each
        # call lowers to its own threefry expansion, which dominates this small head's compile time on CPU.
        # x0 uses the same inverse-CDF transform as jax.random.normal.
        low = float(np.nextafter(np.float32(-1.0), np.float32(0.0)))
        u = jax.random.uniform(rng, (n * reps, self.out_dim + 2), jnp.float32, minval=low, maxval=1.0)
        x0 = np.sqrt(2.0).astype(np.float32) * jax.lax.erf_inv(u[:, : self.out_dim])
        t = 0.5 * (u[:, self.out_dim] + 1.0)  # U(0, 1)
        null = self.null_cond(cond.shape[-1])
        if train and self.config.cfg_dropout > 0:
            drop = 0.5 * (u[:, self.out_dim + 1 :] + 1.0) < self.config.cfg_dropout
            cond = jnp.where(drop, null.astype(cond.dtype), cond)
        x_t = (1.0 - t[:, None]) * x0 + t[:, None] * x1
        pred = self.velocity(x_t, t, cond)
        mse = jnp.mean(jnp.square(pred - (x1 - x0)), axis=-1).reshape(n, reps).mean(axis=1)
        if per_row:
            return mse
        w = jnp.ones((n,), jnp.float32) if weights is None else weights.reshape(n).astype(jnp.float32)
        return jnp.sum(w * mse) / jnp.maximum(jnp.sum(w), 1.0)

    def sample(
        self,
        cond: jax.Array,
        rng: jax.Array,
        steps: int = 8,
        cfg_scale: float | jax.Array = 1.0,
        temperature: float | jax.Array = 1.0,
        solver: Solver = "euler",
    ) -> jax.Array:
        """Draw one target per condition: cond [..., C] → fp32 [..., out_dim], with x0 = temperature·N(0, I)."""
        noise = jax.random.normal(rng, (*cond.shape[:-1], self.out_dim), jnp.float32)
        return self.sample_with_noise(cond, temperature * noise, steps, cfg_scale, solver)

    def sample_with_noise(
        self,
        cond: jax.Array,
        noise: jax.Array,
        steps: int = 8,
        cfg_scale: float | jax.Array = 1.0,
        solver: Solver = "euler",
    ) -> jax.Array:
        """Integrate the flow from explicit initial ``noise`` [..., out_dim] (already temperature-scaled).

        Taking the noise as an argument lets the serving engine draw it per session (so a session's samples do
        not depend on which other sessions share its batch) and replay a sample exactly. ``steps`` is static.
        With ``cfg_scale`` ≠ 1, cond and null rows go through one batched velocity call per step. The
        single-pass shortcut is chosen at trace time, so it needs ``cfg_scale`` as a Python number (mark it
        static under ``jax.jit``); a traced scale always takes the guided path, which gives the same result
        at 1.0 (up to rounding) for twice the compute.
        """
        if solver not in ("euler", "midpoint"):
            raise ValueError(f"FlowHead: unknown solver {solver!r}; use 'euler' or 'midpoint'")
        if steps < 1:
            raise ValueError(f"FlowHead: steps must be >= 1, got {steps}")
        lead = cond.shape[:-1]
        if noise.shape != (*lead, self.out_dim):
            raise ValueError(f"FlowHead: noise {noise.shape} must be {(*lead, self.out_dim)} for cond {cond.shape}")
        n = math.prod(lead)
        cond = cond.reshape(n, cond.shape[-1])
        x = noise.reshape(n, self.out_dim).astype(jnp.float32)
        null = self.null_cond(cond.shape[-1])
        guided = not (isinstance(cfg_scale, int | float) and cfg_scale == 1.0)
        if guided:
            cond = jnp.concatenate([cond, jnp.broadcast_to(null.astype(cond.dtype), cond.shape)], axis=0)

        def field(mdl: FlowHead, x: jax.Array, t: jax.Array) -> jax.Array:
            if not guided:
                return mdl.velocity(x, t, cond)
            v = mdl.velocity(jnp.concatenate([x, x], axis=0), t, cond)
            v_cond, v_null = v[:n], v[n:]
            return v_null + cfg_scale * (v_cond - v_null)

        dt = 1.0 / steps

        def body(mdl: FlowHead, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
            i, x = carry
            t = i.astype(jnp.float32) * dt
            if solver == "euler":
                x = x + dt * field(mdl, x, t)
            else:
                x_mid = x + (0.5 * dt) * field(mdl, x, t)
                x = x + dt * field(mdl, x_mid, t + 0.5 * dt)
            return i + 1, x

        carry = (jnp.zeros((), jnp.int32), x)
        if self.is_mutable_collection("params"):
            # Inside init: params are still being created, which a lifted loop cannot do. Unroll instead.
            for _ in range(steps):
                carry = body(self, carry)
        else:
            carry = nn.while_loop(lambda _, c: c[0] < steps, body, self, carry)
        return carry[1].reshape(*lead, self.out_dim)


# ----------------------------------------------------------------------------------------------------------
# Pure-function form
# ----------------------------------------------------------------------------------------------------------


def init(
    rng: jax.Array, config: FlowHeadConfig, out_dim: int, cond_dim: int, dtype: Dtype = jnp.float32
) -> dict[str, Any]:
    """Plain (unboxed) fp32 params of a ``FlowHead`` for conditions of width ``cond_dim``."""
    head = FlowHead(config, out_dim, dtype)
    dummy = (jnp.zeros((1, out_dim)), jnp.zeros((1,)), jnp.zeros((1, cond_dim)))
    # jit: one compile instead of one per initializer op in eager mode.
    variables = jax.jit(head.init)(rng, *dummy)
    return nn.meta.unbox(variables["params"])


def velocity(
    params: dict[str, Any],
    x_t: jax.Array,
    t: jax.Array,
    cond: jax.Array,
    *,
    config: FlowHeadConfig,
    out_dim: int,
    dtype: Dtype = jnp.float32,
) -> jax.Array:
    """Pure ``FlowHead.velocity``: the field itself, for custom solvers or inspection."""
    return FlowHead(config, out_dim, dtype).apply({"params": params}, x_t, t, cond, method=FlowHead.velocity)


def loss(
    params: dict[str, Any],
    cond: jax.Array,
    target: jax.Array,
    rng: jax.Array,
    *,
    config: FlowHeadConfig,
    out_dim: int,
    weights: jax.Array | None = None,
    train: bool = True,
    per_row: bool = False,
    dtype: Dtype = jnp.float32,
) -> jax.Array:
    """Pure ``FlowHead.loss``; differentiable in ``params`` and ``cond``."""
    head = FlowHead(config, out_dim, dtype)
    return head.apply({"params": params}, cond, target, rng, weights, train=train, per_row=per_row,
                      method=FlowHead.loss)


def sample(
    params: dict[str, Any],
    cond: jax.Array,
    rng: jax.Array,
    *,
    config: FlowHeadConfig,
    out_dim: int,
    steps: int = 8,
    cfg_scale: float | jax.Array = 1.0,
    temperature: float | jax.Array = 1.0,
    solver: Solver = "euler",
    dtype: Dtype = jnp.float32,
) -> jax.Array:
    """Pure ``FlowHead.sample``. Under ``jax.jit``, mark ``steps`` static (and ``cfg_scale``, to skip the null pass)."""
    head = FlowHead(config, out_dim, dtype)
    return head.apply({"params": params}, cond, rng, steps, cfg_scale, temperature, solver, method=FlowHead.sample)


def sample_with_noise(
    params: dict[str, Any],
    cond: jax.Array,
    noise: jax.Array,
    *,
    config: FlowHeadConfig,
    out_dim: int,
    steps: int = 8,
    cfg_scale: float | jax.Array = 1.0,
    solver: Solver = "euler",
    dtype: Dtype = jnp.float32,
) -> jax.Array:
    """Pure ``FlowHead.sample_with_noise``: reproducible sampling from caller-drawn initial noise."""
    head = FlowHead(config, out_dim, dtype)
    return head.apply({"params": params}, cond, noise, steps, cfg_scale, solver, method=FlowHead.sample_with_noise)

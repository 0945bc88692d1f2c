"""One readable training loop: sharded jit step, optax AdamW, orbax resume, metrics, periodic eval.

    python -m interaction_jax train --config configs/tiny.py --workdir runs/tiny [--set train.steps=100]

Exactness: the per-step RNG is ``fold_in(seed, step)`` and the data iterator state is saved with every
checkpoint, so a run killed at any point and resumed reproduces the uninterrupted run bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from interaction_jax import flops, paths, perf, sharding
from interaction_jax.checkpoint import Checkpointer, CheckpointError, config_differences, load_run_config
from interaction_jax.config import Config, TrainConfig, dumps
from interaction_jax.data import pipeline
from interaction_jax.model import InteractionModel


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=max(cfg.warmup_steps, 1),
        decay_steps=max(cfg.steps, cfg.warmup_steps + 1), end_value=cfg.learning_rate * cfg.min_lr_ratio,
    )


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    tx = optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay),
    )
    return optax.MultiSteps(tx, every_k_schedule=cfg.grad_accum) if cfg.grad_accum > 1 else tx


class Trainer:
    """Holds the jitted functions and shardings for one (config, mesh); no hidden global state."""

    def __init__(self, config: Config, mesh: jax.sharding.Mesh):
        self.config, self.mesh = config, mesh
        self.model = InteractionModel.from_config(config)
        self.tx = make_optimizer(config.train)
        self.schedule = learning_rate_schedule(config.train)
        spec = pipeline_batch_spec(config)
        self.batch_sharding = sharding.batch_sharding(mesh)
        boxed = jax.eval_shape(self._init_boxed, jax.random.key(0))
        self.state_sharding = sharding.tree_shardings(boxed, mesh)
        self.abstract_state = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.unbox(boxed), self.state_sharding
        )
        self.batch_spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=self.batch_sharding)
                           for k, v in spec.items()}
        with self.activate():
            self._init = jax.jit(lambda rng: nn.unbox(self._init_boxed(rng)), out_shardings=self.state_sharding)
            self.step_fn = jax.jit(
                self._train_step,
                in_shardings=(self.state_sharding, self.batch_sharding),
                out_shardings=(self.state_sharding, sharding.replicated(mesh)),
                donate_argnums=(0,),
            )
            self.eval_loss = jax.jit(self._eval_loss, in_shardings=(self.state_sharding, self.batch_sharding),
                                     out_shardings=sharding.replicated(mesh))

    def activate(self):
        """Context for tracing/compiling: the mesh plus the logical-axis rules table."""
        import contextlib

        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(nn.logical_axis_rules(sharding.RULES))
        return stack

    def _init_boxed(self, rng: jax.Array) -> TrainState:
        from interaction_jax import model as model_lib

        params = model_lib.init(rng, self.config)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params))

    def init_state(self) -> TrainState:
        with self.activate():
            return self._init(jax.random.key(self.config.data.seed))

    def _loss(self, params, batch, rng):
        return self.model.apply({"params": params}, batch, rng, method=InteractionModel.loss)

    def _train_step(self, state: TrainState, batch: dict[str, jax.Array]):
        rng = jax.random.fold_in(jax.random.key(self.config.data.seed + 1), state.step)
        (_, metrics), grads = jax.value_and_grad(self._loss, has_aux=True)(state.params, batch, rng)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "grad_norm": optax.tree.norm(grads), "lr": self.schedule(state.step)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    def _eval_loss(self, state: TrainState, batch):
        return self._loss(state.params, batch, jax.random.key(12345))[1]

    def device_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Each process contributes its local rows; the global array is sharded over data x fsdp."""
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
                for k, v in local_batch.items()}


def pipeline_batch_spec(config: Config) -> dict[str, jax.ShapeDtypeStruct]:
    from interaction_jax.model import batch_spec

    return batch_spec(config, config.data.batch_size, config.data.window_chunks)


# ------------------------------------------------------------------------------------------------ run setup


def maybe_initialize_distributed(config: Config) -> None:
    """``jax.distributed.initialize()`` when asked by config or environment (Cloud TPU needs no arguments)."""
    env = os.environ
    wanted = config.train.distributed or "JAX_COORDINATOR_ADDRESS" in env or env.get("IJ_DISTRIBUTED") == "1"
    if not wanted or jax.distributed.is_initialized():
        return
    kwargs = {}
    if "JAX_COORDINATOR_ADDRESS" in env:
        kwargs = {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"],
                  "num_processes": int(env["JAX_NUM_PROCESSES"]), "process_id": int(env["JAX_PROCESS_ID"])}
    jax.distributed.initialize(**kwargs)


def run_info(config: Config, mesh) -> dict[str, Any]:
    def sha() -> str:
        try:
            return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                  cwd=Path(__file__).parent).stdout.strip() or "unknown"
        except OSError:
            return "unknown"

    pkgs = {}
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy", "libtpu"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            pkgs[name] = metadata.version(name)
    return {"git_sha": sha(), "packages": pkgs, "mesh": sharding.describe(mesh),
            "device_kind": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
            "process_count": jax.process_count(), "config_name": config.name}


class MetricsWriter:
    """JSONL + TensorBoard on process 0 (staged locally and mirrored to a ``gs://`` workdir by ``sync``);
    every other process writes nothing."""

    def __init__(self, workdir: str | Path, enabled: bool):
        self.enabled = enabled
        self.jsonl = self.tb = self.mirror = None
        if enabled:
            from tensorboardX import SummaryWriter

            self.mirror = paths.Mirror(workdir)
            self.jsonl = open(self.mirror.local / "metrics.jsonl", "a")  # noqa: SIM115
            self.tb = SummaryWriter(str(self.mirror.local / "tb"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        for k, v in metrics.items():
            if v == v:  # NaN (e.g. the latency of a model that stayed silent) stays out of TensorBoard
                self.tb.add_scalar(k, v, step)

    def sync(self) -> None:
        if self.enabled:
            self.tb.flush()
            self.mirror.sync()

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tb.close()
            self.mirror.close()


# ------------------------------------------------------------------------------------------------ the loop


def train(config: Config, workdir: str | Path, *, max_steps: int | None = None, quiet: bool = False) -> dict:
    """Train (resuming from ``workdir/checkpoints`` if present). ``max_steps`` stops early (for tests)."""
    maybe_initialize_distributed(config)
    workdir = paths.as_path(workdir)  # keeps gs:// (pathlib would turn it into a local "gs:/" directory)
    lead = jax.process_index() == 0
    if lead:
        workdir.mkdir(parents=True, exist_ok=True)
    mesh = sharding.make_mesh(config.mesh)
    if config.data.batch_size % sharding.batch_divisor(mesh):
        raise ValueError(f"data.batch_size={config.data.batch_size} must be divisible by the batch axes "
                         f"data x fsdp x expert = {sharding.batch_divisor(mesh)}")
    ckpt_dir = workdir / "checkpoints"
    if (ckpt_dir / "config.json").exists():
        diffs = config_differences(load_run_config(ckpt_dir), config)
        if diffs:
            raise CheckpointError(f"{ckpt_dir} was trained with a different model config:\n  " + "\n  ".join(diffs))
    if lead:
        (workdir / "config.json").write_text(dumps(config) + "\n")
        (workdir / "run_info.json").write_text(json.dumps(run_info(config, mesh), indent=2) + "\n")

    trainer = Trainer(config, mesh)
    data_iter = pipeline.make_iterator(config, process_index=jax.process_index(),
                                       process_count=jax.process_count())
    ckpt = Checkpointer(str(ckpt_dir), keep=config.train.keep_checkpoints)
    ckpt.write_config(config)
    if ckpt.latest_step() is not None:
        start, state = ckpt.restore(trainer.abstract_state, data_iter)
        _log(lead, quiet, f"resumed from step {start} in {ckpt_dir}")
    else:
        state = trainer.init_state()

    stop = {"signal": None}
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum))
    rep = flops.report(config)
    peak, peak_src = perf.peak_flops_per_device(config.model.transformer.dtype)
    tokens_per_step = flops.tokens_per_step(config)
    flops_per_step = rep["flops_per_token"] * tokens_per_step
    writer = MetricsWriter(workdir, lead)
    total = config.train.steps if max_steps is None else min(config.train.steps, max_steps)
    _log(lead, quiet, f"{rep['total']:,} params | mesh {dict(mesh.shape)} | peak {peak:.3g} FLOP/s ({peak_src})")
    history: list[dict[str, float]] = []
    # IJ_FAULT_AFTER_STEP=k SIGKILLs this process after step k (used by the resume tests and preemption drills).
    fault_step = int(os.environ.get("IJ_FAULT_AFTER_STEP", "0")) or None
    step = int(state.step)
    last_saved = step if ckpt.latest_step() == step else None
    progress = _progress(lead and not quiet, total, step)
    t_last, steps_since = time.perf_counter(), 0
    try:
        while step < total and stop["signal"] is None:
            batch = trainer.device_batch(next(data_iter))
            with trainer.activate():
                state, metrics = trainer.step_fn(state, batch)
            step += 1
            steps_since += 1
            if step % config.train.log_every == 0 or step == total:
                m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                dt = (time.perf_counter() - t_last) / steps_since
                m.update(step_time_s=dt, tokens_per_s=tokens_per_step / dt,
                         mfu=flops_per_step / dt / (peak * jax.device_count()))
                writer.write(step, m)
                history.append({"step": step, **m})
                progress(step, m)
                t_last, steps_since = time.perf_counter(), 0
            if config.train.eval_every and step % config.train.eval_every == 0 and step < total:
                m = periodic_eval(config, state.params, quiet=quiet or not lead)
                writer.write(step, m)
                history.append({"step": step, **m})
                t_last, steps_since = time.perf_counter(), 0  # eval time is not step time
            if step % config.train.checkpoint_every == 0:
                ckpt.save(step, state, data_iter)
                writer.sync()
                last_saved = step
            if step == fault_step:  # preemption drill: die hard right after this step's checkpoint is durable
                ckpt.wait()
                os.kill(os.getpid(), signal.SIGKILL)
        if stop["signal"] is not None:
            _log(lead, quiet, f"SIGTERM at step {step}: saving a checkpoint before exit")
        if last_saved != step:
            ckpt.save(step, state, data_iter, force=True)
    finally:
        ckpt.close()
        writer.close()
        progress(None, None)
        signal.signal(signal.SIGTERM, previous)
    return {"step": step, "state": state, "history": history, "preempted": stop["signal"] is not None}


def periodic_eval(config: Config, params: Any, *, quiet: bool = False) -> dict[str, float]:
    """Free-running scores and teacher-forced metrics of every training task, as flat ``eval/...`` and
    ``tf/...`` keys for metrics.jsonl and TensorBoard (the per-task curves of ``curves``)."""
    from interaction_jax.data.synthetic.scoring import HEADLINE
    from interaction_jax.evals.run import evaluate
    from interaction_jax.evals.teacher_forced import teacher_forced

    if jax.process_count() > 1:  # the eval engine runs on one host's devices
        return {}
    t0 = time.perf_counter()
    p = nn.unbox(params)
    tasks, n = config.data.tasks, config.train.eval_episodes
    free = evaluate(config, p, tasks, n, progress=False)
    forced = teacher_forced(config, p, tasks, n)
    out = {f"eval/{t}/{k}": float(v) for t, ms in free.items() for k, v in ms.items() if k != "episodes"}
    out |= {f"tf/{t}/{k}": float(v) for t, ms in forced.items() for k, v in ms.items() if k != "episodes"}
    out["eval_time_s"] = time.perf_counter() - t0
    if not quiet:
        scores = " ".join(f"{t} {free[t][HEADLINE[t]]:.2f}" for t in tasks if t in HEADLINE)
        words = " ".join(f"{t} {forced[t]['word_acc']:.2f}" for t in tasks)
        print(f"\n[eval] free-running {scores} | teacher-forced word acc {words} ({out['eval_time_s']:.0f} s)",
              flush=True)
    return out


def _log(lead: bool, quiet: bool, msg: str) -> None:
    if lead and not quiet:
        print(f"[train] {msg}", flush=True)


def _progress(enabled: bool, total: int, start: int):
    """A rich progress bar with the latest loss; returns ``update(step, metrics)`` (``None`` closes it)."""
    if not enabled:
        return lambda step, metrics: None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   TextColumn("{task.fields[info]}"))
    task = bar.add_task("train", total=total, completed=start, info="")
    bar.start()

    def update(step, metrics):
        if step is None:
            bar.stop()
            return
        info = (f"loss {metrics['loss']:.3f} text {metrics['text_loss']:.3f} flow {metrics['flow_loss']:.3f} "
                f"mfu {metrics['mfu']:.2f}")
        bar.update(task, completed=step, info=info)

    return update


def with_steps(config: Config, steps: int) -> Config:
    return dataclasses.replace(config, train=dataclasses.replace(config.train, steps=steps))

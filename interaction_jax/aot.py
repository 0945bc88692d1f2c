"""Ahead-of-time compile the real train step for a TPU topology on this CPU; prove it fits HBM.

    python -m interaction_jax aot --config configs/tpu_v5e_1b.py [--topology v5e:4x4] [--num-slices 2]

libtpu (the ``[tpu]`` extra) compiles for a topology description without any TPU attached. Two facts shape
this module:

* Compiling is not proof of fitting: libtpu rejects a program only when its *temporaries* exceed HBM. We
  compute ``need = argument + output - alias + temp + generated code`` per device ourselves and compare it
  with the capacity libtpu reports (v5e 15.75 GiB, v6e 31.25 GiB, v5p 95.74 GiB).
* ``cost_analysis()`` counts a scanned layer body once. We compile the same model again with two layers per
  scan iteration (``scan_unroll=2``): ``body = F_unroll2 - F_scan``, then ``total = F_scan + (L - 1) * body``.
  It also counts XLA:TPU's windowed-einsum (collective matmul) loops once, so when the program has them the
  two counting compiles are made with that rewrite switched off (one compile more).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

from interaction_jax import flops, perf, sharding
from interaction_jax.config import Config
from interaction_jax.model import replace_transformer


class DoesNotFit(RuntimeError):
    """The compiled program needs more HBM than the chip has (or libtpu refused it)."""


def topology_devices(topology: str, num_slices: int = 1) -> list[Any]:
    import os

    from jax.experimental import topologies

    # Compiling for a topology description opens no TPU, so the single-process libtpu lockfile only gets in
    # the way (two `aot` runs, or `aot` beside the test suite, would abort with "lockfile" errors).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        desc = topologies.get_topology_desc(
            platform="tpu", topology_name=topology, chip_config_name="default",
            chips_per_host_bounds=(2, 2, 1), num_slices=num_slices,
        )
    except Exception as e:
        raise RuntimeError(
            f"cannot build TPU topology {topology!r} (x{num_slices} slices): {e}. Is libtpu installed? "
            "pip install 'interaction_jax[tpu]'"
        ) from e
    return list(desc.devices)


def hbm_capacity(topology: str) -> int:
    gen = topology.split(":")[0].lower()
    if gen not in perf.TPU_HBM_BYTES:
        raise ValueError(f"unknown TPU generation in {topology!r}; known: {', '.join(perf.TPU_HBM_BYTES)}")
    return perf.TPU_HBM_BYTES[gen]


# XLA:TPU rewrites large all-gather + matmul (and matmul + reduce-scatter) pairs into "windowed einsum"
# loops (collective matmul). cost_analysis counts those loop bodies once too, so a program that has them
# undercounts every fsdp-sharded matmul (measured: 0.60x analytic on tpu_v5e_1b). The FLOP-count compiles
# switch the rewrite off; the memory figures always come from the program as it would run.
WINDOWED_EINSUM_MARK = "windowed_dot_general"
NO_WINDOWED_EINSUM = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                      "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}


def _compile_train(config: Config, devices: list[Any], compiler_options: dict[str, Any] | None = None):
    from interaction_jax.train import Trainer

    mesh = sharding.make_mesh(config.mesh, devices)
    trainer = Trainer(config, mesh)
    with trainer.activate():
        lowered = trainer.step_fn.lower(trainer.abstract_state, trainer.batch_spec)
        return lowered.compile(compiler_options)


def _compile_serve(config: Config, devices: list[Any], slots: int):
    """The streaming engine's micro-turn (dMel, prefill, text + flow decode, Griffin-Lim) for ``slots``
    sessions, with the training param shardings and the KV cache split over the batch axes."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from interaction_jax.layers import cache_logical_axes
    from interaction_jax.serve.engine import Engine
    from interaction_jax.train import Trainer

    mesh = sharding.make_mesh(config.mesh, devices)
    trainer = Trainer(config, mesh)
    params = trainer.abstract_state.params
    engine = Engine(config, None, batch_slots=slots)
    with trainer.activate():
        state = jax.eval_shape(engine.init_state)
        cache_axes = cache_logical_axes()
        batch = sharding.batch_sharding(mesh)

        def place(path, leaf):
            names = [getattr(k, "name", getattr(k, "key", None)) for k in path]
            if "cache" in names:
                spec = sharding.logical_to_spec(cache_axes[names[-1]], leaf.shape, mesh)
                return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=NamedSharding(mesh, spec))
            spec = batch.spec if leaf.ndim and leaf.shape[0] == slots else PartitionSpec()
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=NamedSharding(mesh, spec))

        state = jax.tree_util.tree_map_with_path(place, state)
        lay = engine.layout
        a = config.audio
        b_spec = batch.spec

        def arg(shape, dtype):
            return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, b_spec))

        frames = frame_mask = None
        if lay.num_video:
            frames = arg((slots, config.vision.height, config.vision.width, 3), jax.numpy.uint8)
            frame_mask = arg((slots,), jax.numpy.bool_)
        lowered = engine._step.lower(params, state, arg((slots, a.chunk_samples), jax.numpy.float32), frames,
                                     frame_mask, arg((slots, lay.num_text_in), jax.numpy.int32),
                                     arg((slots,), jax.numpy.bool_))
        return lowered.compile()


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, list):
        cost = cost[0]
    return float((cost or {}).get("flops", 0.0))


def memory(compiled) -> dict[str, int]:
    m = compiled.memory_analysis()
    out = {
        "argument": int(m.argument_size_in_bytes),
        "output": int(m.output_size_in_bytes),
        "alias": int(m.alias_size_in_bytes),
        "temp": int(m.temp_size_in_bytes),
        "code": int(m.generated_code_size_in_bytes),
    }
    out["need"] = out["argument"] + out["output"] - out["alias"] + out["temp"] + out["code"]
    return out


def for_tpu(config: Config, num_slices: int) -> Config:
    """The config as it runs on a TPU: splash attention picked explicitly (auto would see this CPU).

    Splash tiles the sequence by 128. A config padded to a smaller multiple for CPU (tiny: 8) would make
    ``auto`` fall back to dense attention on the TPU, so the TPU form pads to a multiple of 128 as well.
    """
    t = config.model.transformer
    backend = "splash" if t.attention_backend == "auto" else t.attention_backend
    config = replace_transformer(config, attention_backend=backend)
    if backend == "splash" and config.model.pad_multiple % 128:
        model = dataclasses.replace(config.model, pad_multiple=math.lcm(config.model.pad_multiple, 128))
        config = dataclasses.replace(config, model=model)
    mesh = dataclasses.replace(config.mesh, dcn_data=num_slices)
    return dataclasses.replace(config, mesh=mesh)


HEADROOM = 0.10  # a TPU config must leave this fraction of HBM free (fragmentation, runtime buffers)


def run(config: Config, topology: str | None = None, num_slices: int = 1, *, correct_flops: bool = True,
        serve_slots: int = 0, log=print) -> dict[str, Any]:
    """Compile the train step (and, with ``serve_slots > 0``, the serving micro-turn) for ``topology``."""
    topology = topology or config.topology
    if not topology:
        raise ValueError(f"config {config.name!r} names no topology; pass --topology (e.g. v5e:2x2)")
    config = for_tpu(config, num_slices)
    devices = topology_devices(topology, num_slices)
    capacity = hbm_capacity(topology)
    log(f"[aot] {config.name} on {topology} x{num_slices}: {len(devices)} chips, mesh "
        f"{sharding.resolve_mesh_shape(config.mesh, len(devices))}; compiling the train step...")
    start = time.perf_counter()
    try:
        compiled = _compile_train(config, devices)
    except Exception as e:  # libtpu's out-of-memory and similar refusals
        raise DoesNotFit(
            f"libtpu refused to compile {config.name} for {topology}: {str(e)[:600]}\n" + _knobs(config)) from e
    compile_s = time.perf_counter() - start
    mem = memory(compiled)
    hlo = compiled.as_text() or ""
    windowed = WINDOWED_EINSUM_MARK in hlo
    raw = _flops(compiled)
    layers = config.model.transformer.num_layers
    per_device = raw
    scanned = config.model.transformer.scan_layers and layers > 1  # cost_analysis sees one layer of L
    options = None
    if correct_flops and windowed:
        log("[aot] the program uses windowed-einsum loops (counted once by cost_analysis); compiling the step "
            "without them for the FLOP count...")
        options = NO_WINDOWED_EINSUM
        raw = _flops(_compile_train(config, devices, options))
        per_device = raw
    if correct_flops and scanned:
        # The same L-layer program with two layers per loop iteration: the loop body now holds 2 layers and
        # is still counted once, so the difference is exactly one layer (forward + backward, remat and all).
        # (Comparing with a 2-layer *unrolled* model instead undercounts: XLA drops the remat recomputation
        # there, so that "layer" has no recompute.)
        log("[aot] correcting FLOPs for scan: compiling the same step with 2 layers per loop iteration...")
        f_unroll2 = _flops(_compile_train(replace_transformer(config, scan_unroll=2), devices, options))
        extra_visible = 1 + layers % 2  # an odd L leaves one layer outside the loop, visible once more
        per_device = raw + (layers - 1) * (f_unroll2 - raw) / extra_visible
    corrected = correct_flops or not (scanned or windowed)
    rep = flops.report(config)
    tokens = flops.tokens_per_step(config)
    n_dev = len(devices)
    total_flops = per_device * n_dev
    peak = perf.TPU_PEAK_FLOPS[topology.split(":")[0].lower()]
    step_s = total_flops / (peak * n_dev)
    result = {
        "config": config.name,
        "topology": topology,
        "num_slices": num_slices,
        "devices": n_dev,
        "mesh": dict(zip(sharding.MESH_AXES, sharding.resolve_mesh_shape(config.mesh, n_dev), strict=True)),
        **{f"{k}_bytes": v for k, v in mem.items()},
        "hbm_bytes_per_device": mem["need"],
        "hbm_capacity_bytes": capacity,
        "hbm_fraction": mem["need"] / capacity,
        "fits": mem["need"] <= capacity,
        "flops_per_step": total_flops,
        "flops_per_step_raw": raw * n_dev,
        "flops_corrected": corrected,
        "analytic_flops_per_step": rep["flops_per_token"] * tokens,
        "tokens_per_step": tokens,
        "params_total": rep["total"],
        "params_active": rep["active"],
        "attention_kernel": config.model.transformer.attention_backend,
        "splash_in_hlo": "splash" in hlo.lower(),
        "windowed_einsum_in_hlo": windowed,
        "mfu_bound_step_s": step_s,
        "tokens_per_s_at_peak": tokens / step_s if step_s else 0.0,
        "compile_s": compile_s,
    }
    result["flops_ratio_vs_analytic"] = total_flops / max(result["analytic_flops_per_step"], 1.0)
    # If the chips ran the compiled FLOPs at peak, the model FLOPs (analytic) would be this fraction of peak.
    result["mfu_at_peak"] = result["analytic_flops_per_step"] / total_flops if total_flops else 0.0
    result["headroom_ok"] = mem["need"] <= (1 - HEADROOM) * capacity
    if serve_slots:
        slots = serve_slots * sharding.batch_divisor(sharding.make_mesh(config.mesh, devices))
        log(f"[aot] compiling the serving micro-turn for {slots} sessions...")
        start = time.perf_counter()
        try:
            serve_mem = memory(_compile_serve(config, devices, slots))
        except Exception as e:
            raise DoesNotFit(f"libtpu refused the serving step of {config.name} on {topology}: {str(e)[:600]}") from e
        result["serve"] = {"slots": slots, "cache_chunks": config.model.max_chunks,
                           "hbm_bytes_per_device": serve_mem["need"], "fits": serve_mem["need"] <= capacity,
                           "headroom_ok": serve_mem["need"] <= (1 - HEADROOM) * capacity,
                           "compile_s": time.perf_counter() - start}
        if not result["serve"]["fits"]:
            gib = 2**30
            result["fits"] = False
            result["error"] = (
                f"the serving step of {config.name} ({slots} sessions x {config.model.max_chunks} chunks of KV "
                f"cache) needs {serve_mem['need'] / gib:.2f} GiB per device on {topology}, over the "
                f"{capacity / gib:.2f} GiB chip by {(serve_mem['need'] - capacity) / gib:.2f} GiB. Knobs: fewer "
                "--serve-slots, a smaller model.max_chunks, or a sliding window with a rolling cache.")
    if mem["need"] > capacity:  # the train step's own message wins over the serving one
        gib = 2**30
        result["error"] = (
            f"{config.name} needs {mem['need'] / gib:.2f} GiB per device on {topology} but the chip has "
            f"{capacity / gib:.2f} GiB (over by {(mem['need'] - capacity) / gib:.2f} GiB; temp "
            f"{mem['temp'] / gib:.2f} GiB, arguments {mem['argument'] / gib:.2f} GiB).\n" + _knobs(config)
        )
    return result


def format_result(r: dict[str, Any]) -> str:
    gib = 2**30
    return "\n".join([
        f"## aot {r['config']} on {r['topology']} x{r['num_slices']} ({r['devices']} chips, mesh {r['mesh']})",
        "",
        "| per device | GiB |",
        "|---|---:|",
        *[f"| {k} | {r[k + '_bytes'] / gib:.3f} |" for k in ("argument", "output", "alias", "temp", "code")],
        f"| **need** | **{r['hbm_bytes_per_device'] / gib:.3f}** of {r['hbm_capacity_bytes'] / gib:.2f} "
        f"({100 * r['hbm_fraction']:.1f}%) |",
        "",
        f"fits: {r['fits']} | params {r['params_total'] / 1e9:.3f}B total / {r['params_active'] / 1e9:.3f}B active"
        f" | FLOPs/step {r['flops_per_step']:.4g} (raw {r['flops_per_step_raw']:.3g}, analytic "
        f"{r['analytic_flops_per_step']:.4g}, ratio {r['flops_ratio_vs_analytic']:.2f})",
        f"MFU-bound step {r['mfu_bound_step_s']:.3f} s, {r['tokens_per_s_at_peak']:.4g} tokens/s, model-FLOPs "
        f"utilisation {r['mfu_at_peak']:.2f} at peak | "
        f"attention {r['attention_kernel']} (splash in HLO: {r['splash_in_hlo']}) | compile {r['compile_s']:.1f} s",
        f"headroom >= {100 * HEADROOM:.0f}%: {r['headroom_ok']}",
        *([f"serving: {r['serve']['slots']} sessions x {r['serve']['cache_chunks']} chunks need "
           f"{r['serve']['hbm_bytes_per_device'] / gib:.3f} GiB per device (compile {r['serve']['compile_s']:.1f} s)"]
          if "serve" in r else []),
    ])


class ReportError(ValueError):
    """An ``aot --json`` report that cannot be read or lacks keys."""


REPORT_KEYS = ("config", "topology", "devices", "mesh", "params_total", "params_active", "hbm_bytes_per_device",
               "hbm_capacity_bytes", "hbm_fraction", "headroom_ok", "flops_per_step", "flops_ratio_vs_analytic",
               "mfu_bound_step_s", "compile_s")


def load_reports(paths: list[str]) -> list[dict[str, Any]]:
    import json
    from pathlib import Path

    reports = []
    for path in paths:
        try:
            report = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ReportError(f"cannot read aot report {path}: {e}") from e
        missing = [k for k in REPORT_KEYS if k not in report] if isinstance(report, dict) else list(REPORT_KEYS)
        if missing:
            raise ReportError(f"{path} is not an `aot --json` report (missing {', '.join(missing)})")
        reports.append(report)
    return reports


def summary_table(results: list[dict[str, Any]]) -> str:
    """One markdown row per ``aot --json`` report: the table the README and issue notes carry."""
    gib = 2**30
    rows = [
        "| config | topology (chips) | mesh | params total / active | HBM need / capacity per device | 10% headroom "
        "| corrected FLOPs/step (x analytic) | MFU-bound step | serving step need | train compile, 2-core CPU |",
        "|---|---|---|---:|---:|:-:|---:|---:|---:|---:|",
    ]
    for r in results:
        mesh = " x ".join(f"{k} {v}" for k, v in r["mesh"].items() if v > 1) or "1 device"
        slices = f" x{r['num_slices']} slices" if r.get("num_slices", 1) > 1 else ""
        corrected = r.get("flops_corrected", True)
        flops = f"{r['flops_per_step']:.3g} ({r['flops_ratio_vs_analytic']:.2f}x)" if corrected else "not corrected"
        step = f"{r['mfu_bound_step_s']:.3f} s" if corrected else "—"
        serve = r.get("serve")
        serve_cell = (f"{serve['hbm_bytes_per_device'] / gib:.1f} GiB ({serve['slots']} sessions x "
                      f"{serve['cache_chunks']} chunks)" if serve else "not compiled")
        cells = [
            r["config"], f"{r['topology']}{slices} ({r['devices']})", mesh,
            f"{r['params_total'] / 1e9:.2f}B / {r['params_active'] / 1e9:.2f}B",
            f"{r['hbm_bytes_per_device'] / gib:.1f} / {r['hbm_capacity_bytes'] / gib:.2f} GiB "
            f"({100 * r['hbm_fraction']:.0f}%)",
            "yes" if r["headroom_ok"] else "**no**", flops, step, serve_cell, f"{r['compile_s']:.0f} s",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _knobs(config: Config) -> str:
    """What to turn, in the order to try; a knob already at its memory-saving end is not suggested."""
    knobs = []
    if config.model.transformer.remat != "full":
        knobs.append(f"--set model.transformer.remat=full (now {config.model.transformer.remat})")
    knobs += ["a larger mesh.fsdp (shards params and optimizer state)",
              "a smaller data.batch_size or data.window_chunks (activations)", "a bigger topology"]
    return "Knobs, in the order to try: " + "; ".join(knobs) + "."

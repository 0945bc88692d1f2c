"""Ahead-of-time compile the real train step for a TPU topology on this CPU; prove it fits HBM.

    python -m interaction_jax aot --config configs/tpu_v5e_1b.py [--topology v5e:4x4] [--num-slices 2]

libtpu (the ``[tpu]`` extra) compiles for a topology description without any TPU attached. Two facts shape
this module:

* Compiling is not proof of fitting: libtpu rejects a program only when its *temporaries* exceed HBM. We
  compute ``need = argument + output - alias + temp + generated code`` per device ourselves and compare it
  with the capacity libtpu reports (v5e 15.75 GiB, v6e 31.25 GiB, v5p 95.74 GiB).
* ``cost_analysis()`` counts a scanned layer body once. We compile the same model with 2 layers, unrolled
  and scanned: ``body = F_unrolled2 - F_scanned2``, then ``total = F_scanned_L + (L - 1) * body``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from interaction_jax import flops, perf, sharding
from interaction_jax.config import Config
from interaction_jax.model import replace_transformer


class DoesNotFit(RuntimeError):
    """The compiled program needs more HBM than the chip has (or libtpu refused it)."""


def topology_devices(topology: str, num_slices: int = 1) -> list[Any]:
    from jax.experimental import topologies

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


def _compile_train(config: Config, devices: list[Any]):
    from interaction_jax.train import Trainer

    mesh = sharding.make_mesh(config.mesh, devices)
    trainer = Trainer(config, mesh)
    with trainer.activate():
        lowered = trainer.step_fn.lower(trainer.abstract_state, trainer.batch_spec)
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
    """The config as it runs on a TPU: splash attention picked explicitly (auto would see this CPU)."""
    t = config.model.transformer
    backend = "splash" if t.attention_backend == "auto" else t.attention_backend
    config = replace_transformer(config, attention_backend=backend)
    mesh = dataclasses.replace(config.mesh, dcn_data=num_slices)
    return dataclasses.replace(config, mesh=mesh)


def run(config: Config, topology: str | None = None, num_slices: int = 1, *, correct_flops: bool = True,
        log=print) -> dict[str, Any]:
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
        msg = str(e)
        raise DoesNotFit(f"libtpu refused to compile {config.name} for {topology}: {msg[:600]}\n" + _knobs()) from e
    compile_s = time.perf_counter() - start
    mem = memory(compiled)
    raw = _flops(compiled)
    layers = config.model.transformer.num_layers
    per_device = raw
    if correct_flops and config.model.transformer.scan_layers and layers > 2:
        log("[aot] correcting FLOPs for scan: compiling 2-layer scanned and unrolled variants...")
        f_s2 = _flops(_compile_train(replace_transformer(config, num_layers=2, scan_layers=True), devices))
        f_u2 = _flops(_compile_train(replace_transformer(config, num_layers=2, scan_layers=False), devices))
        per_device = raw + (layers - 1) * (f_u2 - f_s2)
    rep = flops.report(config)
    tokens = flops.tokens_per_step(config)
    n_dev = len(devices)
    total_flops = per_device * n_dev
    peak = perf.TPU_PEAK_FLOPS[topology.split(":")[0].lower()]
    step_s = total_flops / (peak * n_dev)
    hlo = compiled.as_text() or ""
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
        "analytic_flops_per_step": rep["flops_per_token"] * tokens,
        "tokens_per_step": tokens,
        "params_total": rep["total"],
        "params_active": rep["active"],
        "attention_kernel": config.model.transformer.attention_backend,
        "splash_in_hlo": "splash" in hlo.lower(),
        "mfu_bound_step_s": step_s,
        "tokens_per_s_at_peak": tokens / step_s if step_s else 0.0,
        "compile_s": compile_s,
    }
    result["flops_ratio_vs_analytic"] = total_flops / max(result["analytic_flops_per_step"], 1.0)
    if not result["fits"]:
        gib = 2**30
        result["error"] = (
            f"{config.name} needs {mem['need'] / gib:.2f} GiB per device on {topology} but the chip has "
            f"{capacity / gib:.2f} GiB (over by {(mem['need'] - capacity) / gib:.2f} GiB; temp "
            f"{mem['temp'] / gib:.2f} GiB, arguments {mem['argument'] / gib:.2f} GiB).\n" + _knobs()
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
        f"MFU-bound step {r['mfu_bound_step_s']:.3f} s, {r['tokens_per_s_at_peak']:.4g} tokens/s at peak | "
        f"attention {r['attention_kernel']} (splash in HLO: {r['splash_in_hlo']}) | compile {r['compile_s']:.1f} s",
    ])


def _knobs() -> str:
    return ("Knobs, in the order to try: --set model.transformer.remat=full; a larger mesh.fsdp (shards params "
            "and optimizer state); a smaller data.batch_size or data.window_chunks (activations); "
            "a bigger topology.")

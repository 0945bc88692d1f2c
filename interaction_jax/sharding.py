"""Device mesh and the one logical-axis rules table that maps model axis names to mesh axes.

Layers annotate params with logical names (``embed``, ``mlp``, ``heads``...) and activations with
``act_*`` names; nothing else in the code base mentions mesh axes. Changing the parallelism strategy is
therefore a change to ``RULES`` or to the mesh shape in the config, never to a layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from interaction_jax.config import MeshConfig

MESH_AXES = ("data", "fsdp", "tensor", "expert")
BATCH_AXES = ("data", "fsdp", "expert")  # expert doubles as data parallelism outside the MoE FFN

# logical name -> mesh axis (or tuple of axes, or None = replicated). First match wins (flax semantics).
RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("expert", "expert"),
    ("layers", None),
    # activations
    ("act_batch", BATCH_AXES),
    ("act_len", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_expert", "expert"),
)


def resolve_mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int, int]:
    """Fill the one ``-1`` axis and check the product against the device count, with a helpful error."""
    sizes = [cfg.data, cfg.fsdp, cfg.tensor, cfg.expert]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes, strict=True))}")
    per_slice = num_devices // max(cfg.dcn_data, 1)
    if -1 in sizes:
        fixed = math.prod(s for s in sizes if s != -1)
        if per_slice % fixed:
            raise ValueError(f"mesh: {per_slice} devices per slice are not divisible by the fixed axes ({fixed})")
        sizes[sizes.index(-1)] = per_slice // fixed
    if math.prod(sizes) * cfg.dcn_data != num_devices:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes, strict=True))} x dcn_data={cfg.dcn_data} needs "
            f"{math.prod(sizes) * cfg.dcn_data} devices, but {num_devices} are available; "
            "set one axis to -1 (e.g. --set mesh.data=-1) to use them all"
        )
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """(data, fsdp, tensor, expert) mesh with explicit Auto axes; ``dcn_data > 1`` builds a multi-slice mesh."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(cfg, len(devices))
    if cfg.dcn_data > 1:
        from jax.experimental import mesh_utils

        arr = mesh_utils.create_hybrid_device_mesh(
            shape, (cfg.dcn_data, 1, 1, 1), devices=devices, allow_split_physical_axes=True
        )
    else:
        try:
            from jax.experimental import mesh_utils

            arr = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
        except (ValueError, NotImplementedError, AssertionError):
            arr = np.asarray(devices).reshape(shape)
    return Mesh(arr, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """One array's logical names -> PartitionSpec, replicating any dim the mesh axes do not divide evenly."""
    rules = dict(RULES)
    used: set[str] = set()
    out: list[Any] = []
    for name, dim in zip(names, shape, strict=True):
        axes = rules.get(name) if name is not None else None
        axes_t = (axes,) if isinstance(axes, str) else tuple(axes or ())
        axes_t = tuple(a for a in axes_t if a not in used and mesh.shape[a] > 1)
        size = math.prod(mesh.shape[a] for a in axes_t)
        if not axes_t or dim % size:
            out.append(None)
            continue
        used.update(axes_t)
        out.append(axes_t[0] if len(axes_t) == 1 else axes_t)
    return PartitionSpec(*out)


def tree_shardings(boxed_tree: Any, mesh: Mesh) -> Any:
    """Shardings for a tree of ``nn.Partitioned`` leaves (params, or optimizer state that mirrors them)."""

    def one(leaf: Any) -> NamedSharding:
        if isinstance(leaf, nn.Partitioned):
            return NamedSharding(mesh, logical_to_spec(leaf.names, leaf.value.shape, mesh))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, boxed_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the batch axes (data x fsdp x expert); every other axis replicated."""
    axes = tuple(a for a in BATCH_AXES if mesh.shape[a] > 1)
    return NamedSharding(mesh, PartitionSpec(axes if axes else None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_divisor(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def sharded_fraction(abstract_tree: Any, shardings: Any) -> float:
    """Fraction of bytes whose sharding splits them across more than one device (for the fsdp test)."""
    total = split = 0
    for leaf, sh in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings), strict=True):
        nbytes = int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
        total += nbytes
        if any(p is not None for p in sh.spec):
            split += nbytes
    return split / max(total, 1)


def describe(mesh: Mesh) -> dict[str, Any]:
    return {
        "shape": dict(mesh.shape),
        "devices": int(mesh.devices.size),
        "device_kind": mesh.devices.flat[0].device_kind,
        "process_count": jax.process_count(),
    }

"""Device mesh with a data-parallel axis and a fully-sharded-data-parallel (FSDP) axis.

Both axes carry batch rows; only "fsdp" also splits the weights (see `sharding.LOGICAL_RULES`).
So `data=N` is plain data parallelism with replicated weights, `fsdp=N` is ZeRO-3-style sharding,
and a mix trades weight memory against the all-gathers FSDP pays on every forward pass.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
MESH_AXES = (DATA_AXIS, FSDP_AXIS)


def resolve_mesh_shape(num_devices: int, data: int = -1, fsdp: int = 1) -> tuple[int, int]:
  """Fills in a -1 axis and checks that data * fsdp == num_devices.

  Raises:
    ValueError: naming `data`/`fsdp` when the sizes are invalid or do not multiply to the device count.
  """
  for name, size in (("data", data), ("fsdp", fsdp)):
    if size == 0 or size < -1:
      raise ValueError(f"mesh {name}={size}: expected a positive size or -1 (all remaining devices).")
  if data == -1 and fsdp == -1:
    raise ValueError("mesh data=-1 and fsdp=-1: at most one axis may be -1 (all remaining devices).")
  if data == -1 or fsdp == -1:
    fixed_name, fixed = ("fsdp", fsdp) if data == -1 else ("data", data)
    if num_devices % fixed:
      raise ValueError(f"mesh {fixed_name}={fixed} does not divide the {num_devices} available devices.")
    data, fsdp = (num_devices // fixed, fixed) if data == -1 else (fixed, num_devices // fixed)
  if data * fsdp != num_devices:
    raise ValueError(f"mesh data={data} x fsdp={fsdp} = {data * fsdp} devices, but {num_devices} "
                     "devices are available; the product must equal the device count (use -1 for one axis).")
  return data, fsdp


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ("data", "fsdp") mesh over all global devices (every process's), or over `devices`.

  Axes are `AxisType.Auto` (jax 0.10's `jax.make_mesh` defaults to Explicit): shardings are
  chosen by the XLA partitioner from the input shardings, so the model code needs no per-op
  sharding annotations.

  Args:
    data: data-parallel axis size; -1 takes all devices left after `fsdp`.
    fsdp: FSDP axis size (weights split over it); -1 takes all devices left after `data`.
    devices: devices to lay out (default: `jax.devices()`, all processes).

  Raises:
    ValueError: when data * fsdp does not equal the number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(len(devices), data, fsdp)
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  try:
    # Topology-aware device order (rings on TPU); multi-process order stays process-major on CPU/GPU.
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
  except (ValueError, NotImplementedError):
    # e.g. a device subset that does not tile the physical topology: plain row-major layout.
    return Mesh(np.asarray(devices, dtype=object).reshape(shape), MESH_AXES, axis_types=axis_types)


def mesh_summary(mesh: Mesh) -> str:
  """One line for logs, e.g. `data=2 fsdp=4 (8 devices, 1 processes, cpu)`."""
  axes = " ".join(f"{name}={size}" for name, size in mesh.shape.items())
  n_proc = len({d.process_index for d in mesh.devices.flat})
  return f"{axes} ({mesh.devices.size} devices, {n_proc} processes, {mesh.devices.flat[0].platform})"

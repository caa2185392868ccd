"""Multi-process (multi-host) start-up: one call that works on a laptop, a local test and a TPU pod.

JAX's own multi-controller runtime does the work: every process runs the same program, calls
`jax.distributed.initialize` before any computation, and then sees all devices of all processes in
`jax.devices()`. We only decide *whether* and *how* to call it:

* explicit arguments or env vars (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`)
  -> initialise with them (the local multi-process CPU test, hand-launched GPU hosts);
* otherwise a managed cluster JAX can auto-detect (Cloud TPU VM pod slice, GKE, SLURM, Open MPI)
  -> `jax.distributed.initialize()` with no arguments;
* otherwise a single process: nothing to do.

`SELFRL_DISTRIBUTED=off` skips initialisation; `=on` forces the no-argument call. On CPU, cross-process
collectives use gloo (the jax 0.10 default for `jax_cpu_collectives_implementation`).
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import jax

logger = logging.getLogger(__name__)

_MODES = ("auto", "on", "off")


def _env_int(name: str) -> int | None:
  raw = os.environ.get(name)
  if raw is None or raw == "":
    return None
  try:
    return int(raw)
  except ValueError:
    raise ValueError(f"environment variable {name}={raw!r}: expected an integer.") from None


def _managed_cluster_detected() -> bool:
  """Whether JAX's cluster auto-detection would find a multi-host environment (TPU, SLURM, ...)."""
  try:
    from jax._src import clusters  # private: no public "is a cluster present" query exists
    return any(env.is_env_present() for env in clusters.ClusterEnv._cluster_types
               if not env.opt_in_only_method)
  except Exception as e:  # a changed private API must not break single-process runs
    logger.warning("distributed: cluster auto-detection unavailable (%s); assuming one process.", e)
    return False


def maybe_initialize_distributed(coordinator_address: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None, *,
                                 local_device_ids: Sequence[int] | None = None,
                                 initialization_timeout: int = 300,
                                 mode: str | None = None) -> bool:
  """Initialises JAX's distributed runtime when this run spans several processes.

  Must be called before any JAX computation (and before `jax.devices()`). Idempotent.

  Args:
    coordinator_address: "host:port" of process 0 (default: env `JAX_COORDINATOR_ADDRESS`).
    num_processes: total processes (default: env `JAX_NUM_PROCESSES`, else auto-detected).
    process_id: this process's rank (default: env `JAX_PROCESS_ID`, else auto-detected).
    local_device_ids: devices this process owns (GPU one-process-per-device set-ups).
    initialization_timeout: seconds to wait for all processes to join.
    mode: "auto" | "on" | "off" (default: env `SELFRL_DISTRIBUTED`, else "auto").

  Returns:
    True when the distributed runtime is (now) initialised, False for a plain single process.

  Raises:
    ValueError: for an unknown mode or a non-integer env var.
  """
  mode = (mode or os.environ.get("SELFRL_DISTRIBUTED") or "auto").lower()
  if mode not in _MODES:
    raise ValueError(f"SELFRL_DISTRIBUTED / mode={mode!r}: expected one of {_MODES}.")
  if jax.distributed.is_initialized():
    return True
  if mode == "off":
    return False
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
  process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
  if num_processes == 1 and mode == "auto":
    return False
  if coordinator_address is None and mode == "auto" and not _managed_cluster_detected():
    return False
  logger.info("distributed: initialising (coordinator=%s, num_processes=%s, process_id=%s)",
              coordinator_address or "auto", num_processes or "auto",
              "auto" if process_id is None else process_id)
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id, local_device_ids=local_device_ids,
                             initialization_timeout=initialization_timeout)
  return True


def process_info() -> tuple[int, int, int]:
  """(process_index, process_count, local_device_count)."""
  return jax.process_index(), jax.process_count(), jax.local_device_count()


def is_main_process() -> bool:
  """True on process 0, the one that writes logs, metrics and checkpoints metadata."""
  return jax.process_index() == 0

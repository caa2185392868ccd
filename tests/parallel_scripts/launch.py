"""Subprocess helpers for the parallel tests: CPU device-count env and a free localhost port."""

from __future__ import annotations

import os
import pathlib
import socket

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPTS = pathlib.Path(__file__).resolve().parent


def cpu_env(num_devices: int) -> dict[str, str]:
  """Environment for a child JAX process with `num_devices` simulated CPU devices.

  The device count must be fixed before jax is imported, hence a separate process. LLVM
  optimisation is turned off: these runs check numerics, not speed, and it halves compile time.
  """
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = " ".join(filter(None, [
      env.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={num_devices}",
      "--xla_backend_optimization_level=0"]))
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
  for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SELFRL_DISTRIBUTED"):
    env.pop(var, None)
  return env


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]

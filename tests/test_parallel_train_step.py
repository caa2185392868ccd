"""The real RL train step on 1 device, 8 simulated devices, and 2 local processes: same result."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from parallel_scripts.launch import REPO_ROOT, SCRIPTS, cpu_env, free_port

SCRIPT = str(SCRIPTS / "rl_step.py")
TIMEOUT_S = 240


def _run(prefix, devices, data, fsdp, num_processes=1, mode="fused"):
  port = free_port()
  procs = [subprocess.Popen([sys.executable, SCRIPT, str(prefix), str(data), str(fsdp), str(pid),
                             str(num_processes), str(port), mode], env=cpu_env(devices), cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for pid in range(num_processes)]
  try:
    logs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-4000:]
  return [dict(np.load(f"{prefix}.{pid}.npz")) for pid in range(num_processes)]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  return _run(tmp_path_factory.mktemp("one") / "r", devices=1, data=1, fsdp=1)[0]


@pytest.mark.parametrize("data,fsdp", [(8, 1), (2, 4)])
def test_eight_devices_match_one(single, tmp_path, data, fsdp):
  got = _run(tmp_path / "r", devices=8, data=data, fsdp=fsdp)[0]
  assert int(got["compilations"]) == 1
  assert float(single["reward0"]) > 0 and float(single["loss1"]) != 0
  for key, value in single.items():
    np.testing.assert_allclose(got[key], value, rtol=2e-4, atol=2e-5, err_msg=key)


def test_split_mode_on_eight_devices_matches_fused_on_one(single, tmp_path):
  """Split mode (compiled rollout, host reward phase, compiled update) on a sharded mesh."""
  got = _run(tmp_path / "r", devices=8, data=2, fsdp=4, mode="split")[0]
  assert int(got["compilations"]) == 2  # one program per run of device phases, none recompiled
  for key, value in single.items():
    if key != "compilations":
      np.testing.assert_allclose(got[key], value, rtol=2e-4, atol=2e-5, err_msg=key)


def test_two_processes_match_one(single, tmp_path):
  results = _run(tmp_path / "r", devices=2, data=2, fsdp=2, num_processes=2)
  for got in results:
    for key, value in single.items():
      np.testing.assert_allclose(got[key], value, rtol=2e-4, atol=2e-5, err_msg=key)

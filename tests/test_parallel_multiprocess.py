"""Two local processes joined with jax.distributed (gloo CPU collectives) equal one process.

Each child owns 2 simulated CPU devices and feeds only its half of the batch through
`shard_batch`; the global (data=2, fsdp=2) step must reproduce the single-process loss, per-row
log-probs (so rows landed in process order), gradients and Adam update.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from parallel_scripts import workload
from parallel_scripts.launch import REPO_ROOT, SCRIPTS, cpu_env, free_port

NUM_PROCESSES = 2
TIMEOUT_S = 180


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  prefix = tmp_path_factory.mktemp("multiprocess") / "result"
  port = free_port()
  procs = [subprocess.Popen([sys.executable, str(SCRIPTS / "multi_process.py"), str(pid),
                             str(NUM_PROCESSES), str(port), str(prefix)],
                            env=cpu_env(2), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
           for pid in range(NUM_PROCESSES)]
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=TIMEOUT_S)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  for pid, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, f"process {pid} failed:\n{log[-4000:]}"
  return [(dict(np.load(f"{prefix}.{pid}.npz")), json.loads(open(f"{prefix}.{pid}.json").read()))
          for pid in range(NUM_PROCESSES)]


def test_processes_see_one_global_mesh(run):
  for pid, (_, meta) in enumerate(run):
    assert meta["joined"] is True
    assert (meta["process_index"], meta["process_count"], meta["local_device_count"]) == (pid, 2, 2)
    assert meta["is_main"] == (pid == 0)
    assert meta["global_devices"] == 4
    assert meta["mesh"] == "data=2 fsdp=2 (4 devices, 2 processes, cpu)"
    assert meta["tokens_shape"] == [workload.BATCH, workload.SEQ]
    # Process p's local rows sit at global rows [p*B/2, (p+1)*B/2), two rows per device.
    half = workload.BATCH // 2
    assert meta["tokens_local_rows"] == [pid * half, pid * half + 2]
    assert meta["q_kernel_spec"] == "P('fsdp', None)" and not meta["q_kernel_fully_addressable"]


def test_global_step_equals_single_process(run):
  ref = workload.reference()
  for pid, (results, _) in enumerate(run):
    assert set(results) == set(ref)
    np.testing.assert_allclose(results["logp_B"], ref["logp_B"], rtol=1e-6, err_msg=f"process {pid}")
    for key in ref:
      if key != "logp_B":
        np.testing.assert_allclose(results[key], ref[key], rtol=0, atol=1e-5, err_msg=f"{pid}: {key}")

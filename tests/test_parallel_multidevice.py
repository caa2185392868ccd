"""Sharded training step on 8 simulated CPU devices equals the single-device step.

The work runs in a child process (the device count must be set before jax is imported); see
tests/parallel_scripts/multi_device.py. Meshes: data=8, data=2 x fsdp=4, fsdp=8.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from parallel_scripts.launch import REPO_ROOT, SCRIPTS, cpu_env

MESHES = ("8x1", "2x4", "1x8")
BIG_KERNELS = ("model/layers/0/self_attn/q_proj/kernel", "model/layers/0/mlp/down_proj/kernel",
               "model/embed_tokens/embedding", "lm_head/kernel")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  out = tmp_path_factory.mktemp("multidevice") / "result.npz"
  proc = subprocess.run([sys.executable, str(SCRIPTS / "multi_device.py"), str(out)], env=cpu_env(8),
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return dict(np.load(out)), json.loads(out.with_suffix(".json").read_text())


def test_reference_loss_is_near_uniform(run):
  # Independent sanity check: a freshly initialised (std 0.02) model is close to uniform over 64 tokens.
  results, _ = run
  assert abs(float(results["ref/loss"]) - math.log(64)) < 0.05


@pytest.mark.parametrize("tag", MESHES)
def test_sharded_step_matches_single_device(run, tag):
  results, _ = run
  ref_keys = [k[len("ref/"):] for k in results if k.startswith("ref/")]
  assert len(ref_keys) > 20
  for key in ref_keys:
    got, want = results[f"{tag}/{key}"], results[f"ref/{key}"]
    if key == "logp_B":  # sums of ~15 log-probs of size ~4: compare relatively
      np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=key)
    else:
      np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=key)


@pytest.mark.parametrize("tag,fsdp", [("2x4", 4), ("1x8", 8)])
def test_params_grads_and_opt_state_are_sharded_under_fsdp(run, tag, fsdp):
  _, meta = run
  m = meta[tag]
  for name in BIG_KERNELS:
    assert "fsdp" in m["param_specs"][name], (name, m["param_specs"][name])
  # Each device holds 1/fsdp of the q_proj kernel's d_model rows.
  assert m["q_kernel_shard_shapes"] == [[64 // fsdp, 64]]
  assert m["grad_specs"] == m["param_specs"]
  assert m["new_opt_specs"]["0/mu/model/layers/0/self_attn/q_proj/kernel"] == "P('fsdp', None)"
  assert m["new_opt_specs"]["0/count"] == "P()"
  mirrored = {k: v for k, v in m["new_opt_specs"].items() if "/mu/" in k}
  assert mirrored == {k: v for k, v in m["opt_specs_by_rules"].items() if "/mu/" in k}


def test_data_parallel_keeps_weights_whole_and_splits_rows(run):
  _, meta = run
  assert meta["8x1"]["q_kernel_shard_shapes"] == [[64, 64]]
  for tag in MESHES:
    assert meta[tag]["tokens_spec"] == "P(('data', 'fsdp'),)"
    assert meta[tag]["tokens_shard_shapes"] == [[1, 16]]

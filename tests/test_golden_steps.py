"""GRPO, Dr.GRPO, RLOO and every SCoRe arm give the recorded parameters and metrics, bit for bit
(fused; split once per algorithm family).

The digests in tests/golden/train_steps.json were recorded (tests/golden_steps.py --record) before
the algorithms moved onto the phase / registry extension point; any change to the numbers of the
shared step, the rollouts or an algorithm fails here. Bytes are compared only on the machine kind
the digests were recorded on (same CPU model and jaxlib); elsewhere metrics and the parameter sum
are compared to float tolerance.
"""

import json

import numpy as np
import pytest

import golden_steps

GOLDEN = json.loads(golden_steps.GOLDEN.read_text())
SAME_MACHINE = GOLDEN["machine"] == golden_steps.machine()


@pytest.mark.parametrize("case,mode", golden_steps.CASE_MODES, ids=lambda v: v)
def test_train_steps_match_golden(case, mode):
  want = GOLDEN["cases"][f"{case}/{mode}"]
  got = golden_steps.run_case(case, mode)
  assert set(got["metrics"]) == set(want["metrics"]), set(got["metrics"]) ^ set(want["metrics"])
  if SAME_MACHINE:
    assert got["params_sha256"] == want["params_sha256"]
    assert got["metrics"] == want["metrics"]
  else:
    np.testing.assert_allclose(got["param_sum"], want["param_sum"], rtol=1e-5)
    for k, v in want["metrics"].items():
      np.testing.assert_allclose(got["metrics"][k], v, rtol=1e-4, atol=1e-6, err_msg=k)

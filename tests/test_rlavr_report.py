"""The RLAVR toy report: summaries from run logs, and §10's claims decided on the numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import rlavr_toy


def _write_run(workdir, arm, seed, agreement, true_acc, entropy, label_acc, care=False):
  """A metrics.jsonl of 20 training rows whose metrics move linearly between the given (first, last)."""
  path = workdir / arm / f"seed_{seed}"
  path.mkdir(parents=True)
  with open(path / "metrics.jsonl", "w") as f:
    for i, t in enumerate(np.linspace(0.0, 1.0, 20)):
      lerp = lambda pair: pair[0] + t * (pair[1] - pair[0])  # noqa: E731
      row = {"step": i + 1, "loss": 0.0, "rlavr/labels_spent": 13.0 * (i + 1) * (arm != "ttrl"),
             "rlavr/agreement": lerp(agreement), "rlavr/true_acc": lerp(true_acc),
             "rlavr/answer_entropy": lerp(entropy), "rlavr/label_acc_used": lerp(label_acc),
             "rlavr/confident_wrong_frac": 0.1}
      if care:
        row.update({"rlavr/stage1_auroc": 0.7, "rlavr/recall_at_p": 0.5})
      f.write(json.dumps(row) + "\n")


def _summary(base, final):
  return {"initial": {"eval/accuracy": base}, "final": {"eval/accuracy": final},
          "history": {"step": [0, 20], "eval/accuracy": [base, final]}}


def _runs(tmp_path, finals):
  runs = {}
  for arm, by_seed in finals.items():
    runs[arm] = {}
    for seed, final in enumerate(by_seed):
      collapse = arm == "ttrl"
      _write_run(tmp_path, arm, seed, agreement=(0.45, 0.9 if collapse else 0.5), true_acc=(0.25, 0.3),
                 entropy=(1.3, 0.2 if collapse else 1.1), label_acc=(0.3, 0.3), care=arm == "care")
      runs[arm][seed] = _summary(0.4, final)
  return runs


def test_summary_and_every_claim_holding(tmp_path):
  finals = {"ttrl": [0.35, 0.37], "gt_only_random": [0.45, 0.47], "rlavr_random": [0.5, 0.52],
            "care": [0.55, 0.57], "oracle_cag": [0.6, 0.6], "full_gt": [0.7, 0.74]}
  rows = rlavr_toy.summarize(_runs(tmp_path, finals), str(tmp_path))
  assert rows["care"]["final_acc"] == pytest.approx((0.56, 0.01))
  assert rows["ttrl"]["rlavr/agreement@first"][0] == pytest.approx(np.mean(np.linspace(0.45, 0.9, 20)[:10]))
  assert rows["care"]["labels_spent"][0] == 13.0 * 20 and rows["ttrl"]["labels_spent"][0] == 0.0
  assert rows["care"]["rlavr/stage1_auroc"][0] == pytest.approx(0.7) and "rlavr/stage1_auroc" not in rows["ttrl"]
  checked = rlavr_toy.claims(rows)
  assert len(checked) == 9 and all(ok for _, ok, _ in checked), checked
  table = rlavr_toy.format_table(rows, num_seeds=2)
  assert "| CARE | 0.400 ± 0.000 | 0.560 ± 0.010 |" in table


def test_claims_that_fail_are_reported_with_their_numbers(tmp_path):
  finals = {"ttrl": [0.5, 0.5], "rlavr_random": [0.6, 0.6], "care": [0.45, 0.47], "full_gt": [0.5, 0.5]}
  checked = {c: (ok, n) for c, ok, n in rlavr_toy.claims(rlavr_toy.summarize(_runs(tmp_path, finals), str(tmp_path)))}
  assert checked["TTRL: held-out accuracy plateaus or falls (gain <= 0.02)"] == (False, "held-out 0.400 -> 0.500")
  ok, numbers = checked["CARE >= RLAVR-random (GT + pseudo) (held-out, tie 0.01)"]
  assert not ok and numbers.startswith("0.460 ± 0.010 vs 0.600")
  assert not checked["Full GT on top"][0]
  assert not any("Oracle" in c for c in checked)  # an arm that was not run decides nothing
  text = rlavr_toy.format_claims(rlavr_toy.claims(rlavr_toy.summarize(_runs(tmp_path / "x", finals), str(tmp_path / "x"))))
  assert "**does NOT hold**" in text

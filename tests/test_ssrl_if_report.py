"""The SSRL-IF toy report decides each §9.6 claim on the numbers it is given (and can say no)."""

from experiments import ssrl_if_toy


def _rows(acc, zero, rm_scored=0.5, hard=0.5, pl_soft=0.7, auc=0.8):
  return {"eval/accuracy@final": (acc, 0.01), "eval/accuracy@base": (0.4, 0.0), "eval/hard_acc@final": (hard, 0.0),
          "zero_std_group_frac@all": (zero, 0.0), "reward/rm_scored@last": (rm_scored, 0.0),
          "prepare/pseudo_label_acc": (0.6, 0.0), "prepare/pseudo_label_acc_soft": (pl_soft, 0.0),
          "prepare/rm_oracle_auc_soft": (auc, 0.0)}


def _runs(accs):
  return {s: {"final": {"eval/accuracy": a}} for s, a in enumerate(accs)}


def test_claims_hold_on_numbers_that_show_them():
  rows = {"sparse_full": _rows(0.50, 0.6), "dense_full": _rows(0.55, 0.2), "method": _rows(0.60, 0.1, hard=0.6),
          "binary_rm": _rows(0.59, 0.2), "rm_only": _rows(0.52, 0.1, rm_scored=0.8, hard=0.4),
          "oracle_soft": _rows(0.62, 0.1)}
  runs = {"sparse_full": _runs([0.5, 0.5, 0.5]), "method": _runs([0.6, 0.6, 0.4])}
  checked = {c: ok for c, ok, _ in ssrl_if_toy.claims(rows, runs)}
  assert all(checked.values()), checked


def test_claims_fail_on_numbers_that_do_not():
  rows = {"sparse_full": _rows(0.60, 0.1, pl_soft=0.52, auc=0.45), "method": _rows(0.50, 0.5),
          "rm_only": _rows(0.55, 0.1, rm_scored=0.3, hard=0.7), "oracle_soft": _rows(0.40, 0.1)}
  runs = {"sparse_full": _runs([0.6, 0.6, 0.6]), "method": _runs([0.5, 0.7, 0.5])}
  checked = {c: ok for c, ok, _ in ssrl_if_toy.claims(rows, runs)}
  assert not any(checked.values()), checked
  assert len(checked) == 6  # two preconditions, C > A, A most zero-variance, F >= C, E's signature

"""Synthetic tasks: determinism, disjoint splits, exact arithmetic, SCoRe bug subset, tfds caching."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from selfrl_jax.data import arithmetic, builders, tasks
from selfrl_jax.data.records import record_meta


def _column_add(a: int, b: int, drop_units_carry: bool) -> int:
  """Schoolbook addition digit by digit, optionally losing the carry out of the units column."""
  da, db = str(a)[::-1], str(b)[::-1]
  out, carry = [], 0
  for i in range(max(len(da), len(db))):
    s = int(da[i] if i < len(da) else 0) + int(db[i] if i < len(db) else 0) + carry
    out.append(s % 10)
    carry = s // 10
    if i == 0 and drop_units_carry:
      carry = 0
  if carry:
    out.append(carry)
  return int("".join(map(str, out[::-1])))


def test_same_seed_same_records_and_seed_changes_them():
  t1 = tasks.make_task("arithmetic", splits={"train": 30, "test": 10}, seed=7, operators=("+", "-", "*"))
  t2 = tasks.make_task("arithmetic", splits={"train": 30, "test": 10}, seed=7, operators=("+", "-", "*"))
  t3 = tasks.make_task("arithmetic", splits={"train": 30, "test": 10}, seed=8, operators=("+", "-", "*"))
  assert t1.records("train") == t2.records("train")
  assert t1.record("test", 3) == t2.record("test", 3)  # random access == sequential
  assert t1.records("train") != t3.records("train")
  assert t1.config_id() == t2.config_id() != t3.config_id()


def test_splits_are_disjoint():
  # 2-digit addition has only 8100 problems, so overlap would be likely without the split hash.
  t = tasks.make_task("arithmetic", num_digits=2, splits={"train": 2000, "test": 500}, seed=1)
  train = {r["prompt"] for r in t.records("train")}
  test = {r["prompt"] for r in t.records("test")}
  assert len(test) > 400 and not train & test


@pytest.mark.parametrize("reverse", [False, True])
def test_arithmetic_answers_exact(reverse):
  t = tasks.make_task("arithmetic", num_digits=4, min_digits=1, operators=("+", "-", "*"),
                      reverse_answer=reverse, allow_negative=True, splits={"train": 300})
  ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
  seen_ops, seen_neg = set(), False
  for r in t.records("train"):
    a_str, rest = r["prompt"][:-1].split(record_meta(r)["op"], 1)  # "12*345=" -> "12", "345"
    op = record_meta(r)["op"]
    a, b = int(a_str), int(rest)
    want = ops[op](a, b)
    digits = str(abs(want))[::-1] if reverse else str(abs(want))
    assert r["answer"] == ("-" if want < 0 else "") + digits, r
    assert arithmetic.parse_number(r["answer"], reverse) == want
    assert 1 <= len(a_str) <= 4 and 1 <= len(rest) <= 4
    seen_ops.add(op)
    seen_neg |= want < 0
  assert seen_ops == {"+", "-", "*"} and seen_neg


def test_subtraction_non_negative_by_default():
  t = tasks.make_task("arithmetic", operators=("-",), splits={"train": 200})
  assert all(record_meta(r)["result"] >= 0 and not r["answer"].startswith("-") for r in t.records("train"))


def test_buggy_sum_hand_examples():
  assert (157 + 165, arithmetic.buggy_sum(157, 165)) == (322, 312)
  assert arithmetic.buggy_sum(155, 145) == 290  # carry chain: 300 without the units carry
  assert arithmetic.buggy_sum(123, 456) == 579  # no units carry: nothing to drop
  rng = np.random.default_rng(0)
  for a, b in rng.integers(100, 1000, size=(2000, 2)):
    assert arithmetic.buggy_sum(int(a), int(b)) == _column_add(int(a), int(b), drop_units_carry=True)


def test_bug_subset_fraction_and_buggy_answers():
  t = tasks.make_task("arithmetic_bugged", splits={"train": 5000}, seed=0)
  recs = t.records("train")
  metas = [record_meta(r) for r in recs]
  frac = np.mean([m["is_bug"] for m in metas])
  assert abs(frac - 0.4) <= 0.05, frac
  for r, m in zip(recs, metas):
    a, b = m["a"], m["b"]
    assert 100 <= a <= 999 and 100 <= b <= 999 and r["prompt"] == f"{a}+{b}="
    assert m["is_bug"] == arithmetic.is_bug_subset(a, b)
    assert r["answer"] == str(a + b)[::-1]  # least-significant digit first
    wrong = _column_add(a, b, drop_units_carry=True) if m["is_bug"] else a + b
    assert r["buggy_answer"] == str(wrong)[::-1]
    assert (r["buggy_answer"] != r["answer"]) == m["is_bug"]  # every bug-subset answer is wrong


def test_unknown_names_raise_clear_errors():
  with pytest.raises(ValueError, match="valid tasks: .*arithmetic"):
    tasks.make_task("arithmetc")
  with pytest.raises(ValueError, match="valid fields"):
    tasks.make_task("arithmetic", digits=3)
  with pytest.raises(ValueError, match="operators"):
    tasks.make_task("arithmetic", operators=("/",))
  with pytest.raises(ValueError, match="valid splits"):
    tasks.make_task("arithmetic", splits={"train": 3}).record("test", 0)


def test_builder_writes_once_and_reads_back(tmp_path, monkeypatch):
  task = tasks.make_task("arithmetic_bugged", splits={"train": 24, "test": 8}, seed=3)
  src = builders.load_task_split(task, "train", str(tmp_path))
  assert len(src) == 24
  assert [src[i] for i in range(24)] == task.records("train")  # array position == record index
  test = builders.load_task_split(task, "test", str(tmp_path))
  assert [test[i] for i in range(8)] == task.records("test")
  files = sorted(os.listdir(tmp_path / "selfrl_arithmetic_bugged" / task.config_id() / task.version))
  assert any("array_record" in f for f in files)
  info = json.loads((tmp_path / "selfrl_arithmetic_bugged" / task.config_id() / task.version
                     / "dataset_info.json").read_text())
  assert {s["name"] for s in info["splits"]} == {"train", "test"}

  def fail(*args, **kwargs):
    raise AssertionError("generate() called although the data is cached")

  monkeypatch.setattr(type(task), "generate", fail)
  again = builders.load_task_split(tasks.make_task("arithmetic_bugged", splits={"train": 24, "test": 8}, seed=3),
                                   "train", str(tmp_path))
  assert again[5] == src[5]
  # A different config lands in its own directory instead of reusing the cached one.
  other = tasks.make_task("arithmetic_bugged", splits={"train": 24, "test": 8}, seed=4)
  assert other.config_id() != task.config_id()

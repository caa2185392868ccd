"""Benchmark loaders on the real shared files, plus malformed rows, missing files and MATH dirs."""

from __future__ import annotations

import json
import logging

import pytest

from selfrl_jax.data import benchmarks
from selfrl_jax.data.records import record_meta


def _mbpp_ids(shared_data):
  return [json.loads(line)["task_id"] for line in open(shared_data / "mbpp" / "mbpp.jsonl")]


def test_gsm8k(shared_data):
  test = benchmarks.load_gsm8k("test", root=str(shared_data))
  train = benchmarks.load_benchmark("gsm8k", split="train", root=str(shared_data))
  assert (len(test), len(train), test.num_skipped) == (1319, 7473, 0)
  first = json.loads(open(shared_data / "gsm8k" / "test.jsonl").readline())
  assert test[0]["prompt"] == first["question"]
  assert test[0]["answer"] == first["answer"].split("#### ")[-1].strip() == "18"
  assert all(r["answer"].lstrip("-").replace(".", "").isdigit() for r in test)  # commas removed
  assert benchmarks.gsm8k_final_answer("a\n#### 1,080") == "1080"


def test_math500_answers_match_boxed_solutions(shared_data):
  src = benchmarks.load_math500(root=str(shared_data))
  assert len(src) == 500 and src.num_skipped == 0
  assert not any(r["prompt"].startswith("Return your final response") for r in src)
  # Independent check of both the loader and last_boxed_answer: the reference answer is the last box.
  assert all(benchmarks.last_boxed_answer(record_meta(r)["solution"]) == r["answer"] for r in src)
  assert record_meta(src[0])["unique_id"] == "test/precalculus/807.json"


def test_mbpp_splits_follow_task_id_rules(shared_data):
  ids = _mbpp_ids(shared_data)
  want = {"test": sum(11 <= i <= 510 for i in ids), "prompt": sum(i <= 10 for i in ids),
          "validation": sum(511 <= i <= 600 for i in ids), "train": sum(i >= 601 for i in ids)}
  assert want == {"test": 500, "prompt": 10, "validation": 90, "train": 374}
  for split, n in want.items():
    src = benchmarks.load_mbpp(split, root=str(shared_data))
    assert len(src) == n and src.num_skipped == 0
  test = benchmarks.load_mbpp("test", root=str(shared_data))
  meta = record_meta(test[0])
  assert meta["task_id"] == 11 and len(meta["test_list"]) == 3
  assert test[0]["prompt"].endswith("\n".join(meta["test_list"])) and "\r" not in test[0]["answer"]
  sanitized = json.load(open(shared_data / "mbpp" / "sanitized-mbpp.json"))
  s_test = benchmarks.load_benchmark("mbpp_sanitized", split="test", root=str(shared_data))
  assert len(s_test) == sum(11 <= r["task_id"] <= 510 for r in sanitized) == 257


def test_ifeval(shared_data):
  src = benchmarks.load_ifeval(root=str(shared_data))
  assert len(src) == 541 and src.num_skipped == 0
  meta = record_meta(src[0])
  assert meta["key"] == 1000 and meta["instruction_id_list"][0] == "punctuation:no_comma"
  assert src[0]["answer"] == "" and src[0]["prompt"].startswith("Write a 300+ word summary")


def test_malformed_rows_skipped_counted_and_logged(tmp_path, caplog):
  good = {"question": "1+1?", "answer": "so\n#### 2"}
  lines = [json.dumps(good), "{not json", json.dumps({"question": "q"}),  # bad JSON; no answer
           json.dumps({"question": 3, "answer": "#### 1"}),                  # wrong type
           json.dumps({"question": "q", "answer": "no marker"}), "[1, 2]",  # no ####; not an object
           "", json.dumps(good)]
  (tmp_path / "gsm8k").mkdir()
  (tmp_path / "gsm8k" / "test.jsonl").write_text("\n".join(lines) + "\n")
  with caplog.at_level(logging.WARNING):
    src = benchmarks.load_gsm8k("test", root=str(tmp_path))
  assert len(src) == 2 and [r["answer"] for r in src] == ["2", "2"]
  assert [row.line for row in src.skipped] == [2, 3, 4, 5, 6]
  assert "test.jsonl:2" in caplog.text and "test.jsonl:6" in caplog.text


def test_missing_file_names_path_and_env_var(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match=r"gsm8k/test\.jsonl.*SELFRL_SHARED_DATA"):
    benchmarks.load_gsm8k("test", root=str(tmp_path))
  monkeypatch.setenv("SELFRL_SHARED_DATA", str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match="nowhere"):
    benchmarks.load_ifeval()
  with pytest.raises(ValueError, match="valid benchmarks"):
    benchmarks.load_benchmark("gsm9k")


def test_env_var_sets_default_root(shared_data, monkeypatch):
  monkeypatch.setenv("SELFRL_SHARED_DATA", str(shared_data))
  assert len(benchmarks.load_math500()) == 500


def test_math_dir_loader(tmp_path):
  # Hendrycks layout: <split>/<subject>/<n>.json. MATH train itself is not in the shared data.
  (tmp_path / "algebra").mkdir()
  (tmp_path / "geometry").mkdir()
  solution = r"So $x = \frac{1}{2}$ and thus $\boxed{\frac{1}{\sqrt{2}}}$."
  (tmp_path / "algebra" / "10.json").write_text(json.dumps(
      {"problem": "P10", "level": "Level 3", "type": "Algebra", "solution": solution}))
  (tmp_path / "algebra" / "2.json").write_text(json.dumps(
      {"problem": "P2", "level": "Level 1", "type": "Algebra", "solution": r"$\boxed 5$."}))
  (tmp_path / "geometry" / "1.json").write_text(json.dumps(
      {"problem": "G1", "level": "Level 5", "type": "Geometry", "solution": "no box"}))
  (tmp_path / "geometry" / "3.json").write_text("{broken")
  src = benchmarks.load_math_dir(str(tmp_path))
  assert [(r["prompt"], r["answer"]) for r in src] == [("P2", "5"), ("P10", r"\frac{1}{\sqrt{2}}")]
  assert record_meta(src[1])["level"] == 3 and src.num_skipped == 2
  with pytest.raises(FileNotFoundError, match="MATH directory"):
    benchmarks.load_math_dir(str(tmp_path / "missing"))

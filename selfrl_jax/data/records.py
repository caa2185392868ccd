"""Text records shared by every data source, and a JSONL reader that skips and counts bad rows.

A record is a plain dict with at least three strings:

    {"prompt": "157+165=", "answer": "322", "meta": '{"a": 157, "b": 165}'}

`meta` is a JSON string (so a record stores as three text features in array_record files); tasks may
add further string fields (e.g. `buggy_answer`). Every source here is random access (`len`,
`__getitem__`) and can be passed to `grain.MapDataset.source`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("prompt", "answer", "meta")
SHARED_DATA_ENV = "SELFRL_SHARED_DATA"


def _as_str(value: Any) -> Any:
  # tfds array_record sources hand text features back as bytes.
  return value.decode("utf-8") if isinstance(value, bytes) else value


def normalize_record(raw: Mapping[str, Any]) -> dict[str, Any]:
  """Record with bytes decoded to str; raises KeyError/TypeError naming a missing or non-str field."""
  rec = {k: _as_str(v) for k, v in raw.items()}
  for field in REQUIRED_FIELDS:
    if field not in rec:
      raise KeyError(f"record lacks field {field!r} (has {sorted(rec)})")
    if not isinstance(rec[field], str):
      raise TypeError(f"record field {field!r} must be str, got {type(rec[field]).__name__}")
  return rec


def make_record(prompt: str, answer: str, meta: Mapping[str, Any] | None = None, **extra: str) -> dict[str, str]:
  """Builds a record; `meta` is serialised to JSON with sorted keys so records are byte-stable."""
  return {"prompt": prompt, "answer": answer, "meta": json.dumps(dict(meta or {}), sort_keys=True), **extra}


def record_meta(record: Mapping[str, Any]) -> dict[str, Any]:
  """The record's `meta` field parsed back into a dict."""
  return json.loads(_as_str(record["meta"]))


@dataclasses.dataclass
class SkippedRow:
  path: str
  line: int  # 1-based line number (or array position for whole-file JSON)
  reason: str


class RecordSource(Sequence):
  """An in-memory list of records, random access, usable as a grain `MapDataset` source.

  Attributes:
    skipped: rows of the underlying file(s) that were malformed and left out, with file and line.
  """

  def __init__(self, records: Sequence[dict[str, Any]], name: str = "records",
               skipped: Sequence[SkippedRow] = ()):
    self._records = list(records)
    self.name = name
    self.skipped = list(skipped)

  @property
  def num_skipped(self) -> int:
    return len(self.skipped)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self._records[index]
    return self._records[int(index)]

  def __iter__(self) -> Iterator[dict[str, Any]]:
    return iter(self._records)

  def __repr__(self) -> str:
    return f"RecordSource(name={self.name!r}, len={len(self)}, skipped={self.num_skipped})"


def resolve_shared_path(relative: str, root: str | os.PathLike | None = None) -> str:
  """Absolute path of `relative` under the shared benchmark data directory.

  The root is `root`, else `$SELFRL_SHARED_DATA`, else `../shared/data` next to the repository.
  Raises FileNotFoundError naming the path and the environment variable when it is missing.
  """
  if root is None:
    root = os.environ.get(SHARED_DATA_ENV)
  if root is None:
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    root = os.path.join(os.path.dirname(repo), "shared", "data")
  path = os.path.join(os.fspath(root), relative)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"Data file {path!r} not found. Pass the data directory explicitly or set "
        f"${SHARED_DATA_ENV} to the folder holding {relative!r}.")
  return path


def read_jsonl(path: str, to_record: Callable[[dict[str, Any], int], dict[str, Any] | None],
               name: str | None = None) -> RecordSource:
  """Reads a JSONL file row by row; rows that fail to parse or convert are skipped and counted.

  Args:
    path: the .jsonl file.
    to_record: `(row, line_number) -> record | None`; None drops the row on purpose (e.g. another
      split) without counting it. Any KeyError/TypeError/ValueError it raises marks the row malformed.
    name: source name for logs and repr.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"Data file {path!r} not found (set ${SHARED_DATA_ENV} or pass the path).")
  records, skipped = [], []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        if not isinstance(row, dict):
          raise TypeError(f"expected a JSON object, got {type(row).__name__}")
        rec = to_record(row, lineno)
      except (ValueError, KeyError, TypeError, IndexError) as e:  # json.JSONDecodeError is a ValueError
        skipped.append(SkippedRow(path, lineno, f"{type(e).__name__}: {e}"))
        continue
      if rec is not None:
        records.append(rec)
  _warn_skipped(path, skipped)
  return RecordSource(records, name=name or os.path.basename(path), skipped=skipped)


def convert_rows(path: str, rows: Sequence[Any],
                 to_record: Callable[[dict[str, Any], int], dict[str, Any] | None],
                 name: str | None = None) -> RecordSource:
  """Like `read_jsonl` for rows already parsed from a whole-file JSON array (line = array position)."""
  records, skipped = [], []
  for pos, row in enumerate(rows):
    try:
      if not isinstance(row, dict):
        raise TypeError(f"expected a JSON object, got {type(row).__name__}")
      rec = to_record(row, pos)
    except (ValueError, KeyError, TypeError, IndexError) as e:
      skipped.append(SkippedRow(path, pos, f"{type(e).__name__}: {e}"))
      continue
    if rec is not None:
      records.append(rec)
  _warn_skipped(path, skipped)
  return RecordSource(records, name=name or os.path.basename(path), skipped=skipped)


def _warn_skipped(path: str, skipped: Sequence[SkippedRow]) -> None:
  for row in skipped[:10]:
    log.warning("Skipping malformed row %s:%d (%s)", row.path, row.line, row.reason)
  if len(skipped) > 10:
    log.warning("... %d malformed rows skipped in %s in total", len(skipped), path)

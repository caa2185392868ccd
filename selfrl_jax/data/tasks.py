"""Synthetic task families: a name, a deterministic generator `(rng, index) -> record`, a config.

A new family (instruction-constraint tasks, agent tasks, ...) subclasses `Task`, implements
`generate` (and `problem_key` when two different prompts can be the same problem), and registers
itself with `@register_task`. Everything else — per-record seeding, disjoint splits, the tfds
builder and the grain pipeline — is shared:

    task = make_task("arithmetic", num_digits=3, splits={"train": 5000, "test": 1000}, seed=0)
    rec = task.record("train", 17)        # same dict on every call and machine
    src = load_task_split(task, "train")  # builders.py: cached array_record files

Splits are disjoint by construction: a seeded hash assigns every problem key to exactly one split
(in proportion to the split sizes), and `record` redraws until the problem lands in the asked split.
Within one split, problems may repeat (sampling with replacement).
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
from typing import Any, ClassVar, Mapping

import numpy as np

_MAX_REDRAWS = 10_000


def stable_hash(text: str, seed: int = 0) -> int:
  """A 64-bit hash of `text` that is the same across processes and Python versions."""
  digest = hashlib.blake2b(f"{seed}:{text}".encode(), digest_size=8).digest()
  return int.from_bytes(digest, "little")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """Config every task shares.

  Attributes:
    seed: root seed; record i of split s is drawn from `default_rng([seed, split_id, i])`.
    splits: split name -> number of records.
  """
  seed: int = 0
  splits: Mapping[str, int] = dataclasses.field(default_factory=lambda: {"train": 5000, "test": 1000})

  def __post_init__(self):
    if not self.splits:
      raise ValueError("TaskConfig.splits must name at least one split, e.g. {'train': 1000}.")
    for name, size in self.splits.items():
      if not isinstance(size, (int, np.integer)) or size <= 0:
        raise ValueError(f"TaskConfig.splits[{name!r}] must be a positive int, got {size!r}.")
    object.__setattr__(self, "splits", dict(self.splits))


class Task(abc.ABC):
  """A deterministic family of text problems. Subclasses set `name`, `version`, `config_cls`."""

  name: ClassVar[str]
  version: ClassVar[str] = "1.0.0"  # bump when `generate` changes so cached builders regenerate
  config_cls: ClassVar[type[TaskConfig]] = TaskConfig
  extra_fields: ClassVar[tuple[str, ...]] = ()  # string fields beyond prompt/answer/meta

  def __init__(self, config: TaskConfig | None = None, **overrides: Any):
    config = config or self.config_cls()
    if overrides:
      valid = {f.name for f in dataclasses.fields(config)}
      unknown = sorted(set(overrides) - valid)
      if unknown:
        raise ValueError(f"Unknown {self.name} config fields {unknown}; valid fields: {sorted(valid)}.")
      config = dataclasses.replace(config, **overrides)
    self.config = config
    self.validate()

  def validate(self) -> None:
    """Raises ValueError for an inconsistent config; subclasses extend."""

  @abc.abstractmethod
  def generate(self, rng: np.random.Generator, index: int) -> dict[str, str]:
    """One record drawn with `rng` (already seeded for this split and index)."""

  def problem_key(self, record: Mapping[str, str]) -> str:
    """Identity of the underlying problem, used to keep splits disjoint."""
    return record["prompt"]

  @property
  def splits(self) -> dict[str, int]:
    return dict(self.config.splits)

  def config_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self.config)

  def config_id(self) -> str:
    """Short stable id of (name, version, config); names the cached builder directory."""
    blob = json.dumps({"name": self.name, "version": self.version, "config": self.config_dict()},
                      sort_keys=True, default=str)
    return f"c{stable_hash(blob):016x}"[:13]

  def split_of(self, key: str) -> str:
    """The one split that owns problem `key` (hash bucket proportional to split sizes)."""
    names = sorted(self.config.splits)
    total = sum(self.config.splits[n] for n in names)
    u = stable_hash(key, self.config.seed) / 2.0**64 * total
    acc = 0
    for n in names:
      acc += self.config.splits[n]
      if u < acc:
        return n
    return names[-1]

  def record(self, split: str, index: int) -> dict[str, str]:
    """Record `index` of `split`: deterministic in (config, split, index)."""
    if split not in self.config.splits:
      raise ValueError(f"{self.name}: unknown split {split!r}; valid splits: {sorted(self.config.splits)}.")
    split_id = sorted(self.config.splits).index(split)
    rng = np.random.default_rng([self.config.seed, split_id, index])
    for _ in range(_MAX_REDRAWS):
      rec = self.generate(rng, index)
      if len(self.config.splits) == 1 or self.split_of(self.problem_key(rec)) == split:
        return rec
    raise RuntimeError(f"{self.name}: no problem of split {split!r} found in {_MAX_REDRAWS} draws; "
                       "the problem space is too small for these splits.")

  def records(self, split: str, n: int | None = None) -> list[dict[str, str]]:
    """The first `n` (default: all) records of `split`, in index order."""
    n = self.config.splits[split] if n is None else n
    return [self.record(split, i) for i in range(n)]


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
  """Class decorator adding a task family to the registry under `cls.name`."""
  if cls.name in TASKS and TASKS[cls.name] is not cls:
    raise ValueError(f"Task name {cls.name!r} is already registered by {TASKS[cls.name].__name__}.")
  TASKS[cls.name] = cls
  return cls


def make_task(name: str, config: TaskConfig | None = None, **overrides: Any) -> Task:
  """Builds a registered task by name; unknown names raise ValueError listing the valid ones."""
  if name not in TASKS:
    raise ValueError(f"Unknown task {name!r}; valid tasks: {sorted(TASKS)}.")
  return TASKS[name](config, **overrides)


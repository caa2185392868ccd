"""tfds builders for synthetic tasks: array_record files on disk, written once, no TensorFlow.

    builder = prepare_task(task, data_dir)            # generates only if not already on disk
    train = load_task_split(task, "train", data_dir)  # random-access source of str records

Files live in `<data_dir>/selfrl_<task name>/<task.config_id()>/<task version>/`, so every distinct
config (digits, seed, split sizes, ...) gets its own directory and a second call reuses the files.
Generation is deterministic, so hosts of a multi-host job may each prepare their own local copy.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
from typing import Any

from selfrl_jax.data.records import normalize_record
from selfrl_jax.data.tasks import Task

DATA_DIR_ENV = "SELFRL_TFDS_DIR"


def default_data_dir() -> str:
  """`$SELFRL_TFDS_DIR`, else ~/.cache/selfrl_jax/tfds."""
  return os.environ.get(DATA_DIR_ENV, os.path.expanduser("~/.cache/selfrl_jax/tfds"))


@functools.lru_cache(maxsize=None)
def _builder_class(task_name: str):
  """One tfds builder class per task family (tfds keys directories by the class `name`)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel  # ~1.5 s import

  class _TaskBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Writes `task.record(split, i)` for i < split size, in index order."""

    name = f"selfrl_{task_name}"

    def __init__(self, task: Task, **kwargs: Any):
      self.task = task
      self.VERSION = tfds.core.Version(task.version)  # pylint: disable=invalid-name
      super().__init__(config=tfds.core.BuilderConfig(name=task.config_id(),
                                                      description=json.dumps(task.config_dict(), default=str)),
                       **kwargs)

    def _info(self):
      text = {f: tfds.features.Text() for f in ("prompt", "answer", "meta", *self.task.extra_fields)}
      return tfds.core.DatasetInfo(
          builder=self,
          description=f"selfrl_jax synthetic task {self.task.name}: {self.task.config_dict()}",
          features=tfds.features.FeaturesDict(text),
          # Keep index order: array position == record index == example id.
          disable_shuffling=True,
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(split) for split in sorted(self.task.splits)}

    def _generate_examples(self, split: str):
      for i in range(self.task.splits[split]):
        yield i, self.task.record(split, i)

  return _TaskBuilder


def task_builder(task: Task, data_dir: str | None = None):
  """The (not necessarily prepared) tfds builder of `task` under `data_dir`."""
  data_dir = os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))
  return _builder_class(task.name)(task, data_dir=data_dir, file_format="array_record")


def prepare_task(task: Task, data_dir: str | None = None):
  """Builder of `task` with its files written; a no-op when they already exist.

  Processes that prepare the same task at once (parallel test workers, `reproduce.py --jobs`) wait
  for each other on a lock file beside the data, so the files are written once.
  """
  builder = task_builder(task, data_dir)
  if not builder.is_prepared():
    lock_path = os.path.join(builder.data_dir_root, f".{builder.name}.{task.config_id()}.lock")
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    with open(lock_path, "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      builder = task_builder(task, data_dir)   # re-read: another process may have just written it
      if not builder.is_prepared():
        builder.download_and_prepare(file_format="array_record")
  return builder


class TaskSource:
  """Random-access view of one prepared split that hands back str (not bytes) records."""

  def __init__(self, data_source, task: Task, split: str):
    self._source = data_source
    self.task = task
    self.split = split
    self.name = f"{task.name}/{split}"

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, str]:
    return normalize_record(self._source[int(index)])

  def __repr__(self) -> str:
    return f"TaskSource({self.name}, config={self.task.config_id()}, len={len(self)})"


def load_task_split(task: Task, split: str, data_dir: str | None = None) -> TaskSource:
  """Prepares `task` if needed and returns `split` as a random-access record source."""
  if split not in task.splits:
    raise ValueError(f"{task.name}: unknown split {split!r}; valid splits: {sorted(task.splits)}.")
  builder = prepare_task(task, data_dir)
  return TaskSource(builder.as_data_source(split=split), task, split)

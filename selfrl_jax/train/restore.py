"""A trained run, restored read-only from its workdir: for evaluation and sampling after training.

    run = restore_run("/tmp/grpo")                    # the config saved with the run
    model = run.model()                               # NNX policy with the newest good parameters
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import ml_collections
from flax import nnx

from selfrl_jax.train import builders
from selfrl_jax.train.builders import ConfigError
from selfrl_jax.train.checkpoint import CheckpointManager
from selfrl_jax.train.state import create_train_state, make_optimizer


@dataclasses.dataclass
class RestoredRun:
  """cfg: the config used; changes: how it differs from the saved one ("" if it is the saved one)."""
  cfg: ml_collections.ConfigDict
  graphdef: Any
  restored: Any  # checkpoint.Restored: .step, .state (TrainState)
  tokenizer: Any
  test_source: Any
  changes: str

  def model(self):
    return nnx.merge(self.graphdef, self.restored.state.params)


def is_run_dir(path: str) -> bool:
  return os.path.isdir(os.path.join(path, "checkpoints"))


def restore_run(workdir: str, cfg: ml_collections.ConfigDict | None = None,
                edit: Callable[[ml_collections.ConfigDict], None] | None = None) -> RestoredRun:
  """The newest good checkpoint of `workdir`, never writing to it.

  Args:
    cfg: a config replacing the saved one (its differences are reported in `changes`).
    edit: applied (unlocked) to the config before anything is built, e.g. a smaller eval size.

  Raises:
    FileNotFoundError: no checkpoint in the workdir.
    ConfigError: the checkpoint does not fit `cfg`, naming the fields that differ from the saved one.
  """
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  ckpt = CheckpointManager(directory, read_only=True)
  saved = ckpt.saved_config()
  if saved is None:
    raise FileNotFoundError(f"no checkpoint in {directory}")
  changes = "" if cfg is None else builders.config_differences(saved, cfg)
  cfg = ml_collections.ConfigDict(saved) if cfg is None else cfg
  if edit is not None:
    with cfg.unlocked():
      edit(cfg)
  builders.validate_config(cfg)
  model, tok = builders.build_model(cfg)
  train_source, _, test_source = builders.build_sources(cfg)
  # The algorithm shapes the restore target: its state (TrainState.algo_state) is checkpointed too.
  algorithm = builders.build_algorithm(cfg, tok, train_source)
  graphdef, state = create_train_state(model, make_optimizer(cfg.optim), cfg.seed, keep_reference=False,
                                       algorithm=algorithm)
  abstract = jax.eval_shape(lambda: state)
  try:
    restored = ckpt.restore_latest(abstract)
  except Exception as e:  # noqa: BLE001 - shapes that disagree with the config surface as assorted errors
    if changes:
      raise ConfigError(f"the checkpoints in {directory} do not fit this config, which differs from the one "
                        f"they were trained with: {changes}") from e
    raise
  return RestoredRun(cfg, graphdef, restored, tok, test_source, changes)

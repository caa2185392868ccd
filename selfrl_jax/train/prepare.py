"""The preparation stage: between the warm start and RL, an algorithm builds part of its own state
from the warm-started policy (`AlgorithmSpec.prepare`).

For example, a reward classifier trained on pseudo-labels derived from the policy's own samples:
its parameters become part of `TrainState.algo_state` and are used inside the compiled step. The
stage:

- runs only for a fresh run: a resumed run restores the prepared state from its checkpoint;
- is cached like the warm start (`train.cache.cached_build`), keyed by the checksums of the policy
  it reads and the algorithm's `prepare_settings(cfg)`, so the arms and seeds of an ablation that
  share a warm start prepare once;
- returns a report of scalars (e.g. pseudo-label accuracy, classifier AUC) logged with the step-0
  evaluation as `prepare/<name>`.
"""

from __future__ import annotations

import json
import logging
import os

import jax
import numpy as np

from selfrl_jax.train.cache import cached_build
from selfrl_jax.train.checkpoint import state_checksums

log = logging.getLogger(__name__)


def _save_tree(tree, directory: str) -> None:
  leaves = jax.tree.leaves(jax.device_get(tree))
  np.savez(os.path.join(directory, "algo_state.npz"), *[np.asarray(x) for x in leaves])


def _load_tree(abstract, directory: str):
  """`abstract`'s structure filled with the saved leaves; ValueError when they do not fit."""
  with np.load(os.path.join(directory, "algo_state.npz")) as data:
    leaves = [data[f"arr_{i}"] for i in range(len(data.files))]
  expected = jax.tree.leaves(abstract)
  if len(leaves) != len(expected) or any(a.shape != b.shape for a, b in zip(leaves, expected)):
    raise ValueError(f"{directory}: the prepared state does not fit this algorithm's state "
                     f"({len(leaves)} arrays saved, {len(expected)} expected); delete the directory to rebuild it")
  return jax.tree.unflatten(jax.tree.structure(abstract), leaves)


def run_prepare(spec, cfg, algorithm, algo_state, policy_params, model, tokenizer, train_source,
                cache_root: str) -> tuple[object, dict[str, float]]:
  """(prepared algo_state, report) for a fresh run; `(algo_state, {})` when the algorithm has none.

  Args:
    spec: the algorithm's `AlgorithmSpec` (`prepare`, `prepare_settings`).
    algo_state: the freshly initialised state (gives the structure and shapes).
    policy_params: the warm-started policy parameters (key the cache).
    model: the warm-started policy (NNX module) the stage samples from.
  """
  if spec.prepare is None:
    return algo_state, {}
  settings = {"policy": state_checksums(policy_params), "algorithm": spec.name,
              "prepare": spec.prepare_settings(cfg) if spec.prepare_settings else {}}
  report_out = {}

  def build(tmp: str, partial: str) -> None:
    del partial  # the stages so far take seconds to minutes; an interrupted one starts over
    state, report = spec.prepare(cfg, algorithm, algo_state, model, tokenizer, train_source)
    _save_tree(state, tmp)
    report_out.update(report)
    with open(os.path.join(tmp, "report.json"), "w") as f:
      json.dump({k: float(v) for k, v in report.items()}, f, indent=2, sort_keys=True)

  directory, _ = cached_build(cache_root, "prepare", settings, build, "report.json",
                              what=f"{spec.name} preparation")
  with open(os.path.join(directory, "report.json")) as f:
    report = json.load(f)
  prepared = _load_tree(algo_state, directory)
  log.info("%s preparation: %s", spec.name, ", ".join(f"{k}={v:.4g}" for k, v in sorted(report.items())))
  return prepared, {f"prepare/{k}": v for k, v in report.items()}

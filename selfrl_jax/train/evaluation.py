"""Held-out evaluation: greedy rollouts on a fixed set of prompts, scored by the task reward."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from selfrl_jax.data.pipeline import make_prompt_iterator


def fixed_eval_batches(source, tokenizer, *, eval_size: int, batch_size: int, max_prompt_len: int,
                       max_answer_len: int, chat: bool = False) -> list[dict[str, np.ndarray]]:
  """The first `eval_size` usable records of `source`, in order, as `eval_size / batch_size` batches."""
  it = make_prompt_iterator(source, tokenizer, batch_size=batch_size, max_prompt_len=max_prompt_len,
                            max_answer_len=max_answer_len, shuffle=False, num_epochs=1, chat=chat)
  batches = []
  for batch in it:
    batches.append(batch)
    if len(batches) * batch_size >= eval_size:
      return batches
  raise ValueError(f"The evaluation split yields only {len(batches) * batch_size} usable prompts, "
                   f"fewer than train.eval_size={eval_size}.")


class Evaluator:
  """Compiled greedy evaluation of an algorithm's rollout + reward on fixed batches.

  Attributes:
    batches: the evaluation batches (host numpy).
  """

  def __init__(self, graphdef: nnx.GraphDef, algorithm, sampling, batches: list[dict[str, np.ndarray]]):
    # One greedy completion per prompt: same rollout code as training, different decoding.
    algorithm = dataclasses.replace(algorithm, sampling=sampling, group_size=1)
    self.batches = batches

    @jax.jit
    def score(params, batch):
      rollout = algorithm.rollout(nnx.merge(graphdef, params), batch, jax.random.key(0))
      return algorithm.rewards(rollout, batch)["reward"], rollout.response_valid_BxN.sum(axis=1)

    self._score = score

  def per_example(self, params) -> tuple[np.ndarray, np.ndarray]:
    """(reward_N, response_length_N) over all evaluation prompts."""
    out = [jax.device_get(self._score(params, b)) for b in self.batches]
    return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])

  def __call__(self, params) -> dict[str, float]:
    rewards_N, lengths_N = self.per_example(params)
    return {"eval/accuracy": float(rewards_N.mean()), "eval/completion_len_mean": float(lengths_N.mean())}

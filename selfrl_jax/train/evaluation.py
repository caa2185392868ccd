"""Held-out evaluation: greedy rollouts on a fixed set of prompts, scored by the task reward."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from selfrl_jax.data.batch import PromptBatch
from selfrl_jax.data.pipeline import make_prompt_iterator


def fixed_eval_batches(source, tokenizer, *, eval_size: int, batch_size: int, max_prompt_len: int,
                       max_answer_len: int, chat: bool = False, system_prompt: str | None = None
                       ) -> list[PromptBatch]:
  """The first `eval_size` usable records of `source`, in order, as `eval_size / batch_size` batches."""
  it = make_prompt_iterator(source, tokenizer, batch_size=batch_size, max_prompt_len=max_prompt_len,
                            max_answer_len=max_answer_len, shuffle=False, num_epochs=1, chat=chat,
                            system_prompt=system_prompt)
  batches = []
  for batch in it:
    batches.append(batch)
    if len(batches) * batch_size >= eval_size:
      return batches
  raise ValueError(f"The evaluation split yields only {len(batches) * batch_size} usable prompts, "
                   f"fewer than train.eval_size={eval_size}.")


class Evaluator:
  """Compiled held-out evaluation: the algorithm's `eval_outputs` on fixed batches, then `eval_metrics`.

  Each algorithm reports its own metrics; every one reports "eval/accuracy" (its final answer's
  accuracy).

  Attributes:
    batches: the evaluation batches (host numpy).
  """

  def __init__(self, graphdef: nnx.GraphDef, algorithm, sampling, batches: list[PromptBatch]):
    # One completion per prompt with the evaluation decoding (greedy by default).
    algorithm = algorithm.for_eval(sampling)
    self.algorithm, self.batches = algorithm, batches

    @jax.jit
    def outputs(params, batch):
      return algorithm.eval_outputs(nnx.merge(graphdef, params), batch, jax.random.key(0))

    self._outputs = outputs

  def per_example(self, params) -> dict[str, np.ndarray]:
    """The algorithm's per-example outputs over all evaluation prompts (batch axis last)."""
    out = [jax.device_get(self._outputs(params, b)) for b in self.batches]
    return {k: np.concatenate([o[k] for o in out], axis=_batch_axis(k)) for k in out[0]}

  def __call__(self, params) -> dict[str, float]:
    return self.algorithm.eval_metrics(self.per_example(params))


def _batch_axis(name: str) -> int:
  """Index of the example axis from the shape suffix (`reward_KxB` -> 1, `tokens_KxBxN` -> 1)."""
  dims = name.rsplit("_", 1)[-1].split("x")
  return dims.index("B")

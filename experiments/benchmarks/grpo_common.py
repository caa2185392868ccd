"""Pieces both GRPO-vs-TRL benchmarks share (no flags here: each benchmark defines its own)."""

from __future__ import annotations

import time

import numpy as np

from selfrl_jax.models.tokenizers import HFTokenizer


def digit_table(tok: HFTokenizer) -> np.ndarray:
  """digit_V[id] = 1.0 iff the token decodes to one or more digit characters only."""
  table = np.zeros(tok.vocab_size, np.float32)
  for token, i in tok.hf.get_vocab().items():
    text = tok.hf.convert_tokens_to_string([token]).strip()
    if text and text.isdigit() and i < table.size:
      table[i] = 1.0
  return table


def trl_step_timer():
  """A transformers `TrainerCallback` whose `stamps` are wall times at train begin and each step end."""
  from transformers import TrainerCallback  # pylint: disable=import-outside-toplevel

  class StepTimer(TrainerCallback):
    def __init__(self):
      self.stamps = []

    def on_train_begin(self, args, state, control, **kwargs):
      self.stamps.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
      self.stamps.append(time.perf_counter())
      print(f"  TRL iteration {len(self.stamps) - 2}: {self.stamps[-1] - self.stamps[-2]:.2f} s", flush=True)

  return StepTimer()

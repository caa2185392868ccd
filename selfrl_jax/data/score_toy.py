"""SFT warm start for the SCoRe toys: a "base model" that errs and rarely self-corrects.

    it = make_prompt_iterator(train_records, tok, batch_size=64, max_prompt_len=16, max_answer_len=8)
    batch = next(it)
    demo = toy_demonstrations(batch, it.records(batch.example_id_P), tok, rng, instr_ids=(fix_id,),
                              max_new_tokens1=8, max_new_tokens2=8, copy_prob=0.7)
    # demo: tokens_BxS, valid_BxS, loss_mask_BxS — feed to train.sft.make_sft_step

Each demonstration is [prompt | y1 EOS | <fix> | y2 EOS] laid out in exactly the slots the two-turn
rollout uses ([prompt T | y1 N1 slots | instr I | y2 N2 slots], holes after each EOS), so the warm
-started model sees in RL the slot layout it was trained on. y1 is the record's `buggy_answer` (the
true sum outside the ~40% bug subset of `arithmetic_bugged`); y2 copies y1 with probability
`copy_prob`, else re-solves (the true sum). Loss on y1 and y2 tokens, EOS included. Greedy decoding
of a fitted model then gives Acc@t1 ~ 0.6 and copies at turn 2 (Delta <= 0), while sampling at
temperature 1 fixes about 1 - copy_prob of the bugs: the RL signal Stage I needs.

The second toy (backward prefix sums, `data/prefix_sums.py`) passes `first_right_prob`: y1 is then the
right answer with that probability, else the answer shifted by a random offset (`first_attempts`),
and y2 copies y1 with probability `copy_prob`, else writes the right answer.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from selfrl_jax.data.prefix_sums import first_attempts
from selfrl_jax.data.records import normalize_record
from selfrl_jax.data.batch import PromptBatch
from selfrl_jax.models.tokenizers import Tokenizer


def toy_targets(records: Sequence[Mapping[str, Any]], rng: np.random.Generator, copy_prob: float
                ) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
  """(y1 texts, y2 texts, is_bug_P, copied_P) for `arithmetic_bugged` records.

  is_bug_P marks y1 != true answer; copied_P marks rows whose y2 copies y1 (drawn for every row, so
  it also counts rows where copying and re-solving agree).
  """
  if not 0.0 <= copy_prob <= 1.0:
    raise ValueError(f"toy_targets: copy_prob must be in [0, 1], got {copy_prob}.")
  y1, y2, bug = [], [], []
  copied = rng.random(len(records)) < copy_prob
  for row, raw in enumerate(records):
    rec = normalize_record(raw)
    if "buggy_answer" not in rec:
      raise KeyError(f"toy_targets: record {row} has no 'buggy_answer' field (fields {sorted(rec)}); "
                     "use the arithmetic_bugged task.")
    y1.append(rec["buggy_answer"])
    y2.append(rec["buggy_answer"] if copied[row] else rec["answer"])
    bug.append(rec["buggy_answer"] != rec["answer"])
  return y1, y2, np.asarray(bug, bool), copied


def prefix_toy_targets(records: Sequence[Mapping[str, Any]], rng: np.random.Generator, copy_prob: float,
                       first_right_prob: float) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
  """(y1 texts, y2 texts, is_wrong_P, copied_P) for `prefix_sums_backward` records: y1 right with
  probability `first_right_prob`, else shifted by an offset in 1..9; y2 copies y1 with probability
  `copy_prob`, else the answer."""
  if not 0.0 <= copy_prob <= 1.0:
    raise ValueError(f"prefix_toy_targets: copy_prob must be in [0, 1], got {copy_prob}.")
  y1, offsets = first_attempts(records, rng, first_right_prob)
  copied = rng.random(len(records)) < copy_prob
  y2 = [a if c else normalize_record(r)["answer"] for a, c, r in zip(y1, copied, records)]
  return y1, y2, offsets != 0, copied


def _response_slots(texts: Sequence[str], tokenizer: Tokenizer, width: int, field: str
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Each text + EOS, left-aligned in `width` slots, pad (invalid) after."""
  tokens = np.full((len(texts), width), tokenizer.pad_id, np.int32)
  valid = np.zeros((len(texts), width), bool)
  for row, text in enumerate(texts):
    ids = tokenizer.encode(text) + [tokenizer.eos_ids[0]]
    if len(ids) > width:
      raise ValueError(f"toy_demonstrations: row {row} {field} {text!r} needs {len(ids)} slots with EOS, "
                       f"more than {field} width {width}; raise max_new_tokens.")
    tokens[row, :len(ids)] = ids
    valid[row, :len(ids)] = True
  return tokens, valid


def toy_demonstrations(batch: PromptBatch, records: Sequence[Mapping[str, Any]],
                       tokenizer: Tokenizer, rng: np.random.Generator, *, instr_ids: Sequence[int],
                       max_new_tokens1: int, max_new_tokens2: int, copy_prob: float = 0.7,
                       first_right_prob: float | None = None) -> dict[str, np.ndarray]:
  """Two-turn SFT demonstrations for a prompt batch, in the two-turn rollout's slot layout.

  Args:
    batch: a prompt batch (`prompt_tokens_PxT`, `prompt_valid_PxT`) of `arithmetic_bugged` records.
    records: the batch's records in row order (`PromptIterator.records(batch.example_id_P)`).
    tokenizer: the model's tokenizer.
    rng: host RNG for the copy draws.
    instr_ids: the correction instruction ids (as `SCoRe.instr_ids`).
    max_new_tokens1, max_new_tokens2: N1 and N2, the RL rollout's turn buffers.
    copy_prob: probability that y2 copies y1.
    first_right_prob: None for `arithmetic_bugged` records (y1 = the record's `buggy_answer`); a
      probability for `prefix_sums_backward` records (`prefix_toy_targets`).

  Returns:
    tokens_BxS, valid_BxS, loss_mask_BxS (S = T + N1 + I + N2), as `train.sft.demonstrations`.
  """
  prompt_PxT = np.asarray(batch.prompt_tokens_PxT)
  if len(records) != prompt_PxT.shape[0]:
    raise ValueError(f"toy_demonstrations: {len(records)} records for a batch of {prompt_PxT.shape[0]} prompts.")
  if first_right_prob is None:
    y1_text, y2_text, _, _ = toy_targets(records, rng, copy_prob)
  else:
    y1_text, y2_text, _, _ = prefix_toy_targets(records, rng, copy_prob, first_right_prob)
  y1, y1_valid = _response_slots(y1_text, tokenizer, max_new_tokens1, "y1")
  y2, y2_valid = _response_slots(y2_text, tokenizer, max_new_tokens2, "y2")
  p = prompt_PxT.shape[0]
  instr = np.broadcast_to(np.asarray(tuple(instr_ids), np.int32)[None], (p, len(instr_ids)))
  no = lambda x: np.zeros(x.shape, bool)  # noqa: E731
  return {"tokens_BxS": np.concatenate([prompt_PxT, y1, instr, y2], axis=1).astype(np.int32),
          "valid_BxS": np.concatenate([np.asarray(batch.prompt_valid_PxT, bool), y1_valid,
                                       np.ones(instr.shape, bool), y2_valid], axis=1),
          "loss_mask_BxS": np.concatenate([no(prompt_PxT), y1_valid, no(instr), y2_valid], axis=1)}


def toy_demonstration_stream(prompt_iterator, tokenizer: Tokenizer, *, seed: int, instr_ids: Sequence[int],
                             max_new_tokens1: int, max_new_tokens2: int, copy_prob: float = 0.7,
                             first_right_prob: float | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Endless demonstrations from a `PromptIterator` (arguments as `toy_demonstrations`)."""
  rng = np.random.default_rng(seed)
  for batch in prompt_iterator:
    yield toy_demonstrations(batch, prompt_iterator.records(batch.example_id_P), tokenizer, rng,
                             instr_ids=instr_ids, max_new_tokens1=max_new_tokens1,
                             max_new_tokens2=max_new_tokens2, copy_prob=copy_prob,
                             first_right_prob=first_right_prob)

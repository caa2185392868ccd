"""grain pipeline from a record source to fixed-shape numpy prompt batches, with resumable state.

    it = make_prompt_iterator(source, tok, batch_size=64, max_prompt_len=16, max_answer_len=8, seed=0)
    batch = next(it)       # a PromptBatch of numpy arrays, every batch exactly P rows
    state = it.get_state() # JSON-able; save it with the checkpoint
    it2 = make_prompt_iterator(...same args...); it2.set_state(state)  # continues where `it` was
    texts = it.records(batch.example_id_P)  # the raw records, host side

`PromptBatch` fields (P = batch_size, T = max_prompt_len, A = max_answer_len):
  prompt_tokens_PxT  int32  prompt ids LEFT-padded with `tokenizer.pad_id`
  prompt_valid_PxT   bool   True on real prompt tokens
  prompt_len_P       int32  number of real prompt tokens
  target_tokens_PxA  int32  answer ids, then one EOS, then pad (right-padded)
  target_len_P       int32  answer length including the EOS
  example_id_P       int64  position of the record in `source` (stable across runs and shards)

Rows that cannot be encoded, or whose prompt/answer does not fit T / A-1 tokens, are skipped (never
truncated) and counted in `it.skipped`. Sharding: each of `shard_count` hosts reads an equal,
contiguous `1/shard_count` of the source (remainder dropped, so hosts see the same number of rows),
then shuffles it with the shared seed.
"""

from __future__ import annotations

import collections
import logging
from typing import Any, Mapping, Sequence

import grain
import numpy as np

from selfrl_jax.data.batch import PromptBatch
from selfrl_jax.data.records import normalize_record
from selfrl_jax.models.tokenizers import Tokenizer

log = logging.getLogger(__name__)

SKIP_REASONS = ("malformed", "prompt_too_long", "answer_too_long")


def shard_bounds(num_records: int, shard_index: int, shard_count: int) -> tuple[int, int]:
  """[start, end) of this shard: equal contiguous slices, remainder dropped (grain's even split)."""
  options = grain.sharding.ShardOptions(shard_index, shard_count, drop_remainder=True)
  per_shard = num_records // options.shard_count
  return per_shard * options.shard_index, per_shard * (options.shard_index + 1)


def jax_process_shard() -> tuple[int, int]:
  """(shard_index, shard_count) for this JAX process, for multi-host input pipelines."""
  options = grain.sharding.ShardByJaxProcess(drop_remainder=True)
  return options.shard_index, options.shard_count


class _WithExampleId:
  """(index, record) -> (example id, record); grain passes epoch * len + position as the index."""

  def __init__(self, num_records: int):
    self.num_records = num_records

  def __call__(self, index: int, record: Any) -> tuple[int, Any]:
    return index % self.num_records, record


def encode_prompt(tokenizer: Tokenizer, prompt: str, chat: bool, system_prompt: str | None = None) -> list[int]:
  """A prompt's token ids as training sees them: raw `encode`, or with `chat` one user turn (after an
  optional system turn) of the tokenizer's chat template, ready for the assistant's answer."""
  if not chat:
    return tokenizer.encode(prompt)
  messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
  messages.append({"role": "user", "content": prompt})
  return tokenizer.apply_chat_template(messages, add_generation_prompt=True)


class _Encoder:
  """Record -> fixed-shape arrays, or a skip marker naming why the row cannot be used."""

  def __init__(self, tokenizer: Tokenizer, max_prompt_len: int, max_answer_len: int, chat: bool,
               system_prompt: str | None):
    self.tok = tokenizer
    self.max_prompt_len = max_prompt_len
    self.max_answer_len = max_answer_len
    self.chat = chat
    self.system_prompt = system_prompt

  def prompt_ids(self, prompt: str) -> list[int]:
    return encode_prompt(self.tok, prompt, self.chat, self.system_prompt)

  def __call__(self, item: tuple[int, Any]) -> dict[str, Any]:
    example_id, raw = item
    try:
      rec = normalize_record(raw)
      prompt, answer = self.prompt_ids(rec["prompt"]), self.tok.encode(rec["answer"])
    except (KeyError, TypeError, ValueError) as e:
      return {"skip": "malformed", "example_id": example_id, "why": f"{type(e).__name__}: {e}"}
    if len(prompt) > self.max_prompt_len:
      return {"skip": "prompt_too_long", "example_id": example_id,
              "why": f"{len(prompt)} prompt tokens > max_prompt_len={self.max_prompt_len}"}
    if len(answer) + 1 > self.max_answer_len:
      return {"skip": "answer_too_long", "example_id": example_id,
              "why": f"{len(answer)} answer tokens + EOS > max_answer_len={self.max_answer_len}"}
    pad = self.tok.pad_id
    prompt_T = np.full((self.max_prompt_len,), pad, np.int32)
    valid_T = np.zeros((self.max_prompt_len,), bool)
    if prompt:
      prompt_T[-len(prompt):] = prompt
      valid_T[-len(prompt):] = True
    target_A = np.full((self.max_answer_len,), pad, np.int32)
    target_A[:len(answer)] = answer
    target_A[len(answer)] = self.tok.eos_ids[0]
    return {"prompt_tokens_PxT": prompt_T, "prompt_valid_PxT": valid_T,
            "prompt_len_P": np.int32(len(prompt)), "target_tokens_PxA": target_A,
            "target_len_P": np.int32(len(answer) + 1), "example_id_P": np.int64(example_id)}


class PromptIterator:
  """Iterator of prompt batches whose position (and skip counts) can be saved and restored.

  Attributes:
    skipped: Counter reason -> rows skipped so far (reasons in `SKIP_REASONS`).
    source: the record source, for `records(example_ids)`.
  """

  def __init__(self, dataset: grain.IterDataset, source: Sequence[Mapping[str, Any]], batch_size: int):
    self.source = source
    self.batch_size = batch_size
    self.skipped: collections.Counter = collections.Counter()
    self._it = dataset.filter(self._keep).batch(batch_size, drop_remainder=True).__iter__()

  def _keep(self, element: dict[str, Any]) -> bool:
    # Runs on the consumer side of grain's prefetch, so counts match what was actually consumed.
    if "skip" not in element:
      return True
    reason = element["skip"]
    self.skipped[reason] += 1
    if self.skipped[reason] <= 5:
      log.warning("Skipping example %d of %r (%s): %s", element["example_id"],
                  getattr(self.source, "name", type(self.source).__name__), reason, element["why"])
    return False

  def __iter__(self) -> PromptIterator:
    return self

  def __next__(self) -> PromptBatch:
    return PromptBatch(**next(self._it))

  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable position of the iterator (grain state + skip counts)."""
    return {"grain": self._it.get_state(), "skipped": dict(self.skipped)}

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Moves this iterator to a position saved by `get_state` of an identically built iterator."""
    self._it.set_state(state["grain"])
    self.skipped = collections.Counter(state.get("skipped", {}))

  def records(self, example_ids: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
    """Raw (str) records of a batch, looked up by `batch.example_id_P`."""
    return [normalize_record(self.source[int(i)]) for i in np.asarray(example_ids).reshape(-1)]


def make_prompt_iterator(source: Sequence[Mapping[str, Any]], tokenizer: Tokenizer, *, batch_size: int,
                         max_prompt_len: int, max_answer_len: int = 32, seed: int = 0, shuffle: bool = True,
                         num_epochs: int | None = None, shard_index: int = 0, shard_count: int = 1,
                         chat: bool = False, system_prompt: str | None = None,
                         num_threads: int = 0) -> PromptIterator:
  """Builds the grain pipeline: shard -> shuffle -> repeat -> encode -> skip bad rows -> batch.

  Args:
    source: random-access records ({"prompt", "answer", "meta"}; str or bytes values).
    tokenizer: any `Tokenizer`; prompts use `encode` (or `apply_chat_template` when `chat`).
    batch_size: P, rows per batch; the last partial batch is dropped.
    max_prompt_len: T; longer prompts are skipped and counted.
    max_answer_len: A; answers needing more than A-1 tokens (room for EOS) are skipped and counted.
    seed: shuffle seed (each epoch is reshuffled deterministically from it).
    shuffle: shuffle records; False keeps source order (evaluation).
    num_epochs: passes over the data; None repeats forever.
    shard_index, shard_count: this host's shard (see `jax_process_shard`).
    chat: wrap the prompt as a user turn with the tokenizer's chat template.
    system_prompt: optional system turn when `chat`.
    num_threads: grain read threads; 0 reads in the consumer thread (best for in-memory sources).
  """
  for field, value in (("batch_size", batch_size), ("max_prompt_len", max_prompt_len),
                       ("max_answer_len", max_answer_len)):
    if value < 1:
      raise ValueError(f"make_prompt_iterator: {field} must be >= 1, got {value}.")
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"make_prompt_iterator: num_epochs must be >= 1 or None, got {num_epochs}.")
  start, end = shard_bounds(len(source), shard_index, shard_count)
  if end - start < batch_size:
    raise ValueError(f"make_prompt_iterator: shard {shard_index}/{shard_count} has {end - start} records, "
                     f"fewer than batch_size={batch_size}; no batch could ever be produced.")
  ds = grain.MapDataset.source(source).map_with_index(_WithExampleId(len(source)))[start:end]
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  ds = ds.map(_Encoder(tokenizer, max_prompt_len, max_answer_len, chat, system_prompt))
  iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4 * batch_size))
  return PromptIterator(iter_ds, source, batch_size)

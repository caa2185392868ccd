"""grain prompt pipeline: batch layout, skipping, sharding, and exact resume from saved state."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from selfrl_jax.data import builders, pipeline, tasks
from selfrl_jax.data.batch import PromptBatch
from selfrl_jax.data.records import make_record
from selfrl_jax.models.tokenizers import CharTokenizer

TOK = CharTokenizer()


def _source(n: int, seed: int = 0) -> list[dict[str, str]]:
  return tasks.make_task("arithmetic", num_digits=3, min_digits=1, splits={"train": n}, seed=seed).records("train")


def _iter(source, **kw):
  args = dict(batch_size=4, max_prompt_len=8, max_answer_len=6, seed=0)
  args.update(kw)
  return pipeline.make_prompt_iterator(source, TOK, **args)


def test_batch_layout_left_padding_and_eos():
  src = _source(40)
  it = _iter(src, shuffle=False, num_epochs=1)
  batches = list(it)
  assert len(batches) == 10  # 40 rows, all fit
  b = batches[0]
  assert all(isinstance(x, PromptBatch) for x in batches)
  assert {f.name: (getattr(b, f.name).dtype, getattr(b, f.name).shape) for f in dataclasses.fields(b)} == {
      "prompt_tokens_PxT": (np.int32, (4, 8)), "prompt_valid_PxT": (np.bool_, (4, 8)),
      "prompt_len_P": (np.int32, (4,)), "target_tokens_PxA": (np.int32, (4, 6)),
      "target_len_P": (np.int32, (4,)), "example_id_P": (np.int64, (4,))}
  np.testing.assert_array_equal(b.example_id_P, [0, 1, 2, 3])
  for b in batches:
    for row, rec in enumerate(it.records(b.example_id_P)):
      p, a = TOK.encode(rec["prompt"]), TOK.encode(rec["answer"])
      want_prompt = [TOK.pad_id] * (8 - len(p)) + p
      np.testing.assert_array_equal(b.prompt_tokens_PxT[row], want_prompt)
      np.testing.assert_array_equal(b.prompt_valid_PxT[row], [False] * (8 - len(p)) + [True] * len(p))
      assert TOK.decode(b.prompt_tokens_PxT[row]) == rec["prompt"]
      want_target = a + [TOK.eos_ids[0]] + [TOK.pad_id] * (5 - len(a))
      np.testing.assert_array_equal(b.target_tokens_PxA[row], want_target)
      assert b.target_len_P[row] == len(a) + 1 and b.prompt_len_P[row] == len(p)
      assert rec == src[b.example_id_P[row]]


def test_too_long_and_malformed_rows_are_skipped_and_counted():
  src = [make_record("1+2=", "3"), make_record("123456+1=", "123457"),  # prompt 9 > 8
         {"prompt": "5+5="},                                              # no answer field
         make_record("1+1=", "123456"),                                   # 6 + EOS > 6
         make_record("1+1é=", "2")] + [make_record(f"{i}+0=", str(i)) for i in range(7)]  # é: unencodable
  it = _iter(src, shuffle=False, num_epochs=1)
  ids = np.concatenate([b.example_id_P for b in it])
  np.testing.assert_array_equal(ids, [0, 5, 6, 7, 8, 9, 10, 11])
  assert dict(it.skipped) == {"prompt_too_long": 1, "malformed": 2, "answer_too_long": 1}


def test_shuffled_epochs_are_permutations_and_differ():
  it = _iter(_source(24), num_epochs=2)
  ids = np.concatenate([b.example_id_P for b in it])
  assert len(ids) == 48
  e1, e2 = ids[:24], ids[24:]
  assert sorted(e1) == sorted(e2) == list(range(24))
  assert list(e1) != list(range(24)) and list(e1) != list(e2)


@pytest.mark.parametrize("num_threads", [0, 2])
def test_resume_from_saved_state_gives_identical_batches(num_threads):
  src = _source(30)
  src[4] = make_record("9999999+1=", "1")  # a skipped row, so the skip counter is part of the state
  it = _iter(src, seed=5, num_threads=num_threads)
  for _ in range(5):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # must survive a JSON checkpoint
  expected = [next(it) for _ in range(12)]  # crosses two epoch boundaries (reshuffles)
  skipped_after = dict(it.skipped)

  fresh = _iter(src, seed=5, num_threads=num_threads)
  fresh.set_state(state)
  got = [next(fresh) for _ in range(12)]
  for want, have in zip(expected, got):
    for f in dataclasses.fields(PromptBatch):
      np.testing.assert_array_equal(getattr(want, f.name), getattr(have, f.name))
  assert dict(fresh.skipped) == skipped_after and skipped_after["prompt_too_long"] >= 2

  # A fresh iterator without the state starts over, so the comparison above is not vacuous.
  restart = _iter(src, seed=5)
  assert not np.array_equal(next(restart).example_id_P, expected[0].example_id_P)


def test_two_shards_partition_the_data():
  src = _source(41)  # odd: one record dropped so both hosts see 20
  ids = []
  for shard in range(2):
    it = _iter(src, shard_index=shard, shard_count=2, num_epochs=1, batch_size=5)
    ids.append(np.concatenate([b.example_id_P for b in it]))
  assert len(ids[0]) == len(ids[1]) == 20
  assert not set(ids[0]) & set(ids[1])
  assert sorted(np.concatenate(ids)) == list(range(40))
  assert pipeline.shard_bounds(41, 1, 2) == (20, 40)


def test_chat_template_prompts():
  it = _iter(_source(8), chat=True, max_prompt_len=12, shuffle=False, num_epochs=1)
  b = next(it)
  for row, rec in enumerate(it.records(b.example_id_P)):
    ids = TOK.apply_chat_template([{"role": "user", "content": rec["prompt"]}])
    assert ids[0] == TOK.token_to_id["<user>"] and ids[-1] == TOK.token_to_id["<assistant>"]
    np.testing.assert_array_equal(b.prompt_tokens_PxT[row, -len(ids):], ids)
    assert not b.prompt_valid_PxT[row, :-len(ids)].any()


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="fewer than batch_size"):
    _iter(_source(6), batch_size=4, shard_count=2)
  with pytest.raises(ValueError, match="max_prompt_len"):
    _iter(_source(6), max_prompt_len=0)
  with pytest.raises(ValueError, match="shard"):
    _iter(_source(6), shard_index=2, shard_count=2)


def test_pipeline_over_tfds_builder(tmp_path):
  task = tasks.make_task("arithmetic", splits={"train": 16}, reverse_answer=True, seed=2)
  src = builders.load_task_split(task, "train", str(tmp_path))
  it = _iter(src, batch_size=8, shuffle=False, num_epochs=1)
  b = next(it)
  recs = it.records(b.example_id_P)
  assert recs == task.records("train")[:8]
  assert [TOK.decode(t) for t in b.target_tokens_PxA] == [r["answer"] for r in recs]


def test_prompt_batch_of_mapping_needs_exactly_its_fields():
  b = next(_iter(_source(8), shuffle=False, num_epochs=1))
  fields = {f.name: getattr(b, f.name) for f in dataclasses.fields(PromptBatch)}
  assert PromptBatch.of(b) is b
  again = PromptBatch.of(fields)
  assert again.num_prompts == 4 and again.prompt_width == 8
  for name, value in fields.items():
    np.testing.assert_array_equal(getattr(again, name), value)
  with pytest.raises(ValueError, match=r"missing fields \['prompt_len_P'\]"):
    PromptBatch.of({k: v for k, v in fields.items() if k != "prompt_len_P"})
  with pytest.raises(ValueError, match=r"unknown fields \['reward'\]"):
    PromptBatch.of({**fields, "reward": np.zeros(4)})

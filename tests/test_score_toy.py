"""SCoRe toy warm start (score.md §11): demonstration statistics and slot layout; instruction ids."""

import numpy as np
import pytest

from selfrl_jax.data.arithmetic import buggy_sum, is_bug_subset
from selfrl_jax.data.pipeline import make_prompt_iterator
from selfrl_jax.data.records import record_meta
from selfrl_jax.data.score_toy import toy_demonstration_stream, toy_demonstrations
from selfrl_jax.data.tasks import make_task
from selfrl_jax.models.tokenizers import CharTokenizer
from selfrl_jax.rollouts.two_turn import correction_instruction_ids

TOK = CharTokenizer()
T, N1, N2, P = 12, 6, 6, 2000


@pytest.fixture(scope="module")
def data():
  records = make_task("arithmetic_bugged", splits={"train": P}, seed=0).records("train")
  it = make_prompt_iterator(records, TOK, batch_size=P, max_prompt_len=T, max_answer_len=6, shuffle=False)
  batch = next(it)
  fix = correction_instruction_ids(TOK, "<fix>")
  demo = toy_demonstrations(batch, it.records(batch.example_id_P), TOK, np.random.default_rng(0),
                            instr_ids=fix, max_new_tokens1=N1, max_new_tokens2=N2, copy_prob=0.7)
  return batch, it.records(batch.example_id_P), fix, demo


def test_instruction_ids():
  assert correction_instruction_ids(TOK, "<fix>") == (TOK.token_to_id["<fix>"],)
  # Chat form: what the template puts after an assistant turn's EOS, up to the next assistant turn.
  assert correction_instruction_ids(TOK, "fix it", chat=True) == tuple(TOK.encode("<user>fix it<assistant>"))
  with pytest.raises(ValueError, match="no tokens"):
    correction_instruction_ids(TOK, "")


def test_demonstrations_layout_and_statistics(data):
  batch, records, fix, demo = data
  tokens, valid, loss = demo["tokens_BxS"], demo["valid_BxS"], demo["loss_mask_BxS"]
  assert tokens.shape == valid.shape == loss.shape == (P, T + N1 + len(fix) + N2)
  np.testing.assert_array_equal(tokens[:, T + N1:T + N1 + len(fix)], np.tile(fix, (P, 1)))
  np.testing.assert_array_equal(tokens[:, :T], batch.prompt_tokens_PxT)
  eos = TOK.eos_ids[0]
  y1_ok, y2_ok, copied, bug = [], [], [], []
  for b, rec in enumerate(records):
    meta = record_meta(rec)
    a, c = meta["a"], meta["b"]
    y1_slots, y2_slots = slice(T, T + N1), slice(T + N1 + len(fix), None)
    y1 = tokens[b, y1_slots][valid[b, y1_slots]]
    y2 = tokens[b, y2_slots][valid[b, y2_slots]]
    # Each turn: answer + EOS left-aligned, invalid pad after (holes, as in the rollout buffer).
    for ids, v in ((y1, valid[b, y1_slots]), (y2, valid[b, y2_slots])):
      assert ids[-1] == eos and eos not in ids[:-1] and v[:len(ids)].all()
    y1_val = int(TOK.decode(y1)[::-1])
    y2_val = int(TOK.decode(y2)[::-1])
    bug.append(is_bug_subset(a, c))
    assert y1_val == (buggy_sum(a, c) if bug[-1] else a + c)
    assert y2_val in (y1_val, a + c)
    y1_ok.append(y1_val == a + c)
    y2_ok.append(y2_val == a + c)
    copied.append(y2_val == y1_val)
    assert TOK.decode(tokens[b][valid[b]], skip_special_tokens=False) == (
        rec["prompt"] + TOK.decode(y1, False) + "<fix>" + TOK.decode(y2, False))
  bug, y1_ok, y2_ok, copied = map(np.asarray, (bug, y1_ok, y2_ok, copied))
  assert (y1_ok == ~bug).all()  # turn 1 is wrong exactly on the bug subset
  assert abs(y1_ok.mean() - 0.6) < 0.04  # Acc@t1 ~ 0.6
  assert abs(copied[bug].mean() - 0.7) < 0.05  # on the bug subset y2 copies y1 ~70% of the time
  assert not (y1_ok & ~y2_ok).any()  # no correct -> incorrect: Delta = i2c >= 0 only by re-solving
  # Loss exactly on the two responses (EOS included), never on the prompt or the instruction.
  turn_slots = np.zeros(tokens.shape[1], bool)
  turn_slots[T:T + N1] = turn_slots[T + N1 + len(fix):] = True
  np.testing.assert_array_equal(loss, valid & turn_slots[None])


def test_stream_and_errors(data):
  _, records, fix, _ = data
  it = make_prompt_iterator(records[:64], TOK, batch_size=16, max_prompt_len=T, max_answer_len=6, seed=1)
  demo = next(toy_demonstration_stream(it, TOK, seed=0, instr_ids=fix, max_new_tokens1=N1, max_new_tokens2=N2))
  assert demo["tokens_BxS"].shape == (16, T + N1 + len(fix) + N2)
  batch = next(it)
  with pytest.raises(ValueError, match="y1 .* needs [45] slots with EOS, more than y1 width 3"):
    toy_demonstrations(batch, it.records(batch.example_id_P), TOK, np.random.default_rng(0), instr_ids=fix,
                       max_new_tokens1=3, max_new_tokens2=N2)
  with pytest.raises(KeyError, match="buggy_answer"):
    toy_demonstrations(batch, [{"prompt": "1+1=", "answer": "2", "meta": "{}"}] * 16, TOK,
                       np.random.default_rng(0), instr_ids=fix, max_new_tokens1=N1, max_new_tokens2=N2)


# --- The second toy: backward prefix sums -------------------------------------------------------

from selfrl_jax.data.prefix_sums import backward_prefix_sums, first_attempts, offset_attempt  # noqa: E402
from selfrl_jax.data.records import normalize_record  # noqa: E402


def test_backward_prefix_sums_by_hand_and_the_check_in_y1():
  # d = 6 5 2 3: prefix sums 6, 11, 13, 16 -> mod 10: 6 1 3 6, written y4 y3 y2 y1.
  assert backward_prefix_sums([6, 5, 2, 3]) == "6316"
  assert offset_attempt("6316", 3) == "9649"
  task = make_task("prefix_sums_backward", splits={"train": 400}, seed=0, lengths=(3, 10))
  for rec in task.records("train")[:50]:
    meta = record_meta(rec)
    digits, answer = meta["digits"], rec["answer"]
    assert rec["prompt"] == "".join(map(str, digits)) + "="
    assert len(answer) == meta["n"] == len(digits)
    assert int(answer[-1]) == digits[0]                   # y1 = d1: the check a second attempt can use
    for i in range(1, len(digits)):                        # every later digit is local: y_{i} = y_{i+1} - d_{i+1}
      assert int(answer[::-1][i - 1]) == (int(answer[::-1][i]) - digits[i]) % 10
    for c in range(1, 10):                                 # every offset attempt fails the check
      assert int(offset_attempt(answer, c)[-1]) != digits[0]
  reversed_task = make_task("prefix_sums_backward", splits={"train": 10}, seed=0, reverse_prompt=True)
  rec = reversed_task.record("train", 0)
  assert rec["prompt"] == "".join(map(str, record_meta(rec)["digits"][::-1])) + "="
  with pytest.raises(ValueError, match="lengths"):
    make_task("prefix_sums_backward", lengths=())


def test_prefix_toy_demonstrations_statistics():
  records = make_task("prefix_sums_backward", splits={"train": P}, seed=1).records("train")
  it = make_prompt_iterator(records, TOK, batch_size=P, max_prompt_len=12, max_answer_len=11, shuffle=False)
  batch = next(it)
  recs = it.records(batch.example_id_P)
  fix = correction_instruction_ids(TOK, "<fix>")
  demo = toy_demonstrations(batch, recs, TOK, np.random.default_rng(0), instr_ids=fix, max_new_tokens1=11,
                            max_new_tokens2=11, copy_prob=0.8, first_right_prob=0.7)
  texts = [TOK.decode([int(t) for t, v in zip(row, ok) if v]) for row, ok in zip(demo["tokens_BxS"], demo["valid_BxS"])]
  y1 = [t.split("=", 1)[1].split("<fix>")[0] for t in texts]
  y2 = [t.split("<fix>")[1] for t in texts]
  answers = [normalize_record(r)["answer"] for r in recs]
  right1 = np.array([a == b for a, b in zip(y1, answers)])
  assert abs(right1.mean() - 0.7) < 0.03
  # Wrong first attempts are whole-answer offsets (1..9), never the answer.
  offsets = {(int(a[0]) - int(b[0])) % 10 for a, b, r in zip(y1, answers, right1) if not r}
  assert offsets == set(range(1, 10))
  assert all(offset_attempt(b, (int(a[0]) - int(b[0])) % 10) == a for a, b in zip(y1, answers))
  copied = np.array([a == b for a, b in zip(y1, y2)])
  fixed = np.array([b == c for b, c in zip(y2, answers)])
  assert abs(copied[~right1].mean() - 0.8) < 0.05 and fixed[~right1 & ~copied].all()
  _, offsets_P = first_attempts(recs[:10], np.random.default_rng(0), 1.0)
  assert (offsets_P == 0).all()

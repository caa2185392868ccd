"""RLAVR on the shared step: every arm runs, fused equals split, acquisition never reads a label,
the budget is counted in the algorithm state, hidden-state features equal a full forward."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.rlavr.tiny_arithmetic import ARMS, get_config
from selfrl_jax.algos.base import PhaseContext, StepRecord
from selfrl_jax.models.decoder import forward_full
from selfrl_jax.sampling.hidden import gather_positions, last_valid_index
from selfrl_jax.train import builders
from selfrl_jax.train.state import create_train_state, make_optimizer
from selfrl_jax.train.step import make_train_step

P, G = 8, 4


def _config(arm: str, mode: str = "fused", **rlavr):
  cfg = get_config(arm)
  cfg.rlavr.update(rlavr)
  cfg.model.d_model, cfg.model.d_ff, cfg.model.n_heads, cfg.model.n_kv_heads = 32, 64, 2, 1
  cfg.rl.prompts_per_step, cfg.rl.group_size, cfg.rl.micro_batch_size = P, G, P * G
  cfg.rl.max_new_tokens = 4
  cfg.rlavr.warmup = 1
  cfg.rlavr.replay_size = 64
  cfg.rl.mode = mode
  cfg.optim.learning_rate = 1e-2
  return cfg


@pytest.fixture(scope="module")
def sources():
  cfg = _config("care")
  return builders.build_sources(cfg)


def _setup(arm, sources, mode="fused", records=None, **rlavr):
  cfg = _config(arm, mode, **rlavr)
  builders.validate_config(cfg, num_devices=1)
  model, tok = builders.build_model(cfg)
  algo = builders.build_algorithm(cfg, tok, records if records is not None else sources[0])
  tx = make_optimizer(cfg.optim)
  graphdef, state = create_train_state(model, tx, cfg.seed, keep_reference=False, algorithm=algo)
  step = make_train_step(builders.build_update_settings(cfg, algo), algo, graphdef, tx)
  batches = builders.prompt_batches(cfg, sources[0], tok, batch_size=P, seed=0)
  return step, state, algo, [next(batches) for _ in range(3)], tok


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_every_arm_runs_and_counts_its_budget(arm, sources):
  step, state, algo, batches, _ = _setup(arm, sources)
  for batch in batches:
    state, metrics = step(state, batch)
  per_step = {"ttrl": 0, "full_gt": P}.get(algo.selection, int(np.ceil(0.2 * P)))
  assert int(state.algo_state["labels_spent"]) == 3 * per_step
  # Distinct prompts labelled (the cached accounting): 3 batches of P distinct prompts from 5000.
  assert per_step <= int(metrics["rlavr/labels_unique"]) <= 3 * per_step
  assert int(state.algo_state["labelled_E"].sum()) == int(metrics["rlavr/labels_unique"])
  assert float(metrics["rlavr/labels_used"]) == per_step and step.compilations() == 1
  for k in ("rlavr/pseudo_label_acc", "rlavr/answer_entropy", "rlavr/label_acc_used", "loss"):
    assert np.isfinite(float(metrics[k])), k
  if algo.selection == "care":
    assert "probe/stage1_ce" in metrics and "rlavr/stage1_auroc" in metrics


def test_care_fused_equals_split(sources):
  runs = {}
  for mode in ("fused", "split"):
    step, state, _, batches, _ = _setup("care", sources, mode)
    for batch in batches:
      state, metrics = step(state, batch)
    runs[mode] = (state, metrics)
  (a, ma), (b, mb) = runs["fused"], runs["split"]
  as_np = lambda x: np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)  # noqa: E731
  for x, y in zip(jax.tree.leaves((a.params, a.algo_state)), jax.tree.leaves((b.params, b.algo_state))):
    np.testing.assert_allclose(as_np(x), as_np(y), rtol=1e-5, atol=1e-6)
  assert ma.keys() == mb.keys()


def test_acquisition_never_reads_a_label(sources):
  """Garbage ground truth changes what the oracle reveals, never which prompts are queried."""
  garbage = [dict(sources[0][i], answer="no such answer") for i in range(len(sources[0]))]
  results = []
  for records in (sources[0], garbage):
    step, state, algo, batches, _ = _setup("care", sources, records=records)
    for batch in batches[:2]:  # past the warm-up: the gate and the probes are live
      state, _ = step(state, batch)

    @jax.jit   # the phases up to the labels, as one program (op by op they take seconds)
    def up_to_labels(params, algo_state, step_count, batch, algo=algo, graphdef=step.graphdef):
      ctx = PhaseContext(model=nnx.merge(graphdef, params), key=jax.random.key(7), step=step_count,
                         algo_state=algo_state)
      record = StepRecord(batch=batch)
      for phase in (algo.rollout_phase, algo.cluster_phase, algo.acquire_phase, algo.label_phase):
        record = phase(ctx, record)
      return record.aux
    results.append(up_to_labels(state.params, state.algo_state, state.step, jax.tree.map(jnp.asarray, batches[2])))
  right, wrong = results
  np.testing.assert_array_equal(np.asarray(right["query_P"]), np.asarray(wrong["query_P"]))
  np.testing.assert_array_equal(np.asarray(right["reliable_P"]), np.asarray(wrong["reliable_P"]))
  assert int(np.asarray(right["query_P"]).sum()) == 2
  # The oracle did see the difference: garbage answers match no sampled answer.
  assert (np.asarray(wrong["gt_P"])[np.asarray(wrong["query_P"])] == -2).all()


def test_hidden_state_features_equal_a_full_forward(sources):
  step, state, algo, batches, _ = _setup("care", sources)
  model = nnx.merge(step.graphdef, state.params)
  ctx = PhaseContext(model=model, key=jax.random.key(0), step=state.step, algo_state=state.algo_state)
  record = algo.rollout_phase(ctx, StepRecord(batch=jax.tree.map(jnp.asarray, batches[0])))
  r = record.rollout
  hidden = forward_full(model, r.tokens_BxS, r.valid_BxS)
  last = gather_positions(hidden, last_valid_index(r.valid_BxS)[:, None])[:, 0]
  np.testing.assert_allclose(np.asarray(record.aux["h_resp_PxGxD"]).reshape(P * G, -1), np.asarray(last), atol=1e-5)
  t = batches[0].prompt_tokens_PxT.shape[1]
  prompt_last = np.asarray(hidden)[::G, t - 1]
  np.testing.assert_allclose(np.asarray(record.aux["h_prompt_PxD"]), prompt_last, atol=1e-5)


def _train(arm, sources, **rlavr):
  step, state, algo, batches, _ = _setup(arm, sources, **rlavr)
  initial_probes = jax.tree.map(np.asarray, state.algo_state.get("probe_params"))
  for batch in batches:
    state, metrics = step(state, batch)
  return state, metrics, initial_probes


def test_budget_zero_and_one(sources):
  """p = 0: nothing is ever queried and the probes, with no labelled data, stay untouched; p = 1 with
  random selection is exactly full-GT training (every prompt labelled, nothing masked)."""
  state, metrics, probes0 = _train("care", sources, p=0.0)
  assert int(state.algo_state["labels_spent"]) == 0 and float(metrics["rlavr/labels_used"]) == 0
  assert np.isfinite(float(metrics["loss"]))
  for a, b in zip(jax.tree.leaves(probes0), jax.tree.leaves(state.algo_state["probe_params"])):
    np.testing.assert_array_equal(a, np.asarray(b))
  everything, _, _ = _train("gt_only_random", sources, p=1.0)
  full, _, _ = _train("full_gt", sources)
  assert int(everything.algo_state["labels_spent"]) == int(full.algo_state["labels_spent"]) == 3 * P
  for a, b in zip(jax.tree.leaves(everything.params), jax.tree.leaves(full.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_budget_one_with_a_gate_is_a_config_error():
  cfg = _config("care", p=1.0)
  with pytest.raises(builders.ConfigError, match="config.rlavr.p2: rlavr.p \\+ rlavr.p2 = 1.25 exceeds 1"):
    builders.validate_config(cfg, num_devices=1)


def test_responses_without_an_extractable_answer_get_no_reward(sources):
  """`answer_style=boxed` on arithmetic: no response has a \\boxed{} answer, so no group has a
  majority, every reward is 0, queried labels match no cluster, and the step is a finite no-op."""
  step, state, algo, batches, _ = _setup("rlavr_random", sources, answer_style="boxed")
  params0 = jax.tree.map(np.asarray, state.params)
  for batch in batches:
    state, metrics = step(state, batch)
  assert float(metrics["reward_mean"]) == 0.0 and float(metrics["rlavr/answer_entropy"]) == 0.0
  assert float(metrics["rlavr/labels_used"]) == 2 and float(metrics["rlavr/pseudo_label_acc"]) == 0.0
  assert float(metrics["loss"]) == 0.0 and float(metrics["grad_norm"]) == 0.0
  for a, b in zip(jax.tree.leaves(params0), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, np.asarray(b))


def test_soft_score_ranks_by_one_minus_p1_times_s(sources):
  """`rlavr.score=soft` queries the top ceil(pP) prompts by (1 - p1) * s among the ungated ones."""
  step, state, algo, batches, _ = _setup("care", sources, score="soft")
  for batch in batches[:2]:  # past the warm-up: the gate is live
    state, _ = step(state, batch)
  ctx = PhaseContext(model=nnx.merge(step.graphdef, state.params), key=jax.random.key(3), step=state.step,
                     algo_state=state.algo_state)
  record = StepRecord(batch=jax.tree.map(jnp.asarray, batches[2]))
  for phase in (algo.rollout_phase, algo.cluster_phase, algo.acquire_phase):
    record = phase(ctx, record)
  a = {k: np.asarray(v) for k, v in record.aux.items() if k in ("query_P", "reliable_P", "s_P", "p1_P")}
  assert a["reliable_P"].sum() == 2 and not (a["query_P"] & a["reliable_P"]).any()
  soft = np.where(a["reliable_P"], -np.inf, (1.0 - a["p1_P"]) * a["s_P"])
  assert set(np.flatnonzero(a["query_P"])) == set(np.argsort(-soft, kind="stable")[:2])

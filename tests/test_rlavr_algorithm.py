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


def _config(arm: str, mode: str = "fused"):
  cfg = get_config(arm)
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


def _setup(arm, sources, mode="fused", records=None):
  cfg = _config(arm, mode)
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
    ctx = PhaseContext(model=nnx.merge(step.graphdef, state.params), key=jax.random.key(7), step=state.step,
                       algo_state=state.algo_state)
    record = StepRecord(batch=jax.tree.map(jnp.asarray, batches[2]))
    for phase in (algo.rollout_phase, algo.cluster_phase, algo.acquire_phase, algo.label_phase):
      record = phase(ctx, record)
    results.append(record.aux)
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

"""CARE probes: masked stage-2 logits, class-weighted losses that ignore padding, a learnable signal,
and the functional FIFO replay buffer with stratified sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from selfrl_jax.algos import rlavr_probes as rp
from selfrl_jax.algos.rlavr_labels import masked_log_softmax

B, N, D = 16, 4, 8


def _features(key, signal_B=None):
  k = jax.random.split(key, 3)
  h_prompt = jax.random.normal(k[0], (B, D))
  if signal_B is not None:  # the reliability label is written into one hidden coordinate
    h_prompt = h_prompt.at[:, 0].set(3.0 * (2 * signal_B - 1))
  feasible = jnp.zeros((B, N + 1), bool).at[:, 0].set(True).at[:, 2].set(True)
  valid = jnp.ones((B, N), bool).at[:, -1].set(False)
  return rp.ProbeFeatures(h_prompt_BxD=h_prompt, h_resp_BxNxD=jax.random.normal(k[1], (B, N, D)),
                          feat_BxF=jax.random.uniform(k[2], (B, 1 + N)), len_BxN=jnp.full((B, N), 0.1),
                          valid_BxN=valid, other_BxN=valid.at[:, 0].set(False), feasible_BxC=feasible)


def _targets(z1, weight=None):
  z1 = jnp.asarray(z1, jnp.int32)
  return rp.ProbeTargets(z1_B=z1, z2_B=jnp.where(z1 == 1, 0, 2), resp_correct_BxN=jnp.tile(z1[:, None], (1, N)),
                         weight_B=jnp.ones(B) if weight is None else weight)


def test_stage2_puts_no_mass_on_infeasible_classes_and_shapes():
  probes = rp.CareProbes(D, N, rngs=nnx.Rngs(0))
  f = _features(jax.random.key(0))
  logits1, aux = probes.stage1(f)
  q = np.exp(np.asarray(masked_log_softmax(probes.stage2(f), f.feasible_BxC)))
  assert logits1.shape == (B, 2) and aux.shape == (B, N, 2) and q.shape == (B, N + 1)
  assert (q[:, [1, 3, 4]] == 0).all()
  np.testing.assert_allclose(q.sum(1), 1, rtol=1e-6)


def test_padding_rows_do_not_change_the_loss():
  probes = rp.CareProbes(D, N, rngs=nnx.Rngs(0))
  f = _features(jax.random.key(1))
  z1 = (np.arange(B) % 3 == 0).astype(np.int32)
  w = jnp.asarray((np.arange(B) < 10).astype(np.float32))
  loss, _ = rp.probe_loss(probes, f, _targets(z1, w))
  # Same rows without padding: slice the first 10.
  f10, t10 = jax.tree.map(lambda x: x[:10], (f, _targets(z1, w)))
  loss10, _ = rp.probe_loss(probes, f10, t10)
  np.testing.assert_allclose(float(loss), float(loss10), rtol=1e-5)


def test_stage1_probe_learns_a_planted_reliability_signal():
  probes = rp.CareProbes(D, N, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(probes)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, weight_decay=0.0))
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, key):
    z1 = jax.random.bernoulli(key, 0.3, (B,)).astype(jnp.int32)
    f = _features(jax.random.fold_in(key, 1), z1)
    loss, grads = jax.value_and_grad(lambda p: rp.probe_loss(nnx.merge(graphdef, p), f, _targets(z1))[0])(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  for i in range(150):
    params, opt, loss = step(params, opt, jax.random.key(i))
  z1 = jax.random.bernoulli(jax.random.key(999), 0.3, (B,)).astype(jnp.int32)
  logits, _ = nnx.merge(graphdef, params).stage1(_features(jax.random.key(1000), z1))
  assert (np.asarray(logits.argmax(-1)) == np.asarray(z1)).mean() >= 0.9


def test_replay_buffer_is_a_fifo_ring_and_samples_stratified():
  f = _features(jax.random.key(2))
  buf = rp.empty_buffer(f, _targets(np.zeros(B)), capacity=6)
  e_f, e_t = rp.sample(buf, jax.random.key(0), 4)
  assert float(e_t.weight_B.sum()) == 0  # empty buffer: nothing to train on
  # Push rows 0..15 with only rows 0, 3, 6, ... kept (weight > 0): 6 rows, then 5 more wrap around.
  z1 = np.arange(B) % 2
  keep = jnp.asarray((np.arange(B) % 3 == 0).astype(np.float32))
  t = _targets(z1, keep).replace(z2_B=jnp.arange(B, dtype=jnp.int32))
  buf = rp.push(buf, f, t)
  assert int(buf.size) == 6 and int(buf.ptr) == 0
  np.testing.assert_array_equal(np.asarray(buf.targets.z2_B), [0, 3, 6, 9, 12, 15])
  buf = rp.push(buf, f, t.replace(z2_B=t.z2_B + 100, weight_B=keep.at[0].set(0)))  # 5 rows
  np.testing.assert_array_equal(np.asarray(buf.targets.z2_B), [103, 106, 109, 112, 115, 15])
  assert int(buf.ptr) == 5 and int(buf.size) == 6
  # Stratified: classes {1: 5 rows, 3: 1 row} are drawn about equally often.
  strat = rp.empty_buffer(f, _targets(np.zeros(B)), capacity=6)
  strat = rp.push(strat, f, _targets(np.zeros(B), jnp.asarray((np.arange(B) < 6).astype(np.float32)))
                  .replace(z2_B=jnp.asarray([1, 1, 1, 1, 1, 3] + [0] * 10, jnp.int32)))
  _, drawn = rp.sample(strat, jax.random.key(5), 4000, stratify_by_z2=True)
  frac3 = float((np.asarray(drawn.z2_B) == 3).mean())
  assert 0.45 < frac3 < 0.55
  _, plain = rp.sample(strat, jax.random.key(5), 4000)
  assert 0.12 < float((np.asarray(plain.z2_B) == 3).mean()) < 0.22

"""CARE's two probes on frozen policy features, their training loss, and the replay buffer
(rlavr.md §2 (6) and (9), §4 dims; Flax NNX, split once and trained inside the jitted step).

    probes = CareProbes(d_model, n, rngs=nnx.Rngs(0))
    p1_logits_Bx2, aux_BxNx2 = probes.stage1(f)          # P(majority correct), per-response correctness
    q_logits_BxC = probes.stage2(f)                      # #GT-correct outside the majority, C = n + 1
    loss, metrics = probe_loss(probes, f, targets)       # class-weighted CE + 1.5 aux CE + masked CE

`f` is a `ProbeFeatures`: the policy's last-layer hidden states at the last prompt token and at each
response's last token (from the sampler, no second forward pass) plus the released scalar features.
Deviation (spec §7 allows it): LayerNorm instead of BatchNorm, so the probes have no batch
statistics to carry and behave the same in training and scoring.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from selfrl_jax.algos.rlavr_labels import class_balance_weights, masked_ce

LENGTH_SCALE = 4000.0  # response lengths / 4000, clipped to [0, 1] (released scalar feature)


@struct.dataclass
class ProbeFeatures:
  """Per prompt: h_prompt_BxD, h_resp_BxNxD, feat_BxF (F = 1 + n: valid ratio, cluster fractions),
  len_BxN (lengths / 4000 in [0, 1]), valid_BxN (response has an answer), other_BxN (valid and
  outside the majority cluster: stage 2's responses), feasible_BxC (stage-2 classes)."""

  h_prompt_BxD: jax.Array
  h_resp_BxNxD: jax.Array
  feat_BxF: jax.Array
  len_BxN: jax.Array
  valid_BxN: jax.Array
  other_BxN: jax.Array
  feasible_BxC: jax.Array


@struct.dataclass
class ProbeTargets:
  """z1_B (1[majority correct]), z2_B (#correct outside the majority), resp_correct_BxN; `weight_B`
  is 1 on rows to train on (queried prompts, replayed rows) and 0 on padding."""

  z1_B: jax.Array
  z2_B: jax.Array
  resp_correct_BxN: jax.Array
  weight_B: jax.Array


def _mlp(dims, rngs):
  return nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])


def _run(layers, x, final_act: bool = True):
  for i, layer in enumerate(layers):
    x = layer(x)
    if final_act or i < len(layers) - 1:
      x = jax.nn.relu(x)
  return x


def _masked_mean(x_BxNxH, mask_BxN):
  m = mask_BxN.astype(x_BxNxH.dtype)[..., None]
  return (x_BxNxH * m).sum(1) / jnp.maximum(m.sum(1), 1.0)


class _Probe(nnx.Module):
  """prompt branch [h_prompt ⊕ feat] -> LN -> 128; response branch -> LN -> 64 -> 512, mean-pooled;
  head concat -> LN -> 256 -> classes."""

  def __init__(self, d_model: int, n_feat: int, resp_extra: int, classes: int, *, rngs: nnx.Rngs):
    self.prompt_norm = nnx.LayerNorm(d_model + n_feat, rngs=rngs)
    self.prompt = _mlp((d_model + n_feat, 128), rngs)
    self.resp_norm = nnx.LayerNorm(d_model + resp_extra, rngs=rngs)
    self.resp = _mlp((d_model + resp_extra, 64, 512), rngs)
    self.head_norm = nnx.LayerNorm(128 + 512, rngs=rngs)
    self.head = _mlp((128 + 512, 256, classes), rngs)

  def __call__(self, h_prompt_BxD, feat_BxF, resp_in_BxNxE, pool_mask_BxN):
    prompt = _run(self.prompt, self.prompt_norm(jnp.concatenate([h_prompt_BxD, feat_BxF], -1)))
    resp_BxNxH = _run(self.resp, self.resp_norm(resp_in_BxNxE))
    pooled = _masked_mean(resp_BxNxH, pool_mask_BxN)
    return _run(self.head, self.head_norm(jnp.concatenate([prompt, pooled], -1)), final_act=False), resp_BxNxH


class CareProbes(nnx.Module):
  """Stage 1 (reliability, plus the auxiliary per-response head) and stage 2 (correction size)."""

  def __init__(self, d_model: int, n: int, *, rngs: nnx.Rngs):
    self.n = n
    self.p1 = _Probe(d_model, 1 + n, 1, 2, rngs=rngs)
    self.aux = nnx.Linear(512, 2, rngs=rngs)
    self.p2 = _Probe(d_model, 1 + n, 0, n + 1, rngs=rngs)

  def stage1(self, f: ProbeFeatures):
    resp_in = jnp.concatenate([f.h_resp_BxNxD, f.len_BxN[..., None]], -1)
    logits_Bx2, resp_BxNxH = self.p1(f.h_prompt_BxD, f.feat_BxF, resp_in, f.valid_BxN)
    return logits_Bx2, self.aux(resp_BxNxH)

  def stage2(self, f: ProbeFeatures):
    logits_BxC, _ = self.p2(f.h_prompt_BxD, f.feat_BxF, f.h_resp_BxNxD, f.other_BxN)
    return logits_BxC


def probe_loss(probes: CareProbes, f: ProbeFeatures, t: ProbeTargets, aux_weight: float = 1.5):
  """Stage 1: class-weighted CE on z1 + aux_weight · CE of per-response correctness; stage 2:
  class-weighted CE of z2 over the masked (feasible) logits (§2 (9)). Rows with weight 0 count
  neither in the losses nor in the class-balance counts."""
  row = t.weight_B > 0
  b, n = t.resp_correct_BxN.shape
  logits1, aux = probes.stage1(f)
  z1 = t.z1_B.astype(jnp.int32)
  w1 = class_balance_weights(jnp.where(row, z1, 2), 3)[:2]  # class 2 collects the padding rows
  all_2 = jnp.ones((b, 2), bool)
  loss1 = masked_ce(logits1, z1, all_2, w1, t.weight_B)
  resp_rows = (f.valid_BxN & row[:, None]).reshape(-1).astype(jnp.float32)
  aux_loss = masked_ce(aux.reshape(b * n, 2), t.resp_correct_BxN.reshape(-1).astype(jnp.int32),
                       jnp.ones((b * n, 2), bool), jnp.ones(2), resp_rows)
  z2 = jnp.where(row, t.z2_B.astype(jnp.int32), 0)  # padding rows point at class 0, always feasible
  w2 = class_balance_weights(jnp.where(row, z2, n + 1), n + 2)[:n + 1]
  loss2 = masked_ce(probes.stage2(f), z2, f.feasible_BxC, w2, t.weight_B)
  loss = loss1 + aux_weight * aux_loss + loss2
  return loss, {"probe/stage1_ce": loss1, "probe/aux_ce": aux_loss, "probe/stage2_ce": loss2}


# ---------------------------------------------------------------------------------------------
# Replay buffer: a functional FIFO ring over (features, targets) rows, kept in the algorithm state.


@struct.dataclass
class ReplayBuffer:
  """`capacity` rows of (ProbeFeatures, ProbeTargets) with a write pointer and fill count."""

  features: ProbeFeatures
  targets: ProbeTargets
  ptr: jax.Array
  size: jax.Array

  @property
  def capacity(self) -> int:
    return self.targets.z1_B.shape[0]


def empty_buffer(example_features: ProbeFeatures, example_targets: ProbeTargets, capacity: int) -> ReplayBuffer:
  """A zero-filled buffer whose rows look like those of the examples (any batch size)."""
  zeros = lambda x: jnp.zeros((capacity,) + x.shape[1:], x.dtype)  # noqa: E731
  return ReplayBuffer(features=jax.tree.map(zeros, example_features), targets=jax.tree.map(zeros, example_targets),
                      ptr=jnp.zeros((), jnp.int32), size=jnp.zeros((), jnp.int32))


def push(buf: ReplayBuffer, f: ProbeFeatures, t: ProbeTargets) -> ReplayBuffer:
  """Appends the rows with `t.weight_B > 0` (queried prompts) in order, overwriting the oldest."""
  keep_B = t.weight_B > 0
  order = jnp.argsort(~keep_B, stable=True)  # kept rows first, in order
  count = keep_B.sum().astype(jnp.int32)
  slots = (buf.ptr + jnp.arange(keep_B.shape[0])) % buf.capacity
  # Rows beyond `count` write to an out-of-range index and are dropped.
  slots = jnp.where(jnp.arange(keep_B.shape[0]) < count, slots, buf.capacity)

  def write(store, rows):
    return store.at[slots].set(rows[order], mode="drop")
  return buf.replace(features=jax.tree.map(write, buf.features, f), targets=jax.tree.map(write, buf.targets, t),
                     ptr=(buf.ptr + count) % buf.capacity, size=jnp.minimum(buf.size + count, buf.capacity))


def sample(buf: ReplayBuffer, key: jax.Array, m: int, stratify_by_z2: bool = False
           ) -> tuple[ProbeFeatures, ProbeTargets]:
  """m rows drawn with replacement from the filled part; with `stratify_by_z2` each present stage-2
  class is drawn equally often in expectation (released: stage-2 replay is stratified by label).
  An empty buffer gives rows with weight 0."""
  filled = jnp.arange(buf.capacity) < buf.size
  if stratify_by_z2:
    counts = jnp.bincount(jnp.where(filled, buf.targets.z2_B, 0), weights=filled.astype(jnp.float32),
                          length=buf.features.feasible_BxC.shape[1])
    p = jnp.where(filled, 1.0 / jnp.maximum(counts[buf.targets.z2_B], 1.0), 0.0)
  else:
    p = filled.astype(jnp.float32)
  p = jnp.where(buf.size > 0, p / jnp.maximum(p.sum(), 1e-12), jnp.full(p.shape, 1.0 / p.shape[0]))
  idx = jax.random.choice(key, buf.capacity, (m,), replace=True, p=p)
  f, t = jax.tree.map(lambda x: x[idx], (buf.features, buf.targets))
  return f, t.replace(weight_B=jnp.where(buf.size > 0, t.weight_B, 0.0))

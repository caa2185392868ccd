"""SSRL-IF's self-supervised reward model (ssrl_if.md §3.3): a constraint-wise binary classifier
f(o, c) = P(response o satisfies constraint c), trained on pseudo-labels from instruction ladders.

    pairs = ladder_pairs(responses_by_level, instruction)   # (o_k, c_k, 1) and (o_{k-1}, c_k, 0)
    tokens_NxL, valid_NxL = rm_inputs(tok, [p.response for p in pairs], [p.constraint for p in pairs], L)
    params, metrics = train_rm(graphdef, params, tokens_NxL, valid_NxL, labels_N, steps=..., ...)
    prob_N = rm_prob(nnx.merge(graphdef, params)(tokens_NxL, valid_NxL))

The classifier is a decoder backbone with a 2-way head on the final hidden state of the input's last
token (the released code's `AutoModelForSequenceClassification(num_labels=2)`). Its input holds only
the constraint text and the response (never the instruction), in a fixed template (`RM_TEMPLATE`).
The loss is the 2-way softmax cross-entropy, i.e. the spec's

    L = - sum_k [ log f(o_k, c_k) + log(1 - f(o_{k-1}, c_k)) ],

averaged over pairs; `bradley_terry_loss` is the ablation of Table 6, -log sigmoid(r_pos - r_neg).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from selfrl_jax.models.config import ModelConfig
from selfrl_jax.models.decoder import Decoder, forward_full
from selfrl_jax.models.tokenizers import Tokenizer

# The toy's input is one string, the constraint first (the IFEval world's is ssrl_if_worlds.IFEVAL_TEMPLATE).
# Bump the version when the reading of a template changes; the template strings themselves are part
# of the preparation stage's cache key, so editing one retrains the classifier.
RM_TEMPLATE = "{constraint}|{response}"
RM_TEMPLATE_VERSION = 1


class RewardClassifier(nnx.Module):
  """Decoder backbone + linear head: tokens_NxL, valid_NxL -> logits_Nx2 (class 1: satisfied)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.backbone = Decoder(cfg, rngs=rngs)
    self.head = nnx.Linear(cfg.d_model, 2, rngs=rngs)

  def __call__(self, tokens_NxL: jax.Array, valid_NxL: jax.Array) -> jax.Array:
    hidden_NxLxD = forward_full(self.backbone, tokens_NxL, valid_NxL)
    # Inputs are left-padded: the last position is the last real token of every row.
    return self.head(hidden_NxLxD[:, -1].astype(jnp.float32))


def classifier_graphdef(cfg: ModelConfig) -> nnx.GraphDef:
  return nnx.graphdef(nnx.eval_shape(lambda: RewardClassifier(cfg, rngs=nnx.Rngs(0))))


def init_classifier(cfg: ModelConfig, key: jax.Array, backbone_params=None) -> nnx.State:
  """Classifier parameters: a random head, the backbone from `backbone_params` (e.g. the policy's
  parameters, `nnx.state(policy, nnx.Param)`) or random."""
  params = nnx.state(RewardClassifier(cfg, rngs=nnx.Rngs(params=key)), nnx.Param)
  if backbone_params is not None:
    params["backbone"] = jax.tree.map(jnp.asarray, backbone_params)
  return params


def rm_prob(logits_Nx2: jax.Array) -> jax.Array:
  """R_s(o, c) = softmax(logits)[1] in [0, 1] (§3.3)."""
  return jax.nn.softmax(logits_Nx2.astype(jnp.float32), axis=-1)[..., 1]


def classification_loss(logits_Nx2: jax.Array, labels_N: jax.Array, weight_N: jax.Array | None = None) -> jax.Array:
  """Mean 2-way softmax cross-entropy (= binary cross-entropy on z1 - z0) over weighted pairs."""
  ce_N = optax.softmax_cross_entropy_with_integer_labels(logits_Nx2.astype(jnp.float32), labels_N)
  w = jnp.ones_like(ce_N) if weight_N is None else weight_N
  return (ce_N * w).sum() / jnp.maximum(w.sum(), 1.0)


def bradley_terry_loss(r_pos_N: jax.Array, r_neg_N: jax.Array) -> jax.Array:
  """Table 6's alternative objective: mean -log sigmoid(r_pos - r_neg)."""
  return -jax.nn.log_sigmoid(r_pos_N - r_neg_N).mean()


@dataclasses.dataclass(frozen=True)
class Pair:
  response: str
  constraint: Any  # the world's constraint (text, or an object with `.text` and `.soft`)
  label: int
  level: int  # k: the constraint's position in its instruction (1-based)


def ladder_pairs(responses: Sequence[str], instruction: Sequence[str]) -> list[Pair]:
  """Pseudo-labelled pairs of one ladder (§3.3): for each c_k, (o_k, c_k, 1) and (o_{k-1}, c_k, 0).

  Args:
    responses: o_0 ... o_n, the responses to x_0 (no constraint) ... x_n (all n constraints).
    instruction: c_1 ... c_n.
  """
  if len(responses) != len(instruction) + 1:
    raise ValueError(f"a ladder of {len(instruction)} constraints needs {len(instruction) + 1} responses, "
                     f"got {len(responses)}")
  out = []
  for k, c in enumerate(instruction, start=1):
    out += [Pair(responses[k], c, 1, k), Pair(responses[k - 1], c, 0, k)]
  return out


def rm_inputs(tokenizer: Tokenizer, responses: Sequence[str], constraints: Sequence[str], width: int,
              template: str = RM_TEMPLATE) -> tuple[np.ndarray, np.ndarray]:
  """(tokens_NxL, valid_NxL): each (response, constraint) in the template, left-padded to `width`;
  an input longer than `width` keeps its last `width` tokens. With the toy template (constraint
  first) that is the end of the response; with the IFEval template, which ends with the constraint,
  the judge instruction goes first, then the start of the response."""
  tokens = np.full((len(responses), width), tokenizer.pad_id, np.int32)
  valid = np.zeros((len(responses), width), bool)
  for i, (r, c) in enumerate(zip(responses, constraints)):
    ids = tokenizer.encode(template.format(constraint=c, response=r))[-width:]
    if ids:
      tokens[i, width - len(ids):], valid[i, width - len(ids):] = ids, True
  return tokens, valid


def train_rm(graphdef: nnx.GraphDef, params: nnx.State, tokens_NxL: np.ndarray, valid_NxL: np.ndarray,
             labels_N: np.ndarray, *, steps: int, batch_size: int, learning_rate: float, seed: int,
             objective: str = "ce", on_step=None) -> tuple[nnx.State, dict[str, float]]:
  """Trains the classifier with Adam on random minibatches (one compiled step); returns the params and
  the last-100-step mean training loss and accuracy.

  objective: "ce" — 2-way cross-entropy on `batch_size` random inputs (the paper's classifier);
    "bt" — Bradley-Terry (Table 6's alternative), -log sigmoid(r_pos - r_neg) with r = z1 - z0, on
    `batch_size // 2` random (positive, negative) pairs; the inputs must come as `ladder_pairs` makes
    them, positive then negative for each constraint (labels 1, 0, 1, 0, ...). Accuracy for "bt" is
    how often r_pos > r_neg.
  on_step: called with the step index after each step (a progress bar).
  """
  if objective not in ("ce", "bt"):
    raise ValueError(f"unknown classifier objective {objective!r}; valid: ['bt', 'ce']")
  labels_N = np.asarray(labels_N, np.int32)
  if len(labels_N) < batch_size:
    raise ValueError(f"{len(labels_N)} pseudo-labelled pairs, fewer than rm batch_size={batch_size}")
  if objective == "bt" and (len(labels_N) % 2 or (labels_N[0::2] != 1).any() or (labels_N[1::2] != 0).any()):
    raise ValueError("objective='bt' needs the inputs as (positive, negative) pairs: labels 1, 0, 1, 0, ...")
  tx = optax.adam(learning_rate)
  opt_state = tx.init(params)
  data = (jnp.asarray(tokens_NxL), jnp.asarray(valid_NxL), jnp.asarray(labels_N, jnp.int32))

  def loss_fn(p, tokens, valid, labels):
    logits = nnx.merge(graphdef, p)(tokens, valid)
    if objective == "ce":
      return classification_loss(logits, labels), (jnp.argmax(logits, -1) == labels).mean()
    r_pos, r_neg = (logits[:, 1] - logits[:, 0]).reshape(-1, 2).T
    return bradley_terry_loss(r_pos, r_neg), (r_pos > r_neg).mean()

  @jax.jit
  def step(params, opt_state, key):
    if objective == "ce":
      idx = jax.random.randint(key, (batch_size,), 0, data[2].shape[0])
    else:  # whole pairs: rows 2j (positive) and 2j + 1 (negative)
      j = jax.random.randint(key, (max(batch_size // 2, 1),), 0, data[2].shape[0] // 2)
      idx = jnp.stack([2 * j, 2 * j + 1], axis=1).reshape(-1)
    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, *(x[idx] for x in data))
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, acc

  key = jax.random.key(seed)
  history = []
  for i in range(steps):
    params, opt_state, loss, acc = step(params, opt_state, jax.random.fold_in(key, i))
    history.append((loss, acc))
    if on_step is not None:
      on_step(i)
  tail = np.asarray(jax.device_get(history[-100:]), np.float64)
  return params, {"train_loss": float(tail[:, 0].mean()), "train_acc": float(tail[:, 1].mean())}


def classifier_probs(graphdef: nnx.GraphDef, params: nnx.State, tokens_NxL: np.ndarray, valid_NxL: np.ndarray,
                     batch_size: int = 256) -> np.ndarray:
  """prob_N of class 1 for many inputs, in fixed-size batches (the last one padded)."""
  apply = jax.jit(lambda p, t, v: rm_prob(nnx.merge(graphdef, p)(t, v)))
  n = len(tokens_NxL)
  out = []
  for start in range(0, n, batch_size):
    t, v = tokens_NxL[start:start + batch_size], valid_NxL[start:start + batch_size]
    pad = batch_size - len(t)
    if pad:
      t, v = np.concatenate([t, np.repeat(t[-1:], pad, 0)]), np.concatenate([v, np.repeat(v[-1:], pad, 0)])
    out.append(np.asarray(apply(params, t, v))[:batch_size - pad])
  return np.concatenate(out) if out else np.zeros((0,), np.float32)


def roc_auc(scores_N: np.ndarray, labels_N: np.ndarray) -> float:
  """Area under the ROC curve: P(score of a random positive > a random negative), ties counted 1/2
  (the Mann-Whitney statistic from average ranks). NaN when a class is absent."""
  scores, labels = np.asarray(scores_N, np.float64), np.asarray(labels_N).astype(bool)
  n_pos, n_neg = labels.sum(), (~labels).sum()
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  from scipy.stats import rankdata  # pylint: disable=import-outside-toplevel
  ranks = rankdata(scores, method="average")
  return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))

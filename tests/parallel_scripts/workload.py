"""Shared workload for the parallelism tests: tiny qwen2 model, fixed batch, loss + grad + adam step.

Imported both by the pytest process (single-device reference) and by the subprocess entry points
(8 simulated devices, 2 local processes), so every run computes exactly the same function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from selfrl_jax.models.config import tiny_config
from selfrl_jax.models.decoder import forward_full, init_model

BATCH, SEQ = 8, 16
LEARNING_RATE = 1e-3


def model_config():
  # Untied lm_head and qwen2 biases so every rule in PARAM_RULES except q/k norm is exercised.
  return tiny_config("qwen2", vocab_size=64, d_model=64, n_heads=4, n_kv_heads=2, d_ff=128, n_layers=1,
                     tie_embeddings=False)


def build():
  """(graphdef, params) of the seed-0 model; identical in every process."""
  return nnx.split(init_model(model_config(), seed=0), nnx.Param)


def make_batch() -> dict[str, np.ndarray]:
  """Random tokens with per-row left padding (0..3 pad slots), fixed seed."""
  rng = np.random.default_rng(1234)
  tokens_BxT = rng.integers(0, 64, size=(BATCH, SEQ), dtype=np.int32)
  pad_B = np.arange(BATCH) % 4
  valid_BxT = np.arange(SEQ)[None, :] >= pad_B[:, None]
  return {"tokens": np.where(valid_BxT, tokens_BxT, 0).astype(np.int32), "valid": valid_BxT}


def make_step(graphdef, out_shardings=None):
  """jit of params, opt_state, batch -> (loss, logp_per_row_B, grads, new_params, new_opt_state)."""
  # Adam's first step is lr * g / (|g| + eps): with the default eps=1e-8 a 1e-10 rounding
  # difference in a near-zero gradient moves the update by 1e-5. A larger eps keeps the update as
  # well-conditioned as the gradient, so it can be compared at the same tolerance.
  tx = optax.adam(LEARNING_RATE, eps=1e-4)

  def loss_fn(params, batch):
    model = nnx.merge(graphdef, params)
    tokens_BxT, valid_BxT = batch["tokens"], batch["valid"]
    hidden_BxTxD = forward_full(model, tokens_BxT, valid_BxT)
    logp_BxTxV = jax.nn.log_softmax(model.logits(hidden_BxTxD[:, :-1]), axis=-1)
    tok_logp_BxT = jnp.take_along_axis(logp_BxTxV, tokens_BxT[:, 1:, None], axis=-1)[..., 0]
    mask_BxT = valid_BxT[:, 1:] & valid_BxT[:, :-1]
    logp_B = jnp.sum(tok_logp_BxT * mask_BxT, axis=1)
    return -jnp.sum(logp_B) / jnp.sum(mask_BxT), logp_B

  def step(params, opt_state, batch):
    (loss, logp_B), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
    updates, new_opt_state = tx.update(grads, opt_state, params)
    return loss, logp_B, grads, optax.apply_updates(params, updates), new_opt_state

  return tx, jax.jit(step, out_shardings=out_shardings)


def to_numpy(tree) -> dict[str, np.ndarray]:
  """Flat {path: array} of a (fully addressable or fully replicated) pytree."""
  from selfrl_jax.parallel.sharding import path_str
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {path_str(p): np.asarray(x.addressable_data(0) if not x.is_fully_addressable else x)
          for p, x in flat}


def reference() -> dict[str, np.ndarray]:
  """Single-device result: loss, per-row log-probs, grads/*, new_params/*."""
  graphdef, params = build()
  tx, step = make_step(graphdef)
  batch = {k: jnp.asarray(v) for k, v in make_batch().items()}
  loss, logp_B, grads, new_params, _ = step(params, tx.init(params), batch)
  out = {"loss": np.asarray(loss), "logp_B": np.asarray(logp_B)}
  out.update({f"grads/{k}": v for k, v in to_numpy(grads).items()})
  out.update({f"new_params/{k}": v for k, v in to_numpy(new_params).items()})
  return out

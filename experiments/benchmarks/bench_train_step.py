r"""Train-step throughput and MFU of the policy update, plus one fused RL iteration for reference.

  JAX_PLATFORMS=cpu python -m experiments.benchmarks.bench_train_step                  # defaults
  JAX_PLATFORMS=cpu python -m experiments.benchmarks.bench_train_step --batch_sizes=8 \
      --logprob_chunks=0,512 --micro_batches=0,4 --bare --nofused          # knobs

What is timed (per row of the table): the compiled UPDATE segment of a split-mode `TrainStep` from
`selfrl_jax.train.step` — the real update path (advantages, one teacher-forced forward + backward of the clipped GRPO loss
over [B, S] sequences with entropy, gradient accumulation over micro-batches, global-norm clip,
AdamW) — fed a synthetic `Rollout` (random tokens; the first `prompt_len` slots are prompt, the
rest are loss-masked response tokens) and random rewards. One epoch over one minibatch, beta = 0:
no extra old-policy or reference forward pass, so the work is exactly forward + backward + Adam.
`--bare` adds a row per setting for a plain jitted `value_and_grad` of -mean(sequence_logprobs)
+ the same optimizer, to separate the RL loss's overhead from the model's.

FLOPs use `roofline.train_flops` (3x forward matmul FLOPs incl. full S x S attention and the LM
head on the positions that use it: the update skips the prompt's); MFU = achieved FLOP/s /
measured float32 matmul peak (a jitted 2048^3 matmul), measured before, between and after the
rows; the highest value is used. Step times are best-of-`repeats`, so on a shared machine both
numbers are the least-disturbed ones seen.

The fused reference row times `TrainStep.fused` (sample -> trivial jittable reward -> advantage ->
update) at P=4, G=4, a 32-token prompt and 64 new tokens without a stop token, same model; sampling
alone is the rollout segment of the split-mode step (the same rollout phase).
"""

from __future__ import annotations

import dataclasses
import os
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from configs.common import get_base_config
from experiments.benchmarks.roofline import measured_matmul_peak, train_flops
from selfrl_jax.algos.base import Rewards, StepRecord
from selfrl_jax.algos.grpo import GRPO
from selfrl_jax.data.batch import PromptBatch
from selfrl_jax.models.config import ModelConfig
from selfrl_jax.models.decoder import init_model
from selfrl_jax.models.tokenizers import CharTokenizer
from selfrl_jax.rollouts.types import Rollout
from selfrl_jax.sampling.sampler import SamplingParams
from selfrl_jax.train.state import create_train_state, make_optimizer
from selfrl_jax.train.builders import build_algorithm, build_update_settings
from selfrl_jax.train.step import make_train_step, sequence_logprobs

_VOCAB = flags.DEFINE_integer("vocab", 8192, "Vocabulary size.")
_D_MODEL = flags.DEFINE_integer("d_model", 384, "Residual width.")
_LAYERS = flags.DEFINE_integer("n_layers", 6, "Decoder blocks.")
_HEADS = flags.DEFINE_integer("n_heads", 6, "Query heads (head_dim = d_model / n_heads).")
_KV_HEADS = flags.DEFINE_integer("n_kv_heads", 2, "Key/value heads.")
_D_FF = flags.DEFINE_integer("d_ff", 1536, "SwiGLU width.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 256, "Tokens per sequence S (prompt + response).")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 64, "Prompt slots (no loss) at the start of each sequence.")
_GROUP = flags.DEFINE_integer("group_size", 4, "G for the advantage estimator (batch must be a multiple).")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["4", "8"], "Rollouts per update B.")
_CHUNKS = flags.DEFINE_list("logprob_chunks", ["0"], "logprob_chunk values (0 = unchunked).")
_MICRO = flags.DEFINE_list("micro_batches", ["0"], "micro_batch_size values (0 = the whole batch).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions after one warm-up (best is reported).")
_BARE = flags.DEFINE_bool("bare", False, "Also time a plain value_and_grad + optimizer step.")
_FUSED = flags.DEFINE_bool("fused", True, "Also time one full fused RL iteration (sampling + update).")
_FUSED_P = flags.DEFINE_integer("fused_prompts", 4, "Fused reference: prompts P.")
_FUSED_G = flags.DEFINE_integer("fused_group", 4, "Fused reference: completions per prompt G.")
_FUSED_T = flags.DEFINE_integer("fused_prompt_len", 32, "Fused reference: prompt tokens.")
_FUSED_N = flags.DEFINE_integer("fused_new_tokens", 64, "Fused reference: generated tokens (no stop token).")



def _best_time(fn, repeats: int) -> tuple[float, float]:
  """(first-call seconds incl. compile, best of `repeats` later calls)."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return first, best


def _config(batch: int, group: int, micro: int, chunk: int, new_tokens: int):
  """The base config with this benchmark's RL shape (beta = 0, one epoch, one minibatch)."""
  cfg = get_base_config()
  rl = cfg.rl
  rl.prompts_per_step, rl.group_size, rl.max_new_tokens = batch // group, group, new_tokens
  rl.kl_coef, rl.num_epochs, rl.num_minibatches, rl.temperature = 0.0, 1, 1, 1.0
  rl.micro_batch_size, rl.logprob_chunk = micro or batch, chunk
  return cfg


def _digit_like_reward(rollout: Rollout, batch: dict) -> jax.Array:
  """Trivial jittable reward: fraction of valid response tokens whose id is a multiple of 10."""
  del batch
  hit_BxN = (rollout.response_tokens_BxN % 10 == 0) & rollout.response_valid_BxN
  return hit_BxN.sum(axis=1) / jnp.maximum(rollout.response_valid_BxN.sum(axis=1), 1)


def _synthetic_rollout(batch: int, seq_len: int, prompt_len: int, vocab: int, seed: int) -> Rollout:
  rs = np.random.RandomState(seed)
  tokens_BxS = jnp.asarray(rs.randint(0, vocab, (batch, seq_len)), jnp.int32)
  loss_mask_BxS = jnp.asarray(np.arange(seq_len) >= prompt_len)[None].repeat(batch, 0)
  n = seq_len - prompt_len
  return Rollout(tokens_BxS=tokens_BxS, valid_BxS=jnp.ones((batch, seq_len), bool),
                 loss_mask_BxS=loss_mask_BxS,
                 sampler_logp_BxS=jnp.where(loss_mask_BxS, -float(np.log(vocab)), 0.0).astype(jnp.float32),
                 turn_id_BxS=loss_mask_BxS.astype(jnp.int32), response_tokens_BxN=tokens_BxS[:, prompt_len:],
                 response_valid_BxN=jnp.ones((batch, n), bool), stopped_B=jnp.zeros((batch,), bool))


def _prompt_batch(tokens_PxT: jax.Array, valid_PxT: jax.Array) -> PromptBatch:
  """A PromptBatch of these prompts; the targets are placeholders (the benchmark rewards read none)."""
  p = tokens_PxT.shape[0]
  return PromptBatch(prompt_tokens_PxT=tokens_PxT, prompt_valid_PxT=valid_PxT,
                     prompt_len_P=valid_PxT.sum(axis=1).astype(jnp.int32), target_tokens_PxA=jnp.zeros((p, 2), jnp.int32),
                     target_len_P=jnp.ones((p,), jnp.int32), example_id_P=jnp.arange(p))


def _segment(step, kind: str):
  """The compiled `kind` segment ("device": the rollout, "update") of a split-mode TrainStep."""
  return next(fn for k, fn in step.segments if k == kind)


def _algorithm(cfg) -> GRPO:
  """GRPO from the config, with the trivial reward and no stop token (every row runs to N)."""
  alg = build_algorithm(cfg, CharTokenizer())
  return dataclasses.replace(alg, sampling=SamplingParams(max_new_tokens=cfg.rl.max_new_tokens, temperature=1.0),
                             reward_fn=_digit_like_reward)


def _time_update(model_cfg: ModelConfig, batch: int, micro: int, chunk: int, repeats: int):
  """Times the split-mode UPDATE segment on a synthetic rollout; returns (compile+first s, best s)."""
  s_len, p_len = _SEQ_LEN.value, _PROMPT_LEN.value
  cfg = _config(batch, _GROUP.value, micro, chunk, s_len - p_len)
  tx = make_optimizer(cfg.optim)
  algorithm = _algorithm(cfg)
  graphdef, state = create_train_state(init_model(model_cfg), tx, seed=0, keep_reference=False, algorithm=algorithm)
  settings = dataclasses.replace(build_update_settings(cfg, algorithm), mode="split")
  update = _segment(make_train_step(settings, algorithm, graphdef, tx), "update")
  rollout = _synthetic_rollout(batch, s_len, p_len, model_cfg.vocab_size, seed=batch)
  rewards = Rewards(reward_B=jnp.asarray(np.random.RandomState(1).randn(batch), jnp.float32))
  prompts_PxT = rollout.tokens_BxS[::_GROUP.value, :p_len]  # gives the update the prompt width
  record = StepRecord(batch=_prompt_batch(prompts_PxT, jnp.ones(prompts_PxT.shape, bool)), rollout=rollout,
                      rewards=rewards)
  holder = [state]

  def run():
    holder[0], out = update(holder[0], record)
    jax.block_until_ready(out.metrics["loss"])
  return _best_time(run, repeats)


def _time_bare(model_cfg: ModelConfig, batch: int, chunk: int, repeats: int):
  """Plain -mean(log p) value_and_grad + the same optimizer (no RL loss, no metrics)."""
  tx = make_optimizer(get_base_config().optim)
  graphdef, params = nnx.split(init_model(model_cfg), nnx.Param)
  opt_state = tx.init(params)
  rollout = _synthetic_rollout(batch, _SEQ_LEN.value, _PROMPT_LEN.value, model_cfg.vocab_size, seed=batch)

  def loss_fn(p, tokens_BxS, valid_BxS):
    logp_BxS = sequence_logprobs(nnx.merge(graphdef, p), tokens_BxS, valid_BxS, temperature=1.0,
                                 chunk_size=chunk or None)
    return -logp_BxS.mean()

  @jax.jit
  def bare_step(p, o, tokens_BxS, valid_BxS):
    loss, grads = jax.value_and_grad(loss_fn)(p, tokens_BxS, valid_BxS)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o, loss

  holder = [params, opt_state]

  def run():
    holder[0], holder[1], loss = bare_step(holder[0], holder[1], rollout.tokens_BxS, rollout.valid_BxS)
    jax.block_until_ready(loss)
  return _best_time(run, repeats)


def _time_fused(model_cfg: ModelConfig, repeats: int) -> tuple[float, float, float]:
  """One full RL iteration (sample -> reward -> advantage -> update) at a small configuration."""
  p, g, t, n = _FUSED_P.value, _FUSED_G.value, _FUSED_T.value, _FUSED_N.value
  cfg = _config(p * g, g, 0, 0, n)
  tx = make_optimizer(cfg.optim)
  algorithm = _algorithm(cfg)
  graphdef, state = create_train_state(init_model(model_cfg), tx, seed=0, keep_reference=False, algorithm=algorithm)
  settings = build_update_settings(cfg, algorithm)
  step = make_train_step(dataclasses.replace(settings, mode="fused"), algorithm, graphdef, tx)
  rs = np.random.RandomState(0)
  batch = _prompt_batch(jnp.asarray(rs.randint(0, model_cfg.vocab_size, (p, t)), jnp.int32), jnp.ones((p, t), bool))
  holder = [state]

  def run():
    holder[0], metrics = step(holder[0], batch)
    jax.block_until_ready(metrics["loss"])
  first, best = _best_time(run, repeats)
  # Sampling alone (the split-mode rollout segment: the same rollout phase as inside `fused`).
  sample = _segment(make_train_step(dataclasses.replace(settings, mode="split"), algorithm, graphdef, tx), "device")
  _, sample_s = _best_time(
      lambda: jax.block_until_ready(sample(holder[0], StepRecord(batch=batch)).rollout.tokens_BxS), repeats)
  return first, best, sample_s


def main(argv):
  del argv
  head_dim = _D_MODEL.value // _HEADS.value
  model_cfg = ModelConfig(family="llama", vocab_size=_VOCAB.value, d_model=_D_MODEL.value,
                          n_layers=_LAYERS.value, n_heads=_HEADS.value, n_kv_heads=_KV_HEADS.value,
                          head_dim=head_dim, d_ff=_D_FF.value, tie_embeddings=True)
  s_len = _SEQ_LEN.value
  peaks = [measured_matmul_peak()]
  print(f"machine: {os.cpu_count()} cores, jax {jax.__version__} ({jax.default_backend()}); "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"model: llama d_model {_D_MODEL.value}, {_LAYERS.value} layers, {_HEADS.value}/{_KV_HEADS.value} heads "
        f"(head_dim {head_dim}), d_ff {_D_FF.value}, vocab {_VOCAB.value} tied: "
        f"{model_cfg.num_params() / 1e6:.2f}M params; seq_len {s_len} ({_PROMPT_LEN.value} prompt + "
        f"{s_len - _PROMPT_LEN.value} response)")
  rows = []
  for batch in map(int, _BATCH_SIZES.value):
    for chunk in map(int, _CHUNKS.value):
      for micro in map(int, _MICRO.value):
        if micro and (micro > batch or batch % micro):
          continue
        first, best = _time_update(model_cfg, batch, micro, chunk, _REPEATS.value)
        rows.append(("update", batch, chunk, micro or batch, first, best))
        print(f"  timed update B={batch} chunk={chunk} micro={micro or batch}: {best:.3f} s", flush=True)
        peaks.append(measured_matmul_peak())
      if _BARE.value:
        first, best = _time_bare(model_cfg, batch, chunk, _REPEATS.value)
        rows.append(("bare", batch, chunk, batch, first, best))
        print(f"  timed bare   B={batch} chunk={chunk}: {best:.3f} s", flush=True)
        peaks.append(measured_matmul_peak())
  peak = max(peaks)
  print(f"measured f32 matmul peak (2048^3 jitted; best of {len(peaks)} measurements taken between rows): "
        f"{peak / 1e9:.1f} GFLOP/s (lowest {min(peaks) / 1e9:.1f})")
  print(f"{'path':>6} | {'B':>3} | {'chunk':>5} | {'micro':>5} | {'compile+1st s':>13} | {'step s':>7} | "
        f"{'tokens/s':>8} | {'GFLOP/s':>7} | {'MFU':>6}")
  for path, batch, chunk, micro, first, best in rows:
    # The update skips the LM head on prompt positions; the bare path computes every position.
    flops = train_flops(model_cfg, batch, s_len, s_len - _PROMPT_LEN.value if path == "update" else None)
    print(f"{path:>6} | {batch:>3} | {chunk:>5} | {micro:>5} | {first:>13.1f} | {best:>7.3f} | "
          f"{batch * s_len / best:>8.0f} | {flops / best / 1e9:>7.1f} | {100 * flops / best / peak:>5.1f}%")
  if _FUSED.value:
    p, g, t, n = _FUSED_P.value, _FUSED_G.value, _FUSED_T.value, _FUSED_N.value
    first, best, sample_s = _time_fused(model_cfg, _REPEATS.value)
    print(f"fused RL iteration (P={p}, G={g}, prompt {t}, {n} new tokens, no stop; same model): "
          f"{best:.3f} s/iter (sampling alone {sample_s:.3f} s; compile+1st {first:.1f} s)")


if __name__ == "__main__":
  app.run(main)

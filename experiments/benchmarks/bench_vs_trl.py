r"""One GRPO iteration: our fused JAX train step vs TRL's `GRPOTrainer` (torch, CPU), same model and data.

  JAX_PLATFORMS=cpu python -m experiments.benchmarks.bench_vs_trl                      # defaults
  JAX_PLATFORMS=cpu python -m experiments.benchmarks.bench_vs_trl --prompts=8 --group=8 --new_tokens=128

Both sides start from the same weights (our freshly initialised tiny Llama exported with
`hf_io.save_hf`, reloaded by transformers), the SmolLM2 tokenizer (vocab 49152), the same P
prompts per iteration (random digit strings of exactly `prompt_len` tokens), G completions each,
`new_tokens` max completion length, temperature 1 (no top-k / top-p), the same stop tokens, the
same trivial reward (fraction of completion tokens that are digits), group-normalised advantages,
clip 0.2 / 0.28, token-mean loss, beta = 0 (no reference model), one epoch of one optimizer step
over all P*G rollouts (TRL: per_device_train_batch_size = P*G, no accumulation, so neither side
recomputes old log-probs), Adam(W) lr 1e-4 with global-norm clip 1.0, float32.
Seconds per iteration are best and median of `iterations` iterations after `warmup` (ours: the
first call compiles; TRL: per-step wall time between `on_step_end` callbacks). Both sides also do
what they always do: TRL decodes completions to text and logs entropy; ours computes the rollout
metrics and the entropy of every position inside the compiled step.
Needs the optional `trl==1.16.0` (+ `datasets`); torch 2.13.0 CPU.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from configs.common import get_base_config
from selfrl_jax.data.batch import PromptBatch
from experiments.benchmarks.grpo_common import digit_table, trl_step_timer
from selfrl_jax.models.config import ModelConfig
from selfrl_jax.models.decoder import forward_full, init_model
from selfrl_jax.models.gguf_io import smollm2_gguf_path
from selfrl_jax.models.hf_io import save_hf
from selfrl_jax.models.tokenizers import HFTokenizer
from selfrl_jax.rollouts.types import Rollout
from selfrl_jax.sampling.sampler import SamplingParams
from selfrl_jax.train.builders import build_algorithm, build_update_settings
from selfrl_jax.train.state import create_train_state, make_optimizer
from selfrl_jax.train.step import make_train_step

_PROMPTS = flags.DEFINE_integer("prompts", 8, "Prompts per iteration P.")
_GROUP = flags.DEFINE_integer("group", 4, "Completions per prompt G.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 32, "Prompt tokens.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 64, "Max completion tokens.")
_D_MODEL = flags.DEFINE_integer("d_model", 256, "Residual width.")
_LAYERS = flags.DEFINE_integer("n_layers", 4, "Decoder blocks.")
_HEADS = flags.DEFINE_integer("n_heads", 4, "Query heads (head_dim = d_model / n_heads).")
_KV_HEADS = flags.DEFINE_integer("n_kv_heads", 2, "Key/value heads.")
_D_FF = flags.DEFINE_integer("d_ff", 768, "SwiGLU width.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed iterations per side.")
_ITERS = flags.DEFINE_integer("iterations", 3, "Timed iterations per side.")
_SKIP_TRL = flags.DEFINE_bool("skip_trl", False, "Only time our side.")
_CHUNK = flags.DEFINE_integer("logprob_chunk", 512, "Our rl.logprob_chunk (0 = unchunked log-probs).")
_LR = 1e-4


def _prompts(tok: HFTokenizer, count: int, length: int, seed: int) -> list[str]:
  """Random digit strings; SmolLM2 splits digits individually, so each is exactly `length` tokens."""
  rs = np.random.RandomState(seed)
  texts = ["".join(map(str, rs.randint(0, 10, length))) for _ in range(count)]
  for text in texts:
    ids = tok.hf(text=text)["input_ids"]
    if len(ids) != length:
      raise RuntimeError(f"prompt {text!r} tokenizes to {len(ids)} tokens, expected {length}.")
  return texts


def _ours(model, tok: HFTokenizer, prompt_ids: np.ndarray, digit_V: np.ndarray) -> list[float]:
  """Seconds per fused iteration (sample -> reward -> advantage -> update), after warm-up."""
  p, g, n = _PROMPTS.value, _GROUP.value, _NEW_TOKENS.value
  cfg = get_base_config()
  rl = cfg.rl
  rl.prompts_per_step, rl.group_size, rl.max_new_tokens, rl.temperature = p, g, n, 1.0
  rl.max_prompt_len, rl.kl_coef, rl.num_epochs, rl.num_minibatches = _PROMPT_LEN.value, 0.0, 1, 1
  rl.micro_batch_size, rl.advantage, rl.loss_agg = p * g, "grpo", "token_mean"
  rl.logprob_chunk = _CHUNK.value
  cfg.optim.learning_rate, cfg.optim.grad_clip, cfg.optim.weight_decay = _LR, 1.0, 0.0
  table_V = jnp.asarray(digit_V)

  def digit_fraction(rollout: Rollout, batch: dict) -> jax.Array:
    del batch
    valid_BxN = rollout.response_valid_BxN
    return (table_V[rollout.response_tokens_BxN] * valid_BxN).sum(axis=1) / jnp.maximum(valid_BxN.sum(axis=1), 1)

  algorithm = dataclasses.replace(
      build_algorithm(cfg, tok), reward_fn=digit_fraction,
      sampling=SamplingParams(max_new_tokens=n, temperature=1.0, stop_ids=tuple(tok.eos_ids), pad_id=tok.pad_id))
  tx = make_optimizer(cfg.optim)
  graphdef, state = create_train_state(model, tx, seed=0, keep_reference=False, algorithm=algorithm)
  step = make_train_step(build_update_settings(cfg, algorithm), algorithm, graphdef, tx)
  holder, times = [state], []
  for i in range(_WARMUP.value + _ITERS.value):
    rows = prompt_ids[(i * p) % len(prompt_ids):][:p]
    batch = PromptBatch(prompt_tokens_PxT=jnp.asarray(rows, jnp.int32), prompt_valid_PxT=jnp.ones(rows.shape, bool),
                        prompt_len_P=jnp.full((p,), rows.shape[1], jnp.int32),
                        target_tokens_PxA=jnp.zeros((p, 2), jnp.int32), target_len_P=jnp.ones((p,), jnp.int32),
                        example_id_P=jnp.arange(p))  # the digit reward reads no targets
    t0 = time.perf_counter()
    holder[0], metrics = step(holder[0], batch)
    jax.block_until_ready(metrics["loss"])
    times.append(time.perf_counter() - t0)
    print(f"  ours iteration {i}: {times[-1]:.2f} s (reward {float(metrics['reward_mean']):.3f}, "
          f"completion len {float(metrics['completion_len_mean']):.1f})", flush=True)
  return times[_WARMUP.value:]


def _trl(model_dir: str, prompts: list[str], digit_V: np.ndarray, out_dir: str) -> list[float]:
  """Seconds per GRPOTrainer optimizer step (one generation + one update), after warm-up."""
  # pylint: disable=import-outside-toplevel
  import datasets
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer
  from trl import GRPOConfig, GRPOTrainer

  p, g = _PROMPTS.value, _GROUP.value
  steps = _WARMUP.value + _ITERS.value
  digit_set = set(np.flatnonzero(digit_V).tolist())

  def digit_fraction(completions, completion_ids, **kwargs):
    del completions, kwargs
    return [sum(t in digit_set for t in ids) / max(len(ids), 1) for ids in completion_ids]

  config = GRPOConfig(
      output_dir=out_dir, per_device_train_batch_size=p * g, gradient_accumulation_steps=1,
      num_generations=g, max_completion_length=_NEW_TOKENS.value, temperature=1.0, top_p=1.0, top_k=0,
      beta=0.0, num_iterations=1, epsilon=0.2, epsilon_high=0.28, loss_type="dapo", scale_rewards="group",
      learning_rate=_LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, adam_beta1=0.9,
      adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0, max_steps=steps, logging_steps=10**6,
      save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, bf16=False, seed=0,
      dataloader_num_workers=0, shuffle_dataset=False, log_completions=False)
  dataset = datasets.Dataset.from_dict({"prompt": [prompts[i % len(prompts)] for i in range(steps * p)]})
  hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
  timer = trl_step_timer()
  trainer = GRPOTrainer(model=hf_model, reward_funcs=digit_fraction, args=config, train_dataset=dataset,
                        processing_class=AutoTokenizer.from_pretrained(model_dir), callbacks=[timer])
  trainer.train()
  return list(np.diff(timer.stamps))[_WARMUP.value:]


def _check_same_weights(model, model_dir: str, prompt_ids: np.ndarray) -> float:
  """Max |log-softmax| difference between our forward and transformers' on one prompt batch."""
  import torch  # pylint: disable=import-outside-toplevel
  from transformers import AutoModelForCausalLM  # pylint: disable=import-outside-toplevel
  hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
  tokens = jnp.asarray(prompt_ids[:2], jnp.int32)
  ours = jax.nn.log_softmax(model.logits(forward_full(model, tokens, jnp.ones(tokens.shape, bool))), -1)
  with torch.no_grad():
    theirs = torch.log_softmax(hf(torch.tensor(prompt_ids[:2], dtype=torch.long)).logits, -1).numpy()
  return float(np.abs(np.asarray(ours) - theirs).max())


def _summary(times: list[float]) -> str:
  return f"best {min(times):.2f} s, median {statistics.median(times):.2f} s"


def main(argv):
  del argv
  import torch  # pylint: disable=import-outside-toplevel
  import trl  # pylint: disable=import-outside-toplevel
  tok = HFTokenizer.from_gguf(smollm2_gguf_path())
  d, h = _D_MODEL.value, _D_MODEL.value // _HEADS.value
  model_cfg = ModelConfig(family="llama", vocab_size=tok.vocab_size, d_model=d, n_layers=_LAYERS.value,
                          n_heads=_HEADS.value, n_kv_heads=_KV_HEADS.value, head_dim=h, d_ff=_D_FF.value,
                          rms_eps=1e-5, tie_embeddings=True)
  model = init_model(model_cfg, seed=0)
  p, g, t, n = _PROMPTS.value, _GROUP.value, _PROMPT_LEN.value, _NEW_TOKENS.value
  prompts = _prompts(tok, p * (_WARMUP.value + _ITERS.value), t, seed=0)
  prompt_ids = np.asarray([tok.hf(text=x)["input_ids"] for x in prompts], np.int32)
  digit_V = digit_table(tok)
  print(f"machine: {os.cpu_count()} cores; jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), trl {trl.__version__}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
        f"our logprob_chunk={_CHUNK.value}")
  print(f"model: llama d_model {d}, {_LAYERS.value} layers, {_HEADS.value}/{_KV_HEADS.value} heads, "
        f"d_ff {_D_FF.value}, "
        f"vocab {tok.vocab_size} tied ({model_cfg.num_params() / 1e6:.1f}M params); P={p}, G={g} ({p * g} rollouts), "
        f"prompt {t} tokens, up to {n} new tokens; {int(digit_V.sum())} digit tokens in the reward table")
  with tempfile.TemporaryDirectory() as tmp:
    model_dir = os.path.join(tmp, "model")
    save_hf(model, model_dir, tokenizer=tok)
    print(f"same weights check: max |log p ours - log p transformers| = "
          f"{_check_same_weights(model, model_dir, prompt_ids):.2e}")
    ours = _ours(model, tok, prompt_ids, digit_V)
    theirs = None if _SKIP_TRL.value else _trl(model_dir, prompts, digit_V, os.path.join(tmp, "trl"))
  print(f"{'side':>5} | {'best s/iter':>11} | {'median s/iter':>13} | iterations")
  print(f"{'ours':>5} | {min(ours):>11.2f} | {statistics.median(ours):>13.2f} | {len(ours)}")
  if theirs:
    print(f"{'TRL':>5} | {min(theirs):>11.2f} | {statistics.median(theirs):>13.2f} | {len(theirs)}")
    print(f"speed-up (TRL / ours): best {min(theirs) / min(ours):.1f}x, "
          f"median {statistics.median(theirs) / statistics.median(ours):.1f}x")


if __name__ == "__main__":
  app.run(main)

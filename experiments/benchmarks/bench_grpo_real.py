r"""One GRPO iteration on SmolLM2-135M-Instruct: our train step vs TRL's `GRPOTrainer`, same workload.

  python -m experiments.benchmarks.bench_grpo_real                       # ours (fused + phases) and TRL
  python -m experiments.benchmarks.bench_grpo_real --sides=ours,phases --repeats=1
  python -m experiments.benchmarks.bench_grpo_real --tiny                # the tiny random Llama

Workload (issue 16; identical on each side): SmolLM2-135M-Instruct in float32 (the packaged
GGUF, dequantised and written once by the parent process as a Hugging Face folder both sides
load); P = 8 prompts x G = 8 completions; the prompt "What is a+b? Answer with just the number."
(two-digit a, b) through the chat template; exactly `new_tokens` new tokens (no stop token;
TRL: `min_new_tokens`); temperature 1; beta = 0.04 against a frozen reference (k3); clip 0.2 / 0.28;
token-mean loss over the batch; one optimizer step over 4 micro-batches of 16; AdamW lr 1e-6,
no weight decay, global-norm clip 1.0. The reward is the fraction of digit tokens in the
completion (cheap on both sides: this measures the RL machinery, not a verifier). Ours computes
log-probs in chunks of 512 positions and checkpoints each block keeping only its Linear outputs
(`--logprob_chunk`, `--remat_policy`: memory settings, the same results up to float32 rounding;
`--logprob_chunk=0 --remat_policy=off` is what the issue measured).

`--tiny` swaps the model and prompts for issue 16's overhead-bound case: a random Llama (d 128,
4 layers, 4/2 heads, d_ff 384, vocab 64 characters, seed 0), 7-character digit prompts without a chat
template, exactly 64 new tokens; everything else as above (also written once as a folder).

Sides, each in its own process, `--repeats` processes each:
  ours    the fused iteration (`rl.mode=fused`): seconds per iteration after the first, first
          iteration (a cold compile: refuses to run with a persistent compilation cache), peak RSS.
  phases  split mode, each segment timed on its own: rollout (sampling), reward (host), update
          (reference log-probs + micro-batched forward/backward + AdamW), with the FLOP/s of
          rollout and update over the measured f32 matmul peak.
  trl     TRL `GRPOTrainer`, seconds per optimizer step. Optional, outside the dev venv:
          `pip install --target /tmp/trl --no-deps trl==1.16.0`, then run with PYTHONPATH=/tmp/trl
          (its dependencies, datasets and accelerate among them, are already in the dev venv).
Run on an idle machine; the printed figures are medians with their range over processes.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

from absl import app, flags
import numpy as np

from experiments.benchmarks.sides import load_note, passthrough_flags, peak_rss_mb, spawn, summary

_SIDES = flags.DEFINE_list("sides", ["ours", "phases", "trl"], "Sides to run: ours, phases, trl.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Processes per side.")
_ITERS = flags.DEFINE_integer("iterations", 3, "Timed iterations per process, after one untimed.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", None, "New tokens per completion (exactly; default 128, 64 with --tiny).")
_TINY = flags.DEFINE_bool("tiny", False, "The tiny random Llama with 7-token prompts instead of SmolLM2.")
_SIDE = flags.DEFINE_string("side", None, "Internal: run one side in this process and print JSON.")
_MICRO = flags.DEFINE_integer("micro_batch", 16, "Rows per micro-batch of the one optimizer step (both sides).")
_CHUNK = flags.DEFINE_integer("logprob_chunk", 512, "Ours: rl.logprob_chunk (0 = unchunked log-probs).")
_REMAT = flags.DEFINE_enum("remat_policy", "dots_with_no_batch_dims_saveable",
                           ["off", "nothing_saveable", "dots_with_no_batch_dims_saveable"],
                           "Ours: model.remat_policy with model.remat on, or off (model.remat off).")
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Internal: the model's Hugging Face folder, written by the parent.")
_COMPUTE = flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16"],
                             "Matmul dtype on both sides (weights, optimizer and the loss stay float32): float32 is "
                             "issue 16's workload; bfloat16 is mixed precision (ours: model.compute_dtype; TRL: "
                             "GRPOConfig(bf16=True), torch autocast).")

P, G, BETA, LR = 8, 8, 0.04, 1e-6
QUESTION = "What is {a}+{b}? Answer with just the number."


TINY_PROMPT_LEN = 7
TINY_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXY"  # 61 + <pad>, <eos>, <unk> = 64


def _new_tokens() -> int:
  return _NEW_TOKENS.value if _NEW_TOKENS.value is not None else (64 if _TINY.value else 128)


def _prompts(count: int) -> list:
  """Both sides' prompts: chat messages for SmolLM2 (TRL's conversational format; ours applies the
  chat template), plain digit strings for the tiny model."""
  rs = np.random.RandomState(0)
  if _TINY.value:
    return ["".join(map(str, rs.randint(0, 10, TINY_PROMPT_LEN))) for _ in range(count)]
  return [[{"role": "user", "content": QUESTION.format(a=a, b=b)}] for a, b in rs.randint(10, 100, (count, 2))]


def _write_smollm2(directory: str) -> None:
  """SmolLM2-135M-Instruct dequantised from the packaged GGUF, as a float32 Hugging Face folder.
  (transformers 5 marks a model it loads from GGUF as quantised, and `Trainer` refuses to train it.)"""
  # pylint: disable=import-outside-toplevel
  from selfrl_jax.models.hf_io import save_hf
  from selfrl_jax.models.loading import load_model
  model, tok = load_model("smollm2")
  save_hf(model, directory, tokenizer=tok)


def _write_tiny_model(directory: str) -> None:
  """The tiny random Llama and a 64-symbol character tokenizer, as a Hugging Face folder."""
  # pylint: disable=import-outside-toplevel
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast
  from selfrl_jax.models.config import ModelConfig
  from selfrl_jax.models.decoder import init_model
  from selfrl_jax.models.hf_io import save_hf
  from selfrl_jax.models.tokenizers import HFTokenizer
  vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{c: 3 + i for i, c in enumerate(TINY_CHARS)}}
  chars = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  chars.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
  chars.decoder = decoders.Fuse()
  tok = HFTokenizer(PreTrainedTokenizerFast(tokenizer_object=chars, pad_token="<pad>", eos_token="<eos>",
                                            unk_token="<unk>"))
  cfg = ModelConfig(family="llama", vocab_size=len(vocab), d_model=128, n_layers=4, n_heads=4, n_kv_heads=2,
                    head_dim=32, d_ff=384, rms_eps=1e-5, tie_embeddings=True)
  save_hf(init_model(cfg, seed=0), directory, tokenizer=tok)


def _our_setup():
  """(model, tokenizer, config, algorithm, prompt ids [n, T]) of our side."""
  # pylint: disable=import-outside-toplevel
  import dataclasses
  import jax.numpy as jnp
  from configs.common import get_base_config
  from experiments.benchmarks.grpo_common import digit_table
  from selfrl_jax.models.loading import load_model
  from selfrl_jax.sampling.sampler import SamplingParams
  from selfrl_jax.train.builders import apply_remat, build_algorithm, validate_config
  model, tok = load_model(_MODEL_DIR.value, compute_dtype=_COMPUTE.value)
  steps = 1 + _ITERS.value
  prompts = [tok.encode(p) if _TINY.value else tok.apply_chat_template(p) for p in _prompts(P * steps)]
  if len({len(p) for p in prompts}) != 1:
    raise RuntimeError(f"prompt lengths differ: {sorted({len(p) for p in prompts})}")
  cfg = get_base_config()
  rl = cfg.rl
  rl.prompts_per_step, rl.group_size, rl.max_new_tokens, rl.temperature = P, G, _new_tokens(), 1.0
  rl.max_prompt_len, rl.kl_coef, rl.kl_estimator = len(prompts[0]), BETA, "k3"
  rl.num_epochs, rl.num_minibatches, rl.micro_batch_size = 1, 1, _MICRO.value
  rl.logprob_chunk = _CHUNK.value
  rl.advantage, rl.loss_agg, rl.clip_low, rl.clip_high = "grpo", "token_mean", 0.2, 0.28
  cfg.optim.learning_rate, cfg.optim.grad_clip, cfg.optim.weight_decay = LR, 1.0, 0.0
  cfg.model.remat = _REMAT.value != "off"
  if cfg.model.remat:
    cfg.model.remat_policy = _REMAT.value
  validate_config(cfg, num_devices=1)
  apply_remat(model, cfg.model)
  table_V = jnp.asarray(digit_table(tok))

  def digit_fraction(rollout, batch):
    del batch
    valid_BxN = rollout.response_valid_BxN
    return (table_V[rollout.response_tokens_BxN] * valid_BxN).sum(axis=1) / jnp.maximum(valid_BxN.sum(axis=1), 1)

  algorithm = dataclasses.replace(
      build_algorithm(cfg, tok), reward_fn=digit_fraction,
      sampling=SamplingParams(max_new_tokens=_new_tokens(), temperature=1.0, stop_ids=(), pad_id=tok.pad_id))
  return model, tok, cfg, algorithm, np.asarray(prompts, np.int32)


def _batches(prompt_ids: np.ndarray):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from selfrl_jax.data.batch import PromptBatch  # pylint: disable=import-outside-toplevel
  for i in range(len(prompt_ids) // P):
    rows = prompt_ids[i * P:(i + 1) * P]
    yield PromptBatch(prompt_tokens_PxT=jnp.asarray(rows), prompt_valid_PxT=jnp.ones(rows.shape, bool),
                      prompt_len_P=jnp.full((P,), rows.shape[1], jnp.int32),
                      target_tokens_PxA=jnp.zeros((P, 2), jnp.int32), target_len_P=jnp.ones((P,), jnp.int32),
                      example_id_P=jnp.arange(P))  # the digit reward reads no targets


def _ours(mode: str) -> dict:
  # pylint: disable=import-outside-toplevel
  import jax
  from experiments.benchmarks import roofline
  from selfrl_jax.train.builders import build_update_settings
  from selfrl_jax.train.state import create_train_state, make_optimizer
  from selfrl_jax.train.step import make_train_step
  if jax.config.jax_compilation_cache_dir:
    raise SystemExit("unset JAX_COMPILATION_CACHE_DIR: the first iteration's cold compile is measured")
  model, _, cfg, algorithm, prompt_ids = _our_setup()
  cfg.rl.mode = mode
  tx = make_optimizer(cfg.optim)
  graphdef, state = create_train_state(model, tx, seed=0, keep_reference=True, algorithm=algorithm)
  step = make_train_step(build_update_settings(cfg, algorithm), algorithm, graphdef, tx)
  times, phases = [], {}
  for i, batch in enumerate(_batches(prompt_ids)):
    t0 = time.perf_counter()
    seconds = None if mode == "fused" else {}
    state, metrics = step(state, batch) if seconds is None else step.split(state, batch, seconds)
    for name, value in (seconds or {}).items():
      if i:  # the first iteration compiles
        phases.setdefault(name, []).append(value)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
    print(f"  {mode} iteration {i}: {times[-1]:.3f} s", flush=True)
  mcfg, t, n, b = model.cfg, prompt_ids.shape[1], _new_tokens(), P * G
  s = t + n
  flops = {"rollout": (P * t + b * n) * roofline.matmul_flops_per_token(mcfg, s),
           # forward + backward, plus the reference forward (a third of it)
           "update": roofline.train_flops(mcfg, b, s, head_positions=n) * 4 / 3}
  return {"first_s": times[0], "iter_s": statistics.median(times[1:]), "phases": phases, "flops": flops,
          "peak_flops": roofline.measured_matmul_peak(dtype=mcfg.compute_dtype), "peak_rss_mb": peak_rss_mb(),
          "prompt_len": t}


def _trl() -> dict:
  # pylint: disable=import-outside-toplevel
  import datasets
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer
  from trl import GRPOConfig, GRPOTrainer
  from experiments.benchmarks.grpo_common import digit_table, trl_step_timer
  from selfrl_jax.models.tokenizers import HFTokenizer
  directory = _MODEL_DIR.value
  digit_set = set(np.flatnonzero(digit_table(HFTokenizer.from_directory(directory))).tolist())
  lengths = []

  def digit_fraction(completions, completion_ids, **kwargs):
    del completions, kwargs
    lengths.extend(len(ids) for ids in completion_ids)
    return [sum(t in digit_set for t in ids) / max(len(ids), 1) for ids in completion_ids]

  steps = 1 + _ITERS.value
  with tempfile.TemporaryDirectory() as tmp:
    config = GRPOConfig(
        output_dir=tmp, per_device_train_batch_size=_MICRO.value, gradient_accumulation_steps=P * G // _MICRO.value,
        num_generations=G, max_completion_length=_new_tokens(),
        generation_kwargs={"min_new_tokens": _new_tokens()}, temperature=1.0, top_p=1.0, top_k=0,
        beta=BETA, num_iterations=1, epsilon=0.2, epsilon_high=0.28, loss_type="dapo", scale_rewards="group",
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        max_steps=steps, logging_steps=10**6, save_strategy="no", report_to="none", disable_tqdm=True,
        use_cpu=True, bf16=_COMPUTE.value == "bfloat16", seed=0, dataloader_num_workers=0, shuffle_dataset=False,
        gradient_checkpointing=False, log_completions=False)
    dataset = datasets.Dataset.from_dict({"prompt": _prompts(P * steps)})
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    timer = trl_step_timer()
    GRPOTrainer(model=model, reward_funcs=digit_fraction, args=config, train_dataset=dataset,
                processing_class=tokenizer, callbacks=[timer]).train()
  times = list(np.diff(timer.stamps))
  return {"first_s": times[0], "iter_s": statistics.median(times[1:]), "peak_rss_mb": peak_rss_mb(),
          "completion_len": sorted(set(lengths)), "torch_threads": torch.get_num_threads()}


def main(argv):
  del argv
  if _SIDE.value:
    import json  # pylint: disable=import-outside-toplevel
    side = _SIDE.value
    print(json.dumps(_trl() if side == "trl" else _ours("fused" if side == "ours" else "split")))
    return
  with tempfile.TemporaryDirectory() as tmp:
    if (P * G) % _MICRO.value:
      raise app.UsageError(f"--micro_batch={_MICRO.value} does not divide the {P * G} rollouts")
    extra = passthrough_flags(("--side", "--sides", "--repeats"))
    (_write_tiny_model if _TINY.value else _write_smollm2)(tmp)
    extra.append(f"--model_dir={tmp}")
    _run_sides(extra)


def _run_sides(extra: list[str]) -> None:
  module = "experiments.benchmarks.bench_grpo_real"
  model = "tiny random Llama (d 128, 4 layers, vocab 64)" if _TINY.value else "SmolLM2-135M-Instruct"
  print(f"machine: {os.cpu_count()} cores; {model}, {_COMPUTE.value} matmuls; P={P} x G={G}, {_new_tokens()} new tokens, beta {BETA}, "
        f"{P * G // _MICRO.value} micro-batches of {_MICRO.value}; processes per side: {_REPEATS.value}, timed "
        f"iterations each: {_ITERS.value}; {load_note()}")
  for side in _SIDES.value:
    runs = [spawn(module, side, extra) for _ in range(_REPEATS.value)]
    digits = ".3f" if _TINY.value else ".1f"
    print(f"{side:>6}: s/iteration {summary([r['iter_s'] for r in runs], digits)}; first iteration "
          f"{summary([r['first_s'] for r in runs], '.1f')} s; peak RSS "
          f"{summary([r['peak_rss_mb'] / 1024 for r in runs], '.2f')} GiB", flush=True)
    if side == "trl":
      print(f"        completion lengths {runs[0]['completion_len']}; torch threads {runs[0]['torch_threads']}")
    if side == "phases":
      for name in runs[0]["phases"]:
        seconds = [statistics.median(r["phases"][name]) for r in runs]
        line = f"        {name:>8}: s {summary(seconds, '.3f' if _TINY.value else '.2f')}"
        if name in runs[0]["flops"]:
          fractions = [100 * r["flops"][name] / statistics.median(r["phases"][name]) / r["peak_flops"] for r in runs]
          line += f"; % of peak {summary(fractions, '.1f')}"
        print(line, flush=True)


if __name__ == "__main__":
  app.run(main)

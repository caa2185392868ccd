r"""Sampling throughput: our jitted KV-cache sampler vs transformers `generate`, same weights.

  python -m experiments.benchmarks.bench_sampling                          # batches 1, 8, 32, 64
  python -m experiments.benchmarks.bench_sampling --batch_sizes=32,64 --repeats=3 --skip_hf

Both sides: SmolLM2-135M-Instruct, float32 on CPU, weights dequantised from the packaged GGUF;
greedy, no stop token (exactly `new_tokens` tokens per row), random prompts of `prompt_len`
tokens. Each side runs in its own process, `--repeats` processes per side and batch size; a
process compiles / warms up once, then keeps the best of `--timings` runs. Printed: tokens/s as the
median and range over processes, the ratio of medians, our achieved FLOP/s as a fraction of the
measured f32 matmul peak (roofline), our compile time and each side's peak RSS. Run it on an idle
machine: a loaded one distorts the two sides differently.
"""

from __future__ import annotations

import os
import statistics
import time

from absl import app, flags
import numpy as np

from experiments.benchmarks.sides import passthrough_flags, peak_rss_mb, spawn, summary

_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "8", "32", "64"], "Batch sizes to compare.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 64, "Prompt tokens per row.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 128, "Generated tokens per row.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Processes per side and batch size.")
_TIMINGS = flags.DEFINE_integer("timings", 2, "Timed runs per process after warm-up (best kept).")
_SKIP_HF = flags.DEFINE_bool("skip_hf", False, "Only time our sampler.")
_SIDE = flags.DEFINE_enum("side", None, ["ours", "hf"], "Internal: time one side in this process.")
_BATCH = flags.DEFINE_integer("batch", 0, "Internal: the batch size of a --side process.")


def _prompts(vocab_size: int, batch: int) -> np.ndarray:
  return np.random.RandomState(batch).randint(100, vocab_size, (batch, _PROMPT_LEN.value)).astype(np.int32)


def _best_time(fn) -> float:
  best = float("inf")
  for _ in range(_TIMINGS.value):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def _ours(batch: int) -> dict:
  # pylint: disable=import-outside-toplevel
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from experiments.benchmarks.roofline import generate_flops, measured_matmul_peak
  from selfrl_jax.models.loading import load_model
  from selfrl_jax.sampling.sampler import Sampler, SamplingParams
  model, _ = load_model("smollm2")
  graphdef, state = nnx.split(model)
  sampler = Sampler(graphdef, SamplingParams(max_new_tokens=_NEW_TOKENS.value, temperature=0.0))
  prompts = _prompts(model.cfg.vocab_size, batch)
  tokens, valid, key = jnp.asarray(prompts), jnp.ones(prompts.shape, bool), jax.random.key(0)
  t0 = time.perf_counter()
  jax.block_until_ready(sampler.generate(state, tokens, valid, key))
  first_s = time.perf_counter() - t0
  seconds = _best_time(lambda: jax.block_until_ready(sampler.generate(state, tokens, valid, key)))
  flops = generate_flops(model.cfg, batch, _PROMPT_LEN.value, _NEW_TOKENS.value,
                         _PROMPT_LEN.value + _NEW_TOKENS.value)
  return {"seconds": seconds, "first_s": first_s, "flops": flops, "peak_flops": measured_matmul_peak(),
          "peak_rss_mb": peak_rss_mb(), "jax": jax.__version__}


def _hf(batch: int) -> dict:
  # pylint: disable=import-outside-toplevel
  import torch
  from transformers import AutoModelForCausalLM
  from selfrl_jax.models.gguf_io import smollm2_gguf_path
  directory, name = os.path.split(smollm2_gguf_path())
  hf = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
  hf.generation_config.eos_token_id = None
  prompt_t = torch.tensor(_prompts(hf.config.vocab_size, batch), dtype=torch.long)

  def run():
    with torch.no_grad():
      hf.generate(prompt_t, attention_mask=torch.ones_like(prompt_t), do_sample=False,
                  max_new_tokens=_NEW_TOKENS.value, pad_token_id=0)
  run()  # warm-up
  return {"seconds": _best_time(run), "peak_rss_mb": peak_rss_mb(), "torch": torch.__version__,
          "threads": torch.get_num_threads()}


def main(argv):
  del argv
  if _SIDE.value:
    import json  # pylint: disable=import-outside-toplevel
    print(json.dumps((_ours if _SIDE.value == "ours" else _hf)(_BATCH.value)))
    return
  extra = passthrough_flags(("--side", "--batch", "--repeats"))
  module = "experiments.benchmarks.bench_sampling"
  print(f"machine: {os.cpu_count()} cores; prompt {_PROMPT_LEN.value} tokens, {_NEW_TOKENS.value} new tokens, "
        f"greedy, {_REPEATS.value} processes per side")
  for batch in map(int, _BATCH_SIZES.value):
    n_tokens = batch * _NEW_TOKENS.value
    ours = [spawn(module, "ours", [f"--batch={batch}", *extra]) for _ in range(_REPEATS.value)]
    ours_tps = [n_tokens / r["seconds"] for r in ours]
    roofline = [r["flops"] / r["seconds"] / r["peak_flops"] for r in ours]
    print(f"batch {batch:>3} ours  tok/s {summary(ours_tps, '.1f')}; % of peak "
          f"{summary([100 * f for f in roofline], '.1f')} (peak {statistics.median(r['peak_flops'] for r in ours) / 1e9:.0f} "
          f"GFLOP/s); first call {summary([r['first_s'] for r in ours], '.1f')} s; "
          f"peak RSS {statistics.median(r['peak_rss_mb'] for r in ours):.0f} MiB", flush=True)
    if _SKIP_HF.value:
      continue
    hf = [spawn(module, "hf", [f"--batch={batch}", *extra]) for _ in range(_REPEATS.value)]
    hf_tps = [n_tokens / r["seconds"] for r in hf]
    print(f"batch {batch:>3} HF    tok/s {summary(hf_tps, '.1f')}; peak RSS "
          f"{statistics.median(r['peak_rss_mb'] for r in hf):.0f} MiB (torch {hf[0]['torch']}, "
          f"{hf[0]['threads']} threads)")
    print(f"batch {batch:>3} ratio of medians: {statistics.median(ours_tps) / statistics.median(hf_tps):.2f}x",
          flush=True)


if __name__ == "__main__":
  app.run(main)

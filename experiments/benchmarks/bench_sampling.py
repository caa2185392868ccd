r"""Sampling throughput: our jitted KV-cache sampler vs transformers `generate`, same weights.

  python experiments/benchmarks/bench_sampling.py                      # SmolLM2-135M, batches 1, 8, 32
  python experiments/benchmarks/bench_sampling.py --batch_sizes=32 --repeats=3

Both sides: greedy, no stop token (exactly `new_tokens` tokens per row), random prompts of
`prompt_len` tokens, float32 on CPU, weights dequantised from the packaged GGUF. Prints tokens/s,
the ratio, and achieved FLOP/s as a fraction of the measured matmul peak (roofline figure).
"""

from __future__ import annotations

import os
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.benchmarks.roofline import generate_flops, measured_matmul_peak
from selfrl_jax.models.gguf_io import smollm2_gguf_path
from selfrl_jax.models.loading import load_model
from selfrl_jax.sampling.sampler import Sampler, SamplingParams

_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "8", "32"], "Batch sizes to compare.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 64, "Prompt tokens per row.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 128, "Generated tokens per row.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed repetitions (best is reported).")
_SKIP_HF = flags.DEFINE_bool("skip_hf", False, "Only time our sampler.")


def _best_time(fn, repeats: int) -> float:
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def main(argv):
  del argv
  import torch  # pylint: disable=import-outside-toplevel
  from transformers import AutoModelForCausalLM  # pylint: disable=import-outside-toplevel
  model, _ = load_model("smollm2")
  cfg = model.cfg
  graphdef, state = nnx.split(model)
  params = SamplingParams(max_new_tokens=_NEW_TOKENS.value, temperature=0.0)
  sampler = Sampler(graphdef, params)
  hf = None
  if not _SKIP_HF.value:
    directory, name = os.path.split(smollm2_gguf_path())
    hf = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None
  peak = measured_matmul_peak()
  print(f"machine: {os.cpu_count()} cores, jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); measured f32 matmul peak {peak / 1e9:.1f} GFLOP/s")
  print(f"{'batch':>5} | {'ours tok/s':>10} | {'HF tok/s':>9} | {'ratio':>6} | {'ours GFLOP/s':>12} | {'% of peak':>9}")
  for batch in map(int, _BATCH_SIZES.value):
    rs = np.random.RandomState(batch)
    prompts = rs.randint(100, cfg.vocab_size, (batch, _PROMPT_LEN.value)).astype(np.int32)
    tokens, valid = jnp.asarray(prompts), jnp.ones(prompts.shape, bool)
    key = jax.random.key(0)
    jax.block_until_ready(sampler.generate(state, tokens, valid, key))  # compile
    ours_s = _best_time(lambda: jax.block_until_ready(sampler.generate(state, tokens, valid, key)), _REPEATS.value)
    n_tokens = batch * _NEW_TOKENS.value
    ours_tps = n_tokens / ours_s
    flops = generate_flops(cfg, batch, _PROMPT_LEN.value, _NEW_TOKENS.value, _PROMPT_LEN.value + _NEW_TOKENS.value)
    hf_tps = float("nan")
    if hf is not None:
      prompt_t = torch.tensor(prompts, dtype=torch.long)
      with torch.no_grad():
        run = lambda: hf.generate(prompt_t, attention_mask=torch.ones_like(prompt_t), do_sample=False,
                                  max_new_tokens=_NEW_TOKENS.value, pad_token_id=0)
        run()  # warm-up
        hf_tps = n_tokens / _best_time(run, _REPEATS.value)
    print(f"{batch:>5} | {ours_tps:>10.1f} | {hf_tps:>9.1f} | {ours_tps / hf_tps:>5.2f}x | "
          f"{flops / ours_s / 1e9:>12.1f} | {100 * flops / ours_s / peak:>8.1f}%", flush=True)


if __name__ == "__main__":
  app.run(main)

r"""Peak memory of sampled-token log-probs (forward + backward) at a 49k vocabulary, chunked vs not.

  JAX_PLATFORMS=cpu python -m experiments.benchmarks.bench_logprob_memory                 # defaults
  JAX_PLATFORMS=cpu python -m experiments.benchmarks.bench_logprob_memory --chunks=0,256,1024,4096 --norss

What is measured: `jax.value_and_grad` (w.r.t. hidden states and the output matrix) of
sum(token_logprobs(hidden_BxTxD, w_out_DxV, targets, chunk_size=c, return_entropy=True)) — the
log-prob head exactly as the train step runs it (entropy is a stop-gradient metric there too).
For each chunk size (0 = unchunked) the table shows XLA's compiled `memory_analysis()` temp
bytes (scratch the program needs beyond its inputs/outputs), and, unless --norss, the process's
peak RSS and its growth while running the compiled step (in a fresh subprocess per setting,
measured after compilation and input allocation), plus the best step time.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

from absl import app, flags
import jax
import jax.numpy as jnp

from selfrl_jax.algos.logprobs import token_logprobs

_BATCH = flags.DEFINE_integer("batch", 8, "Sequences B.")
_SEQ = flags.DEFINE_integer("seq_len", 512, "Positions per sequence T.")
_D = flags.DEFINE_integer("d_model", 576, "Hidden width D (SmolLM2-135M: 576).")
_VOCAB = flags.DEFINE_integer("vocab", 49152, "Vocabulary V (SmolLM2: 49152).")
_CHUNKS = flags.DEFINE_list("chunks", ["0", "256", "1024"], "Chunk sizes (0 = unchunked).")
_RSS = flags.DEFINE_bool("rss", True, "Also run each setting in a subprocess and measure peak RSS and time.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed runs per setting in the RSS subprocess (best is reported).")
_CHILD = flags.DEFINE_integer("child_chunk", -1, "Internal: run one setting and print JSON.")


def _step_fn(chunk: int):
  def loss(hidden_BxTxD, w_out_DxV, targets_BxT):
    logp_BxT, entropy_BxT = token_logprobs(hidden_BxTxD, w_out_DxV, targets_BxT, chunk_size=chunk or None,
                                           return_entropy=True)
    return logp_BxT.sum(), jax.lax.stop_gradient(entropy_BxT).mean()
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


def _inputs():
  b, t, d, v = _BATCH.value, _SEQ.value, _D.value, _VOCAB.value
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  return (jax.random.normal(k1, (b, t, d), jnp.float32), 0.02 * jax.random.normal(k2, (d, v), jnp.float32),
          jax.random.randint(k3, (b, t), 0, v))


def _compiled_temp_bytes(chunk: int) -> int:
  args = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in _inputs()]
  return _step_fn(chunk).lower(*args).compile().memory_analysis().temp_size_in_bytes


def _child(chunk: int) -> None:
  """One setting in a fresh process: compile, allocate, then run and report peak-RSS growth."""
  args = _inputs()
  step = _step_fn(chunk).lower(*args).compile()
  jax.block_until_ready(args)
  base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  best = float("inf")
  for _ in range(1 + _REPEATS.value):  # the first run is a warm-up
    t0 = time.perf_counter()
    jax.block_until_ready(step(*args))
    best = min(best, time.perf_counter() - t0)
  peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  print(json.dumps({"rss_growth_bytes": (peak_kib - base_kib) * 1024, "rss_peak_bytes": peak_kib * 1024,
                    "seconds": best}))


def _run_child(chunk: int) -> dict:
  cmd = [sys.executable, "-m", "experiments.benchmarks.bench_logprob_memory", f"--child_chunk={chunk}"]
  cmd += [f"--batch={_BATCH.value}", f"--seq_len={_SEQ.value}", f"--d_model={_D.value}",
          f"--vocab={_VOCAB.value}", f"--repeats={_REPEATS.value}"]
  out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=dict(os.environ))
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  if _CHILD.value >= 0:
    _child(_CHILD.value)
    return
  b, t, d, v = _BATCH.value, _SEQ.value, _D.value, _VOCAB.value
  logits_bytes = b * t * v * 4
  print(f"token_logprobs fwd+bwd (with entropy): B={b}, T={t} ({b * t} positions), D={d}, V={v}; "
        f"one float32 [B*T, V] logits tensor = {logits_bytes / 2**20:.0f} MiB; jax {jax.__version__} "
        f"({jax.default_backend()}), {os.cpu_count()} cores")
  rows = []
  for chunk in map(int, _CHUNKS.value):
    temp = _compiled_temp_bytes(chunk)
    measured = _run_child(chunk) if _RSS.value else {}
    rows.append((chunk, temp, measured))
    print(f"  done chunk={chunk}", flush=True)
  base_temp = next((temp for chunk, temp, _ in rows if chunk == 0), rows[0][1])
  print(f"{'chunk':>6} | {'XLA temp MiB':>12} | {'temp ratio':>10} | {'process peak RSS MiB':>20} | "
        f"{'RSS growth in run MiB':>21} | {'step s':>6}")
  mib = lambda m, k: "-" if k not in m else f"{m[k] / 2**20:.0f}"  # noqa: E731
  secs = lambda m: "-" if "seconds" not in m else f"{m['seconds']:.2f}"  # noqa: E731
  for chunk, temp, m in rows:
    print(f"{chunk or 'none':>6} | {temp / 2**20:>12.1f} | {base_temp / max(temp, 1):>9.1f}x | "
          f"{mib(m, 'rss_peak_bytes'):>20} | {mib(m, 'rss_growth_bytes'):>21} | "
          f"{secs(m):>6}")
  print("temp ratio = unchunked / chunked XLA temp bytes. RSS growth is measured from the peak reached "
        "before the run (compilation, inputs), so it under-counts scratch that fits under that peak.")


if __name__ == "__main__":
  app.run(main)

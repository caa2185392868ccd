r"""Several seeds in one compiled program (`jax.vmap` over the train state) vs a loop over seeds.

  JAX_PLATFORMS=cpu python -m experiments.benchmarks.bench_seed_vmap            # SCoRe toy, 3 seeds
  JAX_PLATFORMS=cpu python -m experiments.benchmarks.bench_seed_vmap --seeds=2 --steps=30

Times `TrainStep.fused` of the SCoRe toy config (configs/score/tiny_arithmetic.py: 4-layer d64
model, P = 32 prompts x k = 4, two turns of 6 tokens) on a fresh model: `--steps` iterations for
each of `--seeds` seeds one after another, against the same iterations with the seeds stacked on
a leading axis of the state and batch and one `jax.vmap`-ed step. Both sides are compiled before
timing. This answers whether the reproduction should vmap its seeds on this machine.
"""

from __future__ import annotations

import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from experiments import arms as arms_lib, score_toy
from selfrl_jax.data.batch import PromptBatch
from selfrl_jax.train import builders
from selfrl_jax.train.state import create_train_state, make_optimizer
from selfrl_jax.train.step import make_train_step

_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per program.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed iterations per seed.")


def _batch(cfg, tok, rs: np.random.RandomState) -> PromptBatch:
  """A synthetic prompt batch of the toy's shapes ('abc+def=' prompts, left-padded)."""
  p, t, a = cfg.rl.prompts_per_step, cfg.rl.max_prompt_len, cfg.rl.max_answer_len
  prompts = np.zeros((p, t), np.int32)
  valid = np.zeros((p, t), bool)
  target = np.zeros((p, a), np.int32)
  for i in range(p):
    x, y = rs.randint(100, 1000, 2)
    ids = tok.encode(f"{x}+{y}=")
    prompts[i, t - len(ids):], valid[i, t - len(ids):] = ids, True
    ans = tok.encode(str(x + y)[::-1]) + [tok.eos_ids[0]]
    target[i, :len(ans)] = ans
  return PromptBatch(prompt_tokens_PxT=jnp.asarray(prompts), prompt_valid_PxT=jnp.asarray(valid),
                     prompt_len_P=jnp.asarray(valid.sum(1), jnp.int32), target_tokens_PxA=jnp.asarray(target),
                     target_len_P=jnp.asarray((target > 0).sum(1), jnp.int32),
                     example_id_P=jnp.arange(p, dtype=jnp.int32))


def main(argv):
  del argv
  cfg = arms_lib.load_config_module(score_toy.CONFIG).get_config("score")
  model, tok = builders.build_model(cfg)
  algorithm = builders.build_algorithm(cfg, tok)
  tx = make_optimizer(cfg.optim)
  graphdef, _ = create_train_state(model, tx, 0, keep_reference=algorithm.needs_reference, algorithm=algorithm)
  step = make_train_step(builders.build_update_settings(cfg, algorithm), algorithm, graphdef, tx)
  n, k = _SEEDS.value, _STEPS.value
  states = [create_train_state(model, tx, seed, keep_reference=algorithm.needs_reference, algorithm=algorithm)[1]
            for seed in range(n)]
  rs = np.random.RandomState(0)
  batches = [[_batch(cfg, tok, rs) for _ in range(k + 1)] for _ in range(n)]
  stack = lambda trees: jax.tree.map(lambda *x: jnp.stack(x), *trees)  # noqa: E731

  # Loop: one compiled program, seeds one after another.
  copies = [jax.tree.map(jnp.copy, s) for s in states]
  for i in range(n):
    copies[i], m = step.fused(copies[i], batches[i][0])
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for j in range(1, k + 1):
    for i in range(n):
      copies[i], m = step.fused(copies[i], batches[i][j])
  jax.block_until_ready(m)
  loop_s = time.perf_counter() - t0

  # vmap: the seeds on a leading axis of one program.
  vstep = jax.jit(jax.vmap(step.fused), donate_argnums=0)
  vstate, m = vstep(stack(states), stack([b[0] for b in batches]))
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for j in range(1, k + 1):
    vstate, m = vstep(vstate, stack([b[j] for b in batches]))
  jax.block_until_ready(m)
  vmap_s = time.perf_counter() - t0
  print(f"SCoRe toy fused step, {n} seeds x {k} iterations (P={cfg.rl.prompts_per_step}, k={cfg.rl.group_size}); "
        f"jax {jax.__version__} ({jax.default_backend()})")
  print(f"loop over seeds: {loop_s:.2f} s ({loop_s / (n * k) * 1e3:.0f} ms per seed-step)")
  print(f"vmap over seeds: {vmap_s:.2f} s ({vmap_s / (n * k) * 1e3:.0f} ms per seed-step)")
  print(f"speed-up of vmap: {loop_s / vmap_s:.2f}x")


if __name__ == "__main__":
  app.run(main)

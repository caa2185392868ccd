"""Entry point: two compiled GRPO train steps on a given mesh; used to compare device layouts.

Usage: rl_step.py OUT_PREFIX DATA FSDP [PROCESS_ID NUM_PROCESSES PORT [MODE]] (MODE: rl.mode, fused
by default). Every process builds the same
tiny model and the same global batch, feeds only its own rows through `shard_batch` (multi-host
path), runs the step and writes OUT_PREFIX.<process>.npz with the final parameters and per-step
loss and reward (all replicated, so every process can write them).
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from selfrl_jax.parallel import distributed  # noqa: E402  (before any JAX computation)


def main(out_prefix: str, data: int, fsdp: int, process_id: int = 0, num_processes: int = 1, port: int = 0,
         mode: str = "fused"):
  if num_processes > 1:
    distributed.maybe_initialize_distributed(f"localhost:{port}", num_processes, process_id,
                                             initialization_timeout=60)
  import dataclasses

  import jax
  import numpy as np

  from configs.common import get_base_config
  from selfrl_jax.data.batch import PromptBatch
  from selfrl_jax.parallel import sharding
  from selfrl_jax.parallel.mesh import make_mesh
  from selfrl_jax.train import builders
  from selfrl_jax.train.state import create_train_state, make_optimizer
  from selfrl_jax.train.step import make_train_step

  cfg = get_base_config()
  cfg.rl.prompts_per_step, cfg.rl.group_size, cfg.rl.micro_batch_size = 8, 4, 8
  cfg.rl.num_minibatches, cfg.rl.kl_coef, cfg.optim.learning_rate = 2, 0.05, 1e-2
  cfg.rl.mode = mode
  cfg.optim.eps = 1e-4  # Adam eps 1e-8 magnifies float-order noise in near-zero gradients 1e4-fold
  cfg.model.d_model, cfg.model.n_heads, cfg.model.n_kv_heads, cfg.model.d_ff = 32, 4, 2, 64
  model, tok = builders.build_model(cfg)
  tx = make_optimizer(cfg.optim)
  algo = builders.build_algorithm(cfg, tok)
  # A smooth reward (digit fraction) so every group has signal even for an untrained model.
  digits = np.asarray(tok.encode("0123456789"))
  algo = dataclasses.replace(algo, reward_fn=lambda r, b: (
      jax.numpy.isin(r.response_tokens_BxN, digits) & r.response_valid_BxN).mean(axis=1))
  graphdef, state = create_train_state(model, tx, cfg.seed, keep_reference=algo.needs_reference, algorithm=algo)
  assert state.ref_params is not None  # rl.kl_coef > 0: the step computes reference log-probs
  mesh = make_mesh(data=data, fsdp=fsdp)
  state_sharding = sharding.param_shardings(state, mesh)
  state = sharding.shard_params(state, mesh)
  step = make_train_step(builders.build_update_settings(cfg, algo), algo, graphdef, tx, state_sharding=state_sharding,
                         batch_sharding=sharding.batch_sharding(mesh), replicated_sharding=sharding.replicated(mesh))
  rs = np.random.RandomState(0)
  p, t, a = cfg.rl.prompts_per_step, cfg.rl.max_prompt_len, cfg.rl.max_answer_len
  valid = np.arange(t)[None] >= rs.randint(0, 8, (p, 1))
  batch = PromptBatch(prompt_tokens_PxT=rs.randint(3, 40, (p, t)).astype(np.int32), prompt_valid_PxT=valid,
                      prompt_len_P=valid.sum(1).astype(np.int32),
                      target_tokens_PxA=rs.randint(3, 40, (p, a)).astype(np.int32),
                      target_len_P=np.full((p,), 3, np.int32), example_id_P=np.arange(p, dtype=np.int64))
  rows = slice(process_id * p // num_processes, (process_id + 1) * p // num_processes)
  local = jax.tree.map(lambda x: x[rows], batch)
  out = {}
  for i in range(2):
    state, metrics = step(state, sharding.shard_batch(local, mesh))
    out[f"loss{i}"] = np.asarray(metrics["loss"])
    out[f"reward{i}"] = np.asarray(metrics["reward_mean"])
  replicated = jax.jit(lambda x: x, out_shardings=sharding.replicated(mesh))(state.params)
  for path, leaf in jax.tree_util.tree_flatten_with_path(replicated)[0]:
    out[sharding.path_str(path)] = np.asarray(leaf.addressable_data(0))
  out["compilations"] = np.asarray(step.compilations())
  np.savez(f"{out_prefix}.{process_id}.npz", **out)


if __name__ == "__main__":
  main(sys.argv[1], *map(int, sys.argv[2:7]), *sys.argv[7:8])

"""Entry point: one of N local processes joined by `jax.distributed.initialize` on localhost.

Usage: multi_process.py PROCESS_ID NUM_PROCESSES PORT OUT_PREFIX. Each process owns the CPU devices
XLA_FLAGS gives it, feeds only its own rows of the batch through `shard_batch`, runs the sharded
step on a (data=2, fsdp=-1) mesh over all processes' devices, and writes OUT_PREFIX.<id>.npz with
replicated results plus OUT_PREFIX.<id>.json with what it saw.
"""

from __future__ import annotations

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from selfrl_jax.parallel import distributed  # noqa: E402  (before any JAX computation)


def main(process_id: int, num_processes: int, port: int, out_prefix: str) -> None:
  joined = distributed.maybe_initialize_distributed(f"localhost:{port}", num_processes, process_id,
                                                    initialization_timeout=60)
  import jax
  import numpy as np

  import workload
  from selfrl_jax.parallel import sharding
  from selfrl_jax.parallel.mesh import make_mesh, mesh_summary

  pid, n_proc, n_local = distributed.process_info()
  mesh = make_mesh(data=2, fsdp=-1)
  graphdef, params = workload.build()
  tx, _ = workload.make_step(graphdef)
  opt_state = tx.init(params)
  param_sh = sharding.param_shardings(params, mesh)
  opt_sh = sharding.tree_shardings_like(param_sh, opt_state)
  rep = sharding.replicated(mesh)
  _, step = workload.make_step(graphdef, out_shardings=rep)

  batch = workload.make_batch()
  rows = workload.BATCH // n_proc
  local = {k: v[pid * rows:(pid + 1) * rows] for k, v in batch.items()}
  b = sharding.shard_batch(local, mesh)
  p = sharding.shard_params(params, mesh)
  o = jax.device_put(opt_state, opt_sh)
  loss, logp_B, grads, new_params, _ = step(p, o, b)

  out = {"loss": np.asarray(loss.addressable_data(0)), "logp_B": np.asarray(logp_B.addressable_data(0))}
  out.update({f"grads/{k}": v for k, v in workload.to_numpy(grads).items()})
  out.update({f"new_params/{k}": v for k, v in workload.to_numpy(new_params).items()})
  np.savez(f"{out_prefix}.{pid}.npz", **out)
  q = p["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"][...]
  meta = {
      "joined": joined, "process_index": pid, "process_count": n_proc, "local_device_count": n_local,
      "is_main": distributed.is_main_process(), "global_devices": jax.device_count(),
      "mesh": mesh_summary(mesh), "tokens_shape": list(b["tokens"].shape),
      "tokens_local_rows": sorted(int(s.index[0].start or 0) for s in b["tokens"].addressable_shards),
      "q_kernel_spec": str(q.sharding.spec), "q_kernel_fully_addressable": q.is_fully_addressable,
  }
  pathlib.Path(f"{out_prefix}.{pid}.json").write_text(json.dumps(meta))


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])

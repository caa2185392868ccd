"""Entry point: 8 simulated CPU devices; sharded loss/grad/adam step vs. one device.

Run as a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8 (set by the test before
jax is imported). Writes an .npz with the single-device reference, each mesh's results, and the
sharding specs seen, to the path in argv[1].
"""

from __future__ import annotations

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import workload  # noqa: E402
from selfrl_jax.parallel import sharding  # noqa: E402
from selfrl_jax.parallel.mesh import make_mesh, mesh_summary  # noqa: E402

MESHES = ((8, 1), (2, 4), (1, 8))


def main(out_path: str) -> None:
  assert jax.device_count() == 8, jax.devices()
  results = {f"ref/{k}": v for k, v in workload.reference().items()}
  meta = {}
  graphdef, params = workload.build()
  batch = workload.make_batch()
  for data, fsdp in MESHES:
    tag = f"{data}x{fsdp}"
    mesh = make_mesh(data=data, fsdp=fsdp)
    param_sh = sharding.param_shardings(params, mesh)
    tx, _ = workload.make_step(graphdef)
    opt_state = tx.init(params)
    opt_sh = sharding.tree_shardings_like(param_sh, opt_state)
    rep = sharding.replicated(mesh)
    _, step = workload.make_step(graphdef, out_shardings=(rep, rep, param_sh, param_sh, opt_sh))
    p = sharding.shard_params(params, mesh)
    o = jax.device_put(opt_state, opt_sh)
    b = sharding.shard_batch(batch, mesh)
    loss, logp_B, grads, new_params, new_opt = step(p, o, b)
    results[f"{tag}/loss"] = np.asarray(loss)
    results[f"{tag}/logp_B"] = np.asarray(logp_B)
    results.update({f"{tag}/grads/{k}": v for k, v in workload.to_numpy(grads).items()})
    results.update({f"{tag}/new_params/{k}": v for k, v in workload.to_numpy(new_params).items()})

    def specs(tree):
      flat = jax.tree_util.tree_flatten_with_path(tree)[0]
      return {sharding.path_str(k): str(x.sharding.spec) for k, x in flat}
    meta[tag] = {
        "summary": mesh_summary(mesh),
        "param_specs": specs(p),
        "grad_specs": specs(grads),
        "new_opt_specs": specs(new_opt),
        "opt_specs_by_rules": {sharding.path_str(k): str(s) for k, s in jax.tree_util.tree_flatten_with_path(
            sharding.param_partition_specs(opt_state, mesh), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]},
        "tokens_spec": str(b["tokens"].sharding.spec),
        "tokens_shard_shapes": sorted({tuple(s.data.shape) for s in b["tokens"].addressable_shards}),
        "q_kernel_shard_shapes": sorted({tuple(s.data.shape) for s in
                                         p["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"][...].addressable_shards}),
    }
  np.savez(out_path, **results)
  pathlib.Path(out_path).with_suffix(".json").write_text(json.dumps(meta))


if __name__ == "__main__":
  main(sys.argv[1])

"""Logical sharding rules: parameter paths -> logical axes -> mesh axes.

The model carries no sharding annotations (Flax 0.12 eager sharding would need a mesh at init).
Instead two tables live here:

* `PARAM_RULES` maps a parameter's path in the `nnx.State` (Hugging Face names, e.g.
  `model/layers/3/self_attn/q_proj/kernel`) to one logical axis name per array dimension.
* `LOGICAL_RULES` maps each logical axis to a mesh axis (or None = replicated).

FSDP splits the "embed" (d_model) dimension of every weight matrix over the "fsdp" mesh axis; batch
rows are split over ("data", "fsdp"). Changing the parallelism strategy (e.g. adding a tensor axis
for "heads"/"mlp") means editing `LOGICAL_RULES`, not the model.

Rules match path *suffixes*, so the same table shards an optimizer state whose leaves mirror the
parameters (optax adam `mu`/`nu`: `0/mu/model/layers/3/...`) and a whole TrainState.

A dimension whose size is not divisible by its mesh axis size is replicated instead (logged once
per distinct case) rather than failing: the tiny test models have dims like 4 or 64 that cannot be
split 8 ways, and replication is always correct, only less memory-efficient.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec as P

from selfrl_jax.parallel.mesh import DATA_AXIS, FSDP_AXIS

logger = logging.getLogger(__name__)

# Path regex (searched against "a/b/c") -> logical axis per dimension. First match wins.
PARAM_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"(^|/)embed_tokens/embedding$", ("vocab", "embed")),           # [V, D]
    (r"(^|/)lm_head/kernel$", ("embed", "vocab")),                   # [D, V]
    (r"(^|/)self_attn/q_proj/kernel$", ("embed", "heads")),          # [D, N*H]
    (r"(^|/)self_attn/[kv]_proj/kernel$", ("embed", "kv_heads")),    # [D, K*H]
    (r"(^|/)self_attn/q_proj/bias$", ("heads",)),                    # [N*H]
    (r"(^|/)self_attn/[kv]_proj/bias$", ("kv_heads",)),              # [K*H]
    (r"(^|/)self_attn/o_proj/kernel$", ("heads", "embed")),          # [N*H, D]
    (r"(^|/)self_attn/[qk]_norm/weight$", ("head_dim",)),            # [H]
    (r"(^|/)mlp/(gate|up)_proj/kernel$", ("embed", "mlp")),          # [D, F]
    (r"(^|/)mlp/down_proj/kernel$", ("mlp", "embed")),               # [F, D]
    (r"(^|/)[a-z_]*norm/weight$", ("norm",)),                        # [D]
)

# Logical axis -> mesh axis (str), several mesh axes (tuple), or None (replicated).
LOGICAL_RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": (DATA_AXIS, FSDP_AXIS),
    "embed": FSDP_AXIS,
    "vocab": None,
    "heads": None,
    "kv_heads": None,
    "head_dim": None,
    "mlp": None,
    "norm": None,
}

_LOGGED: set[tuple] = set()


def _log_once(key: tuple, msg: str, *args) -> None:
  if key not in _LOGGED:
    _LOGGED.add(key)
    logger.warning(msg, *args)


def path_str(path: Sequence[Any]) -> str:
  """`model/layers/0/self_attn/q_proj/kernel` for a jax key path (Variable `.value` dropped)."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  while parts and parts[-1] == "value":
    parts.pop()
  return "/".join(parts)


def logical_axes(path: str, rules: Sequence[tuple[str, tuple]] = PARAM_RULES) -> tuple | None:
  """The logical axes of the parameter at `path`, or None when no rule matches."""
  for pattern, axes in rules:
    if re.search(pattern, path):
      return axes
  return None


def _axis_size(mesh: Mesh | AbstractMesh, mesh_axes: str | tuple[str, ...]) -> int:
  names = (mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes
  shape = dict(mesh.shape)
  missing = [n for n in names if n not in shape]
  if missing:
    raise ValueError(f"LOGICAL_RULES maps to mesh axes {missing} that the mesh lacks "
                     f"(mesh axes: {list(shape)}).")
  return math.prod(shape[n] for n in names)


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int] | None = None,
                    mesh: Mesh | AbstractMesh | None = None,
                    logical_rules: Mapping[str, Any] = LOGICAL_RULES, path: str = "") -> P:
  """PartitionSpec for one array from its logical axes.

  With `shape` and `mesh`, a dimension not divisible by its mesh axes is replicated (logged once).
  A mesh axis is used at most once per array (a later dimension asking for it is replicated).

  Raises:
    ValueError: for a logical axis missing from `logical_rules`.
  """
  entries, used = [], set()
  for dim, name in enumerate(axes):
    if name is None:
      entries.append(None)
      continue
    if name not in logical_rules:
      raise ValueError(f"logical axis {name!r} (param {path or '?'}) has no entry in LOGICAL_RULES; "
                       f"known: {sorted(logical_rules)}.")
    mesh_axes = logical_rules[name]
    names = () if mesh_axes is None else ((mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes))
    if not names or used & set(names):
      entries.append(None)
      continue
    if shape is not None and mesh is not None:
      size = _axis_size(mesh, names)
      if shape[dim] % size:
        _log_once((name, shape[dim], names, size),
                  "sharding: logical axis %r of size %d is not divisible by mesh axes %s (size %d); "
                  "replicating that dimension (first seen at %s).", name, shape[dim], names, size, path)
        entries.append(None)
        continue
    used.update(names)
    entries.append(names[0] if len(names) == 1 else names)
  return P(*entries)


def param_partition_specs(tree: Any, mesh: Mesh | AbstractMesh | None = None,
                          rules: Sequence[tuple[str, tuple]] = PARAM_RULES,
                          logical_rules: Mapping[str, Any] = LOGICAL_RULES) -> Any:
  """A PartitionSpec for every leaf of `tree`, same structure.

  Works on concrete or abstract (`nnx.eval_shape`) states, optax states mirroring the params, or a
  whole TrainState. Leaves that match no rule are replicated (`P()`); that is silent for scalars
  and logged once for arrays so a new, unlisted parameter does not go unnoticed (once per entry of
  the algorithm state, `algo_state/<entry>`).

  Args:
    tree: pytree whose leaves have `.shape` (arrays or ShapeDtypeStructs).
    mesh: when given, dimensions not divisible by their mesh axes fall back to replication.

  Raises:
    ValueError: when a matched rule's rank differs from the leaf's rank (names the path).
  """
  def spec(path, leaf):
    name = path_str(path)
    shape = tuple(np.shape(leaf))
    axes = logical_axes(name, rules)
    if axes is None:
      if len(shape) > 0 and name.startswith("algo_state/"):
        # Algorithm state (probes, buffers) is replicated unless a rule names it: one line per entry.
        entry = "/".join(name.split("/")[:2])
        _log_once(("unmatched", entry), "sharding: no rule for the arrays of %s; replicated.", entry)
      elif len(shape) > 0:
        _log_once(("unmatched", name), "sharding: no rule for %s %s; replicated.", name, shape)
      return P()
    if len(axes) != len(shape):
      raise ValueError(f"sharding rule for {name!r} gives logical axes {axes} (rank {len(axes)}) but "
                       f"the array has shape {shape}; fix PARAM_RULES.")
    return logical_to_spec(axes, shape, mesh, logical_rules, name)
  return jax.tree_util.tree_map_with_path(spec, tree)


def param_shardings(tree: Any, mesh: Mesh | AbstractMesh, **kwargs) -> Any:
  """NamedSharding for every leaf of `tree` (see `param_partition_specs`)."""
  specs = param_partition_specs(tree, mesh, **kwargs)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def tree_shardings_like(param_shardings_tree: Any, tree: Any) -> Any:
  """Shardings for a tree whose leaves mirror the params (optimizer state), by path suffix.

  A leaf whose path ends with a parameter's path and whose rank and shape fit that parameter's
  spec gets the parameter's sharding (optax adam `mu`/`nu`); everything else (step counts,
  factored statistics of a different shape) is replicated on the same mesh.
  """
  flat = jax.tree_util.tree_flatten_with_path(
      param_shardings_tree, is_leaf=lambda x: isinstance(x, NamedSharding))[0]
  by_path = {path_str(p): s for p, s in flat}
  if not by_path:
    raise ValueError("tree_shardings_like: param_shardings_tree has no NamedSharding leaves.")
  mesh = next(iter(by_path.values())).mesh

  def fits(leaf_shape, spec):
    if len(spec) > len(leaf_shape):
      return False
    return all(a is None or leaf_shape[d] % _axis_size(mesh, a) == 0 for d, a in enumerate(spec))

  def pick(path, leaf):
    parts = path_str(path).split("/")
    shape = tuple(np.shape(leaf))
    for start in range(len(parts)):
      s = by_path.get("/".join(parts[start:]))
      if s is not None:
        if len(s.spec) in (0, len(shape)) and fits(shape, s.spec):
          return s
        break
    return NamedSharding(mesh, P())
  return jax.tree_util.tree_map_with_path(pick, tree)


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array."""
  return NamedSharding(mesh, P())


def batch_spec(logical_rules: Mapping[str, Any] = LOGICAL_RULES) -> P:
  """Leading (row) dimension over the "batch" mesh axes, the rest replicated."""
  return P(logical_rules["batch"])


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding for [B, ...] arrays: rows split over data * fsdp devices."""
  return NamedSharding(mesh, batch_spec())


def batch_tree_shardings(tree: Any, mesh: Mesh) -> Any:
  """Row sharding for every array leaf of `tree` with a batch dim, replication for scalars.

  Fits activation-side pytrees such as a `KVCache` (batch-leading buffers, `valid_BxS`,
  `next_pos_B` split by row; the shared scalar `end_index` replicated).
  """
  return jax.tree.map(lambda x: batch_sharding(mesh) if np.ndim(x) else replicated(mesh), tree)


def num_batch_shards(mesh: Mesh) -> int:
  """How many ways batch rows are split (data * fsdp); global batch sizes must be multiples."""
  return _axis_size(mesh, LOGICAL_RULES["batch"])


def shard_params(tree: Any, mesh: Mesh) -> Any:
  """Places a (host or single-device) pytree on the mesh by the rules.

  Single process: `jax.device_put`. Multi-process: every process must hold the same full values
  (same seed or same checkpoint file); each device is filled with its slice from the local copy
  (`make_array_from_callback`), which skips the cross-host equality check `device_put` would run
  for every leaf.
  """
  shardings = param_shardings(tree, mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)

  def place(x, s):
    if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
      # Typed keys cannot be built from host slices: place the raw key data, then re-wrap it.
      data = np.asarray(jax.random.key_data(x))
      data_sharding = NamedSharding(s.mesh, P(*s.spec, *([None] * (data.ndim - x.ndim))))
      placed = jax.make_array_from_callback(data.shape, data_sharding, lambda idx: data[idx])
      return jax.random.wrap_key_data(placed, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, s, lambda idx: host[idx])
  return jax.tree.map(place, tree, shardings)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Host numpy batch (pytree, e.g. a dict) -> global jax arrays with rows split over the mesh.

  Each process passes only its own rows (its share of the global batch, in process order); the
  global batch has `local_rows * process_count` rows. With one process that is the whole batch.
  0-d leaves are replicated and must be equal on every process.

  Raises:
    ValueError: naming the leaf when its global row count is not a multiple of data * fsdp.
  """
  n_shards = num_batch_shards(mesh)
  n_proc = jax.process_count()

  def put(path, x):
    x = np.asarray(x)
    if x.ndim == 0:
      return jax.make_array_from_process_local_data(replicated(mesh), x, x.shape)
    global_rows = x.shape[0] * n_proc
    if global_rows % n_shards:
      raise ValueError(f"shard_batch: {path_str(path) or 'batch'} has {x.shape[0]} local rows x "
                       f"{n_proc} processes = {global_rows} rows, not a multiple of the "
                       f"{n_shards} batch shards (mesh {dict(mesh.shape)}).")
    return jax.make_array_from_process_local_data(batch_sharding(mesh), x,
                                                  (global_rows,) + x.shape[1:])
  return jax.tree_util.tree_map_with_path(put, batch)

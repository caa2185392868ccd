"""Checkpoints of the train state, data-iterator state, config and a small meta record (Orbax).

    ckpt = CheckpointManager(workdir / "checkpoints", max_to_keep=3, save_every=100)
    abstract = jax.eval_shape(lambda: state)          # or nnx.eval_shape; may carry shardings
    resumed = ckpt.restore_or_none(abstract)          # newest *readable* step, or None
    if resumed is not None:
      state, data_state = resumed.state, resumed.data_state
    ...
    if ckpt.should_save(step):
      ckpt.save(step, state, iterator.get_state(), config, meta={"reward_mean": r})
    ckpt.close()                                      # waits for the async write

Each step directory holds four Orbax items: `state` (any pytree of arrays; typed PRNG keys are
stored as their uint32 key data and re-wrapped on restore with the dtype of the abstract leaf),
`data` (iterator state: JSON value or bytes), `config` (JSON dict) and `meta` (step, wall time,
user metrics, and the state's integrity record). Orbax writes into `<step>.orbax-checkpoint-tmp-*`
and renames on commit, so a half-written step is never listed.

Integrity: compressed array chunks can be damaged without the reader noticing (overwritten bytes
in the middle of a chunk restore as NaNs or garbage), so `save` records two position-weighted
uint32 checksums of every state array's bits in `meta` — committed atomically with the arrays —
and every restore recomputes and compares them. A committed step that fails to restore (truncated
or missing file, or a checksum mismatch) is skipped with a warning naming the arrays, the next
older step is used, and the bad step is moved to `<directory>/corrupt/` so later saves at that
step number are possible. Steps saved before integrity records existed restore with a warning.

Multi-host: every process calls `save`/`restore*`; Orbax coordinates the writes, and the fallback
only accepts a step that restored on every process.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)

ITEMS = ("state", "data", "config", "meta")
CORRUPT_SUBDIR = "corrupt"
INTEGRITY_KEY = "state_checksums"  # reserved meta field: {array path: [c1, c2]}


class Restored(NamedTuple):
  """A restored checkpoint; `skipped` maps unreadable newer steps to their error text."""
  step: int
  state: Any
  data_state: Any
  config: dict[str, Any]
  meta: dict[str, Any]
  skipped: dict[int, str]


def _short_error(e: BaseException, limit: int = 300) -> str:
  """`Type: first line` of an exception, at most `limit` characters (TensorStore errors carry a
  multi-kilobyte spec dump after their first line)."""
  text = str(e).strip().splitlines()[0] if str(e).strip() else ""
  text = text.split(" [source locations=")[0].split("See full TensorStore details")[0].strip()
  out = f"{type(e).__name__}: {text}"
  return out if len(out) <= limit else out[:limit - 3] + "..."


class CheckpointError(RuntimeError):
  """No checkpoint in the directory could be restored."""


class IntegrityError(ValueError):
  """A restored step's arrays do not match the checksums saved with them."""


# --- integrity record --------------------------------------------------------------------------

def _as_uint32(x: jax.Array) -> jax.Array:
  """The bits of `x` as a flat uint32 vector (16- and 8-bit types widened, 64-bit split in two)."""
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  bits = jax.lax.bitcast_convert_type(x, width) if x.dtype != width else x
  return bits.astype(jnp.uint32).reshape(-1)


@jax.jit
def _leaf_checksum(x: jax.Array) -> jax.Array:
  """[2] uint32: sums of the bits weighted by odd position multipliers (wrapping, so exact in any
  reduction order or sharding); any change of one word changes both, a swap of two words the first."""
  bits = _as_uint32(x)
  i = jnp.arange(bits.shape[0], dtype=jnp.uint32)
  c1 = jnp.sum(bits * (2 * i + 1), dtype=jnp.uint32)
  c2 = jnp.sum((bits ^ (i * jnp.uint32(0x9E3779B9))) * jnp.uint32(0x85EBCA6B), dtype=jnp.uint32)
  return jnp.stack([c1, c2])


def state_checksums(tree) -> dict[str, list[int]]:
  """{array path: [c1, c2]} for every array leaf of `tree` (typed keys as key data), computed where
  the arrays live (sharded arrays included), for the integrity record of a checkpoint."""
  leaves = jax.tree.leaves_with_path(keys_to_data(tree))
  sums = jax.device_get([_leaf_checksum(jnp.asarray(x)) for _, x in leaves])
  return {jax.tree_util.keystr(path): [int(v) for v in c] for (path, _), c in zip(leaves, sums)}


def verify_checksums(tree, record: Mapping[str, Any] | None, where: str) -> None:
  """Raises IntegrityError naming the arrays of `tree` whose checksums differ from `record`.

  A missing record (a step saved before integrity records existed) is logged, not an error."""
  if record is None:
    log.warning("%s has no integrity record (saved by an older version); restored unverified", where)
    return
  got = state_checksums(tree)
  bad = sorted(k for k in set(got) | set(record) if got.get(k) != record.get(k))
  if bad:
    raise IntegrityError(f"{where}: {len(bad)} of {len(record)} arrays do not match the checksums saved "
                         f"with them (damaged bytes): {', '.join(bad[:6])}{' ...' if len(bad) > 6 else ''}")


# --- typed PRNG keys ---------------------------------------------------------------------------

def _is_key(x) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def keys_to_data(tree):
  """Replaces typed PRNG key leaves with their raw uint32 key data (Orbax cannot store keys)."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _abstract_leaf(x):
  """ShapeDtypeStruct for one restore target leaf, keeping its sharding; keys -> key data."""
  sharding = getattr(x, "sharding", None)
  if _is_key(x):
    # Key data adds trailing impl dims (threefry: (2,)); a NamedSharding over the logical dims
    # stays valid for the physical array, the extra dims are replicated.
    data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(x.shape, x.dtype))
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    raise TypeError(f"abstract_state leaf must be an array or jax.ShapeDtypeStruct, got {type(x)}")
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def data_to_keys(tree, abstract_tree):
  """Inverse of `keys_to_data`: wraps leaves whose abstract dtype is a key dtype."""
  return jax.tree.map(
      lambda a, x: jax.random.wrap_key_data(x, dtype=a.dtype) if _is_key(a) else x,
      abstract_tree, tree)


# --- JSON items --------------------------------------------------------------------------------

def to_jsonable(x, where: str = "value"):
  """Converts numpy/JAX scalars and small arrays to JSON types; raises naming the bad field."""
  if x is None or isinstance(x, (bool, int, str)):
    return x
  if isinstance(x, float):
    return x if math.isfinite(x) else None  # strict JSON has no NaN/inf
  if isinstance(x, Mapping):
    out = {}
    for k, v in x.items():
      if not isinstance(k, str):
        raise TypeError(f"{where}: JSON keys must be str, got {k!r} ({type(k).__name__})")
      out[k] = to_jsonable(v, f"{where}.{k}")
    return out
  if isinstance(x, (list, tuple)):
    return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(x)]
  if isinstance(x, (np.ndarray, np.generic, jax.Array)):
    return to_jsonable(np.asarray(x).tolist(), where)
  raise TypeError(f"{where}: cannot store {type(x).__name__} as JSON")


def encode_data_state(data_state) -> dict[str, Any]:
  """Tags the iterator state so bytes (grain DataLoader) and dicts (grain datasets) round-trip."""
  if data_state is None:
    return {"format": "none"}
  if isinstance(data_state, (bytes, bytearray)):
    try:
      return {"format": "utf8_bytes", "value": bytes(data_state).decode("utf-8")}
    except UnicodeDecodeError:
      return {"format": "b64_bytes", "value": base64.b64encode(bytes(data_state)).decode("ascii")}
  return {"format": "json", "value": to_jsonable(data_state, "data_state")}


def decode_data_state(record: Mapping[str, Any]):
  """Inverse of `encode_data_state`."""
  fmt = record.get("format")
  if fmt == "none":
    return None
  if fmt == "utf8_bytes":
    return record["value"].encode("utf-8")
  if fmt == "b64_bytes":
    return base64.b64decode(record["value"])
  if fmt == "json":
    return record["value"]
  raise ValueError(f"data item: unknown format {fmt!r}; expected one of "
                   "['none', 'utf8_bytes', 'b64_bytes', 'json']")


def config_to_dict(config) -> dict[str, Any]:
  """ConfigDict (via its best-effort JSON), mapping, or None -> plain JSON dict ({} for None)."""
  if config is None:
    return {}
  if hasattr(config, "to_json_best_effort"):
    return json.loads(config.to_json_best_effort())
  if isinstance(config, Mapping):
    return to_jsonable(config, "config")
  raise TypeError(f"config must be an ml_collections.ConfigDict, a mapping or None, "
                  f"got {type(config).__name__}")


# --- manager -----------------------------------------------------------------------------------

def _all_processes_ok(ok: bool) -> bool:
  """A step is usable only if every host read its shards (hosts read different files)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


class CheckpointManager:
  """Orbax `CheckpointManager` over (state, data, config, meta) with keep-N and fallback restore.

  Attributes:
    directory: absolute checkpoint directory.
    save_every: periodic save interval in steps (0: only forced saves).
    last_restored_step: step returned by the last restore, or None.
    last_skipped: {step: error} of unreadable steps passed over by the last `restore_latest`.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3,
               save_every: int = 100, async_save: bool = True, quarantine_corrupt: bool = True,
               read_only: bool = False):
    """`read_only=True` (evaluation) never writes: no directory created, no temporary directories
    cleaned, no step quarantined, `save` refused; a missing directory is a FileNotFoundError."""
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1 or None (keep all), got {max_to_keep}")
    if save_every < 0:
      raise ValueError(f"save_every must be >= 0 (0 disables periodic saves), got {save_every}")
    path = os.fspath(directory)
    self.directory = path if "://" in path else os.path.abspath(path)  # Orbax needs absolute
    self.save_every = int(save_every)
    self.read_only = read_only
    self.quarantine_corrupt = quarantine_corrupt and not read_only
    self.last_restored_step: int | None = None
    self.last_skipped: dict[int, str] = {}
    if read_only and not epath.Path(self.directory).is_dir():
      raise FileNotFoundError(f"no checkpoint directory {self.directory}")
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(n=max_to_keep),
        enable_async_checkpointing=async_save, create=not read_only, cleanup_tmp_directories=not read_only,
        read_only=read_only)
    self._mngr = ocp.CheckpointManager(self.directory, item_names=ITEMS, options=options)

  # -- bookkeeping --

  def all_steps(self) -> list[int]:
    """Committed steps, oldest first."""
    return sorted(self._mngr.all_steps())

  def latest_step(self) -> int | None:
    """Newest committed step (not necessarily readable; see `restore_latest`)."""
    return self._mngr.latest_step()

  def should_save(self, step: int) -> bool:
    """Periodic save decision: every `save_every` steps, never step 0, never twice."""
    step = int(step)
    return (self.save_every > 0 and step > 0 and step % self.save_every == 0
            and step not in self._mngr.all_steps())

  def wait_until_finished(self) -> None:
    """Blocks until the in-flight async save has committed (raises its error, if any)."""
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.close()

  def __enter__(self) -> CheckpointManager:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # -- save --

  def save(self, step: int, state, data_state=None, config=None,
           meta: Mapping[str, Any] | None = None, force: bool = False) -> bool:
    """Starts an async save of step `step`; returns False when skipped.

    Skipped when `force` is False and `should_save(step)` is False, or when `step` is already
    saved (e.g. a preemption save right after a periodic one). All processes must call this.
    """
    step = int(step)
    if self.read_only:
      raise ValueError(f"{self.directory} was opened read-only; not saving step {step}")
    if not force and not self.should_save(step):
      return False
    if step in self._mngr.all_steps():
      log.info("checkpoint step %d already exists in %s; not saving again", step,
                   self.directory)
      return False
    latest = self._mngr.latest_step()
    if latest is not None and step < latest:
      raise ValueError(f"cannot save step {step}: {self.directory} already holds newer step "
                       f"{latest}; keep-N would delete the new checkpoint first")
    user_meta = to_jsonable(dict(meta or {}), "meta")
    if "step" in user_meta and user_meta["step"] != step:
      raise ValueError(f"meta['step']={user_meta['step']!r} disagrees with step={step}")
    if INTEGRITY_KEY in user_meta:
      raise ValueError(f"meta[{INTEGRITY_KEY!r}] is reserved for the checkpoint's integrity record")
    state_data = keys_to_data(state)
    meta_record = {**user_meta, "step": step, "wall_time": time.time(),
                   INTEGRITY_KEY: state_checksums(state_data)}
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state_data),
        data=ocp.args.JsonSave(encode_data_state(data_state)),
        config=ocp.args.JsonSave(config_to_dict(config)),
        meta=ocp.args.JsonSave(meta_record))
    return bool(self._mngr.save(step, args=args, force=True))

  # -- restore --

  def restore(self, abstract_state, step: int | None = None) -> tuple[Any, Any, dict, dict]:
    """Restores one step (default: newest) without fallback.

    Args:
      abstract_state: pytree of jax.ShapeDtypeStruct (from jax.eval_shape / nnx.eval_shape) or
        arrays with the target structure; leaf shardings are honoured. Key dtypes give keys back.
      step: step to restore; None for the newest committed step.

    Returns:
      (state, data_state, config_dict, meta); meta without the integrity record.

    Raises:
      IntegrityError: an array does not match the checksum saved with it.
    """
    self._mngr.wait_until_finished()  # never read a step that is still being written
    if step is None:
      step = self._mngr.latest_step()
      if step is None:
        raise FileNotFoundError(f"no committed checkpoint in {self.directory}")
    elif int(step) not in self._mngr.all_steps():
      raise FileNotFoundError(f"checkpoint step {step} not found in {self.directory}; "
                              f"available steps: {self.all_steps()}")
    target = jax.tree.map(_abstract_leaf, abstract_state)
    out = self._mngr.restore(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(),
        config=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
    meta = dict(out.meta)
    verify_checksums(out.state, meta.pop(INTEGRITY_KEY, None), f"checkpoint step {step} in {self.directory}")
    state = data_to_keys(out.state, abstract_state)
    self.last_restored_step = int(step)
    return state, decode_data_state(out.data), dict(out.config), meta

  def saved_config(self) -> dict[str, Any] | None:
    """The config saved with the newest committed step (None: no checkpoint yet); reads nothing else."""
    self._mngr.wait_until_finished()
    self._mngr.reload()
    step = self._mngr.latest_step()
    if step is None:
      return None
    out = self._mngr.restore(int(step), args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return dict(out.config)

  def restore_latest(self, abstract_state) -> Restored:
    """Restores the newest step that reads back cleanly, skipping (and quarantining) bad ones.

    Raises:
      FileNotFoundError: the directory holds no committed step.
      CheckpointError: every committed step failed; the message lists each step's error.
    """
    self._mngr.wait_until_finished()
    self._mngr.reload()  # another process/run may have written since construction
    steps = sorted(self._mngr.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"no committed checkpoint in {self.directory}")
    skipped: dict[int, str] = {}
    for step in steps:
      try:
        result, error = self.restore(abstract_state, step), None
      except Exception as e:  # pylint: disable=broad-except
        # Corruption surfaces as ValueError (tensorstore), JSONDecodeError, FileNotFoundError...
        result, error = None, _short_error(e)
      if _all_processes_ok(error is None):
        self.last_skipped = skipped
        if skipped:
          self._quarantine(skipped)
        return Restored(step, *result, skipped=skipped)
      skipped[step] = error or "failed on another process"
      log.warning("checkpoint step %d in %s cannot be restored (%s); falling back to an older "
                      "step", step, self.directory, skipped[step])
    self.last_skipped = skipped
    raise CheckpointError(f"no checkpoint in {self.directory} could be restored (" + "; ".join(
        f"step {s}: {err}" for s, err in skipped.items()) + f"). To start the run over, delete {self.directory}.")

  def restore_or_none(self, abstract_state) -> Restored | None:
    """Auto-resume: `restore_latest`, or None when the directory holds no checkpoint yet."""
    self._mngr.wait_until_finished()
    self._mngr.reload()
    if self._mngr.latest_step() is None:
      return None
    return self.restore_latest(abstract_state)

  def _quarantine(self, bad: Mapping[int, str]) -> None:
    """Moves unreadable steps to `corrupt/` so keep-N and later saves at those steps work."""
    if not self.quarantine_corrupt:
      return
    if jax.process_index() == 0:
      root = epath.Path(self.directory)
      (root / CORRUPT_SUBDIR).mkdir(parents=True, exist_ok=True)
      for step in bad:
        # The same step can go bad twice within a second (written again, damaged again): never reuse a name.
        stamp, n = int(time.time()), 0
        target = root / CORRUPT_SUBDIR / f"{step}-{stamp}"
        while target.exists():
          n += 1
          target = root / CORRUPT_SUBDIR / f"{step}-{stamp}-{n}"
        (root / str(step)).rename(target)
        (target / "RESTORE_ERROR.txt").write_text(bad[step])
        log.warning("moved unreadable checkpoint step %d to %s", step, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices("selfrl_checkpoint_quarantine")
    self._mngr.reload()

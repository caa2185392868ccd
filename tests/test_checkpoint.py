"""Checkpoint manager (Orbax) and preemption handling: round-trips, keep-N, fallback, SIGTERM."""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from selfrl_jax.algos.base import Algorithm
from selfrl_jax.models.config import tiny_config
from selfrl_jax.models.decoder import init_model
from selfrl_jax.train.checkpoint import CheckpointError, CheckpointManager, keys_to_data
from selfrl_jax.train.preemption import PreemptionHandler
from selfrl_jax.train.state import create_train_state

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


class TinyModel(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.l1 = nnx.Linear(4, 8, rngs=rngs)
    self.l2 = nnx.Linear(8, 3, rngs=rngs)


@struct.dataclass
class State:
  step: jax.Array
  params: nnx.State
  opt_state: optax.OptState
  rng: jax.Array
  ref_params: nnx.State | None = None  # like TrainState: a None field must survive
  algo_state: object = None  # like TrainState: None for stateless algorithms


TX = optax.adam(1e-2)


def make_state(step: int, seed: int = 0) -> State:
  """A state with non-trivial Adam moments (one update with deterministic fake gradients)."""
  params = nnx.state(TinyModel(nnx.Rngs(seed)), nnx.Param)
  opt = TX.init(params)
  grads = jax.tree.map(lambda p: 0.5 * p + 0.1 * (seed + 1), params)
  updates, opt = TX.update(grads, opt, params)
  params = optax.apply_updates(params, updates)
  return State(step=jnp.asarray(step, jnp.int32), params=params, opt_state=opt,
               rng=jax.random.key(100 + seed))


def abstract_state() -> State:
  """Restore target the way the trainer builds it: nnx.eval_shape, no arrays allocated."""
  params = nnx.state(nnx.eval_shape(lambda: TinyModel(nnx.Rngs(0))), nnx.Param)
  return State(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
               opt_state=jax.eval_shape(TX.init, params),
               rng=jax.eval_shape(lambda: jax.random.key(0)))


def assert_states_equal(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  assert got.rng.dtype == want.rng.dtype  # a typed key again, not raw uint32
  got_leaves = jax.tree.leaves_with_path(keys_to_data(got))
  want_leaves = jax.tree.leaves(keys_to_data(want))
  for (path, g), w in zip(got_leaves, want_leaves, strict=True):
    assert g.dtype == w.dtype, jax.tree_util.keystr(path)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=jax.tree_util.keystr(path))
  np.testing.assert_array_equal(jax.random.uniform(got.rng, (4,)),
                                jax.random.uniform(want.rng, (4,)))


def _popen(script: str, *args: str) -> subprocess.Popen:
  env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
  return subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)


def _read_until(proc: subprocess.Popen, prefix: str) -> None:
  for line in proc.stdout:
    if line.startswith(prefix):
      return
  proc.kill()
  raise AssertionError(f"process ended before printing {prefix!r}: {proc.stderr.read()[-3000:]}")


def test_roundtrip_every_leaf_and_host_items(tmp_path):
  state = make_state(step=10)
  mu = state.opt_state[0].mu
  assert any(np.abs(np.asarray(x)).sum() > 0 for x in jax.tree.leaves(mu))  # moments are not all 0
  cfg = ml_collections.ConfigDict({"optim": {"learning_rate": 3e-4, "b1": 0.9}, "algo": "score"})
  data_state = {"next_index": 17, "epoch": 2}
  with CheckpointManager(tmp_path / "ckpt", save_every=5) as ckpt:
    assert ckpt.directory == str(tmp_path / "ckpt")
    assert ckpt.save(10, state, data_state, cfg, meta={"reward_mean": np.float32(0.25), "n": 3})
    bytes_state = b"\xff\x00grain"  # DataLoader-style bytes that are not UTF-8
    assert ckpt.save(15, make_state(15, seed=1), bytes_state, None)
    got, got_data, got_cfg, got_meta = ckpt.restore(abstract_state(), step=10)
    assert_states_equal(got, state)
    assert got.ref_params is None
    assert got_data == data_state
    assert got_cfg == cfg.to_dict()
    assert ml_collections.ConfigDict(got_cfg).optim.learning_rate == 3e-4
    assert got_meta["step"] == 10 and got_meta["reward_mean"] == 0.25 and got_meta["n"] == 3
    assert isinstance(got_meta["wall_time"], float)
    _, got_bytes, got_cfg15, _ = ckpt.restore(abstract_state())  # default: newest
    assert got_bytes == bytes_state and got_cfg15 == {}
    assert ckpt.last_restored_step == 15
    with pytest.raises(FileNotFoundError, match="step 12 not found"):
      ckpt.restore(abstract_state(), step=12)


class _StatefulAlgorithm(Algorithm):
  """Only `init_state` matters here: an algorithm state with float, int and typed-key leaves."""

  def init_state(self, key, model):
    return {"probe_w": jax.random.normal(key, (3, 2)), "labels_used": jnp.asarray(7, jnp.int32),
            "buffer_key": jax.random.fold_in(key, 1)}


@pytest.mark.parametrize("algorithm", [None, _StatefulAlgorithm()], ids=["stateless", "algo_state"])
def test_train_state_roundtrip_with_algo_state(tmp_path, algorithm):
  """What the loop saves, `state.replace(ref_params=None)`, restores with its algo_state."""
  model = init_model(tiny_config(vocab_size=16, d_model=16, d_ff=32, n_heads=2, n_kv_heads=1, head_dim=8))
  _, state = create_train_state(model, TX, seed=3, keep_reference=True, algorithm=algorithm)
  assert state.ref_params is not None
  if algorithm is None:
    assert state.algo_state is None
  else:
    assert int(state.algo_state["labels_used"]) == 7
    # Its own key stream: the policy's rng is the one a stateless run starts from.
    stateless = create_train_state(model, TX, seed=3, keep_reference=False)[1]
    np.testing.assert_array_equal(jax.random.key_data(state.rng), jax.random.key_data(stateless.rng))
  saved = state.replace(ref_params=None)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), saved)
  with CheckpointManager(tmp_path, save_every=1) as ckpt:
    assert ckpt.save(1, saved)
    got, *_ = ckpt.restore(abstract)
  assert got.ref_params is None
  assert_states_equal(got, saved)
  if algorithm is not None:
    assert got.algo_state["buffer_key"].dtype == saved.algo_state["buffer_key"].dtype
    np.testing.assert_array_equal(got.algo_state["probe_w"], saved.algo_state["probe_w"])


def test_restore_honours_abstract_shardings(tmp_path):
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
  replicated = NamedSharding(mesh, P())
  state = make_state(step=3)
  with CheckpointManager(tmp_path, save_every=1) as ckpt:
    ckpt.save(3, state)
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), abstract_state())
    got, *_ = ckpt.restore(abstract)
  for leaf in jax.tree.leaves(got):
    assert leaf.sharding == replicated
  assert_states_equal(got, state)


_SHARDED_SCRIPT = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from selfrl_jax.train.checkpoint import CheckpointManager

mesh = Mesh(np.array(jax.devices()), ("data",))
row, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
state = {"w": jax.device_put(jnp.arange(8.0).reshape(4, 2), row),
         "keys": jax.device_put(jax.random.split(jax.random.key(1), 4), row)}
with CheckpointManager(sys.argv[1], save_every=1) as ckpt:
  ckpt.save(1, state)
  for target in (rep, row):  # saved row-sharded; the target layout must win
    abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=target)
                for k, v in state.items()}
    got, *_ = ckpt.restore(abstract)
    for k in state:
      assert got[k].sharding.is_equivalent_to(target, 1), (k, got[k].sharding, target)
    assert got["keys"].dtype == state["keys"].dtype
    np.testing.assert_array_equal(got["w"], state["w"])
    np.testing.assert_array_equal(jax.random.key_data(got["keys"]),
                                  jax.random.key_data(state["keys"]))
    print("ok", [s.data.shape for s in got["w"].addressable_shards], flush=True)
"""


def test_restore_onto_two_device_shardings(tmp_path):
  proc = _popen(_SHARDED_SCRIPT, str(tmp_path / "ckpt"))
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  assert out.split("\n")[:2] == ["ok [(4, 2), (4, 2)]", "ok [(2, 2), (2, 2)]"], out


def test_should_save_interval_and_keep_n(tmp_path):
  with CheckpointManager(tmp_path, save_every=2, max_to_keep=2) as ckpt:
    assert not ckpt.should_save(0)
    saved = [s for s in range(1, 9) if ckpt.save(s, {"x": jnp.full((2,), s, jnp.float32)})]
    assert saved == [2, 4, 6, 8]
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [6, 8]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["6", "8"]
    assert not ckpt.should_save(8)
    assert not ckpt.save(8, {"x": jnp.zeros((2,))}, force=True)  # already saved: no-op
    with pytest.raises(ValueError, match="newer step 8"):
      ckpt.save(7, {"x": jnp.zeros((2,))}, force=True)
    assert ckpt.save(9, {"x": jnp.full((2,), 9, jnp.float32)}, force=True)  # off-interval, forced
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [8, 9]


def test_auto_resume_picks_newest_and_ignores_tmp_dirs(tmp_path):
  abstract = {"x": jax.ShapeDtypeStruct((3,), jnp.float32)}
  with CheckpointManager(tmp_path, save_every=1, max_to_keep=5) as ckpt:
    assert ckpt.restore_or_none(abstract) is None
    for s in (1, 2, 3):
      ckpt.save(s, {"x": jnp.full((3,), s, jnp.float32)}, {"pos": s})
  # A save that died before Orbax's rename-on-commit: its directory carries the tmp suffix.
  partial = tmp_path / "7.orbax-checkpoint-tmp-1700000000"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "_METADATA").write_text("{trunc")
  resumed = CheckpointManager(tmp_path, save_every=1)
  try:
    got = resumed.restore_or_none(abstract)
    assert resumed.latest_step() == 3 and got.step == 3 and got.skipped == {}
    np.testing.assert_array_equal(got.state["x"], np.full((3,), 3, np.float32))
    assert got.data_state == {"pos": 3}
  finally:
    resumed.close()


def _corrupt(step_dir: pathlib.Path, how: str) -> pathlib.Path:
  """Truncates/deletes the largest array-data file of the `state` item (OCDBT layout)."""
  data_files = [p for p in (step_dir / "state" / "d").iterdir() if p.is_file()]
  assert data_files, f"no OCDBT data files under {step_dir / 'state' / 'd'}"
  victim = max(data_files, key=lambda p: p.stat().st_size)
  if how == "truncate":
    with open(victim, "r+b") as f:
      f.truncate(victim.stat().st_size // 2)
  else:
    victim.unlink()
  return victim


# Orbax/tensorstore callbacks of a failed read can land on an already closed event loop.
_IGNORE_CLOSED_LOOP = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@_IGNORE_CLOSED_LOOP
@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_corrupt_latest_falls_back_to_previous_step(tmp_path, how, caplog):
  good, newer = make_state(step=4, seed=0), make_state(step=8, seed=1)
  with CheckpointManager(tmp_path, save_every=4) as ckpt:
    ckpt.save(4, good, {"pos": 4}, {"run": "a"})
    ckpt.save(8, newer, {"pos": 8}, {"run": "a"})
  _corrupt(tmp_path / "8", how)
  caplog.set_level(logging.WARNING)
  with CheckpointManager(tmp_path, save_every=4) as ckpt:
    assert ckpt.latest_step() == 8
    got = ckpt.restore_or_none(abstract_state())
    assert got.step == 4 and ckpt.last_restored_step == 4
    assert list(got.skipped) == [8] and "Error" in got.skipped[8]
    assert_states_equal(got.state, good)
    assert got.data_state == {"pos": 4}
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("step 8" in m and "cannot be restored" in m for m in warnings), warnings
    # The bad step is moved aside, so the run can write step 8 again and resume from it.
    moved = list((tmp_path / "corrupt").iterdir())
    assert [p.name.split("-")[0] for p in moved] == ["8"]
    assert (moved[0] / "RESTORE_ERROR.txt").read_text() == got.skipped[8]
    assert ckpt.all_steps() == [4]
    assert ckpt.save(8, newer, {"pos": 8}, {"run": "a"})
    again = ckpt.restore_latest(abstract_state())
    assert again.step == 8 and again.skipped == {}
    assert_states_equal(again.state, newer)
  # Damaged again at once (within the same second): quarantined beside the first, not an error.
  _corrupt(tmp_path / "8", how)
  with CheckpointManager(tmp_path, save_every=4) as ckpt:
    assert ckpt.restore_latest(abstract_state()).step == 4
  assert sorted(p.name.split("-")[0] for p in (tmp_path / "corrupt").iterdir()) == ["8", "8"]


@_IGNORE_CLOSED_LOOP
def test_overwritten_bytes_fail_the_integrity_check_and_fall_back(tmp_path, caplog):
  """Issue 15.1: 4 KB overwritten inside a compressed chunk decode without error (garbage or NaN
  values); the checksums saved with the step catch it and the previous step is used."""
  rng = np.random.default_rng(0)
  make = lambda k: {"w": jnp.asarray(rng.normal(size=(256, 512)), jnp.float32),  # noqa: E731
                    "m": jnp.asarray(rng.normal(size=(256, 512)), jnp.float32), "step": jnp.int32(k)}
  good, newer = make(4), make(8)
  with CheckpointManager(tmp_path, save_every=4) as ckpt:
    ckpt.save(4, good)
    ckpt.save(8, newer)
  # The array chunks live in the per-process OCDBT data files: the largest file of the item. Its
  # layout differs from save to save (sizes vary by tens of bytes), so 4 KB written at a fixed offset
  # sometimes hit bytes tensorstore cannot decode (a read error, also a fallback) instead of a
  # chunk's data: the offsets are tried from the middle on, each on a fresh copy of step 8, until the
  # damage decodes silently, which is the case the checksums exist for.
  pristine = tmp_path.parent / f"{tmp_path.name}-step8"
  shutil.copytree(tmp_path / "8", pristine)
  victim = max((p for p in (tmp_path / "8" / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  relative, size = victim.relative_to(tmp_path / "8"), victim.stat().st_size
  caplog.set_level(logging.WARNING)
  abstract = jax.eval_shape(lambda: good)
  for offset in range(size // 2, size // 2 + 8 * 4096, 4096):
    shutil.rmtree(tmp_path / "8", ignore_errors=True)
    shutil.copytree(pristine, tmp_path / "8")
    with open(tmp_path / "8" / relative, "r+b") as f:
      f.seek(offset)
      f.write(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with CheckpointManager(tmp_path, save_every=4) as ckpt:
      got = ckpt.restore_latest(abstract)
    assert got.step == 4 and list(got.skipped) == [8]   # every damage falls back to the previous step
    np.testing.assert_array_equal(np.asarray(got.state["w"]), np.asarray(good["w"]))
    if "Encountered error while reading" not in got.skipped[8]:
      break
  assert "do not match the checksums" in got.skipped[8], got.skipped[8]
  assert "state_checksums" not in got.meta
  assert any("step 8" in r.getMessage() and "checksums" in r.getMessage() for r in caplog.records)


@_IGNORE_CLOSED_LOOP
def test_all_steps_corrupt_raises_naming_each_step(tmp_path):
  with CheckpointManager(tmp_path, save_every=1, quarantine_corrupt=False) as ckpt:
    for s in (1, 2):
      ckpt.save(s, {"x": jnp.full((3,), s, jnp.float32)})
  for s in (1, 2):
    _corrupt(tmp_path / str(s), "delete")
  with CheckpointManager(tmp_path, quarantine_corrupt=False) as ckpt:
    with pytest.raises(CheckpointError, match=r"step 2: .*step 1: "):
      ckpt.restore_latest({"x": jax.ShapeDtypeStruct((3,), jnp.float32)})
    assert ckpt.all_steps() == [1, 2]  # nothing moved when quarantine is off


_TRAIN_SCRIPT = """
import sys, time
import jax, jax.numpy as jnp
from selfrl_jax.train.checkpoint import CheckpointManager
from selfrl_jax.train.preemption import PreemptionHandler

ckpt = CheckpointManager(sys.argv[1], save_every=5, max_to_keep=2)
state = {"counter": jnp.zeros((), jnp.int32), "rng": jax.random.key(0)}
step = 0
with PreemptionHandler() as preempt:
  print("ready", flush=True)
  while step < 2000:
    state = {"counter": state["counter"] + 1, "rng": state["rng"]}
    step += 1
    stop = preempt.should_stop(step)
    if stop or ckpt.should_save(step):
      ckpt.save(step, state, {"pos": step}, {"run": "sigterm"}, meta={"stopped": stop}, force=stop)
    print(f"step {step}", flush=True)
    if stop:
      break
    time.sleep(0.03)
ckpt.close()
print(f"stopped at {step} after {preempt.received}", flush=True)
"""


def test_sigterm_saves_current_step_and_exits_zero(tmp_path):
  proc = _popen(_TRAIN_SCRIPT, str(tmp_path / "ckpt"))
  try:
    _read_until(proc, "step 7")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == 0, err[-3000:]
  last = out.strip().splitlines()[-1]
  assert last.startswith("stopped at ") and last.endswith("after SIGTERM"), out
  stop_step = int(last.split()[2])
  assert 7 <= stop_step < 2000
  abstract = {"counter": jax.ShapeDtypeStruct((), jnp.int32),
              "rng": jax.eval_shape(lambda: jax.random.key(0))}
  with CheckpointManager(tmp_path / "ckpt") as ckpt:
    got = ckpt.restore_or_none(abstract)
    assert got.step == stop_step == ckpt.latest_step()
    assert int(got.state["counter"]) == stop_step
    assert got.data_state == {"pos": stop_step} and got.meta["stopped"] is True
    np.testing.assert_array_equal(jax.random.key_data(got.state["rng"]),
                                  jax.random.key_data(jax.random.key(0)))
    assert ckpt.all_steps()[-2] == 5 * ((stop_step - 1) // 5)  # last periodic save kept (keep-2)


_STUBBORN_SCRIPT = """
import time
from selfrl_jax.train.preemption import PreemptionHandler
with PreemptionHandler() as preempt:
  print("ready", flush=True)
  flagged = False
  for _ in range(3000):  # ignores the flag, like a step that hangs
    if preempt.should_stop() and not flagged:
      flagged = True
      print("flagged", flush=True)
    time.sleep(0.01)
print("exited normally", flush=True)
"""


def test_second_sigterm_kills_immediately():
  proc = _popen(_STUBBORN_SCRIPT)
  try:
    _read_until(proc, "ready")
    proc.send_signal(signal.SIGTERM)
    _read_until(proc, "flagged")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
  finally:
    proc.kill()
  assert proc.returncode == -signal.SIGTERM
  assert "exited normally" not in out


def test_sigint_sets_flag_then_second_raises_keyboard_interrupt():
  # Python's own Ctrl-C handler, also when the suite runs as a background job (SIGINT ignored).
  launcher = signal.signal(signal.SIGINT, signal.default_int_handler)
  before = signal.getsignal(signal.SIGINT)
  handler = PreemptionHandler(signals=[signal.SIGINT]).install()
  try:
    assert not handler.should_stop(step=1)  # no coordinator: sync point is False
    signal.raise_signal(signal.SIGINT)
    assert handler.should_stop() and handler.received == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
      signal.raise_signal(signal.SIGINT)
  finally:
    handler.uninstall()
    assert signal.getsignal(signal.SIGINT) is before
    signal.signal(signal.SIGINT, launcher)


def test_a_signal_the_launcher_ignores_stays_ignored():
  """nohup / a background job ignore SIGINT: the handler leaves it so, and no stop is requested."""
  launcher = signal.signal(signal.SIGINT, signal.SIG_IGN)
  handler = PreemptionHandler(signals=[signal.SIGINT]).install()
  try:
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    signal.raise_signal(signal.SIGINT)
    assert not handler.should_stop()
  finally:
    handler.uninstall()
    signal.signal(signal.SIGINT, launcher)


def test_restore_errors_are_one_short_line():
  """TensorStore errors carry a multi-kilobyte spec dump after the first line; a fresh user saw a
  60-line 'one-line' message. The fallback warning and the final error keep the first line."""
  from selfrl_jax.train.checkpoint import _short_error  # pylint: disable=protected-access
  dump = "Error reading chunk: data checksum mismatch [source locations='x.cc:1']\\nSee full TensorStore details: " + "{" * 5000
  short = _short_error(ValueError(dump))
  assert short == "ValueError: Error reading chunk: data checksum mismatch" and "\\n" not in short
  assert len(_short_error(RuntimeError("x" * 1000))) == 300

"""The host loop: bit-exact resume after SIGKILL, non-finite abort, config validation."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.tiny.grpo_arithmetic import get_config
from selfrl_jax.rewards import registry
from selfrl_jax.train.builders import ConfigError, validate_config
from selfrl_jax.train.loop import NonFiniteAbort, train
from selfrl_jax.train.metrics import read_jsonl
from selfrl_jax.train.preemption import EXIT_PREEMPTED
from selfrl_jax.train.step import make_train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--config.sft.steps=10", "--config.train.num_steps=8", "--config.train.checkpoint_every=2",
         "--config.train.eval_every=0", "--config.train.eval_size=128", "--config.train.progress=False",
         "--config.rl.prompts_per_step=8", "--config.rl.group_size=4", "--config.rl.micro_batch_size=16",
         "--config.rl.num_minibatches=2"]


def _train_cmd(workdir):
  return [sys.executable, os.path.join(REPO, "experiments", "train.py"),
          "--config=" + os.path.join(REPO, "configs", "tiny", "grpo_arithmetic.py"), f"--workdir={workdir}"] + FLAGS


def _train_rows(workdir):
  drop = ("time/", "tokens_per_s")
  rows = {}
  for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")):
    if "loss" in r:
      rows[r["step"]] = {k: v for k, v in r.items() if not k.startswith(drop)}
  return rows


def _state_files(workdir, step):
  """Raw parameter bytes of a checkpoint step, read back through orbax's own files."""
  import orbax.checkpoint as ocp
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  tree = ocp.PyTreeCheckpointer().restore(path)
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.slow
def test_sigkill_resume_is_bit_exact(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", SELFRL_CACHE=str(tmp_path / "cache"))
  reference, resumed = tmp_path / "reference", tmp_path / "resumed"
  subprocess.run(_train_cmd(reference), env=env, check=True, capture_output=True, timeout=400)
  proc = subprocess.Popen(_train_cmd(resumed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline:  # kill -9 once step 5 is logged (checkpoints exist at 2 and 4)
    if (resumed / "metrics.jsonl").exists() and any(r.get("step", 0) >= 5 for r in read_jsonl(resumed / "metrics.jsonl")):
      break
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  ckpt_steps = sorted(int(d) for d in os.listdir(resumed / "checkpoints") if d.isdigit())
  assert ckpt_steps and ckpt_steps[-1] < 8, ckpt_steps
  out = subprocess.run(_train_cmd(resumed), env=env, check=True, capture_output=True, text=True, timeout=400)
  summary = json.loads(out.stdout.strip().splitlines()[-1])
  assert summary["resumed_from"] == ckpt_steps[-1] and summary["compilations"] == 1
  a, b = _state_files(reference, 8), _state_files(resumed, 8)
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert _train_rows(reference) == _train_rows(resumed)


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", SELFRL_CACHE=str(tmp_path / "cache"))
  cmd = _train_cmd(tmp_path / "run") + ["--config.train.num_steps=1000", "--config.train.checkpoint_every=500"]
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  deadline = time.time() + 300
  metrics = tmp_path / "run" / "metrics.jsonl"
  while time.time() < deadline and not (metrics.exists() and any(r.get("step", 0) >= 3 for r in read_jsonl(metrics))):
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == EXIT_PREEMPTED  # stopped early and resumable, not "finished" (issue 15.3)
  summary = json.loads(out.strip().splitlines()[-1])
  assert summary["preempted"] is True
  saved = sorted(int(d) for d in os.listdir(tmp_path / "run" / "checkpoints") if d.isdigit())
  assert saved and 3 <= saved[-1] < 500  # the step it stopped at, not a periodic checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_during_the_warm_start_saves_it_and_the_rerun_resumes(tmp_path, sig):
  """Issue 15.2: SIGTERM in the SFT warm start used to exit silently (SIGINT: a traceback, exit
  130) and lose it. (SIGKILL: `test_interrupted_warm_start_resumes_bit_exact`'s crash case.)"""
  env = dict(os.environ, JAX_PLATFORMS="cpu", SELFRL_CACHE=str(tmp_path / "cache"))
  sft_steps = 100   # a periodic save comes every 2 steps: the signal lands long before the last
  cmd = _train_cmd(tmp_path / "run") + [f"--config.sft.steps={sft_steps}", "--config.train.num_steps=2"]
  # A suite started in the background (`nohup … &`) hands SIG_IGN for SIGINT down to the run, which
  # then rightly leaves it ignored: launch the run with the default disposition, as a terminal would
  # (set here and restored, not in a preexec_fn: forking a multithreaded JAX process is unsafe).
  launcher_sigint = signal.signal(signal.SIGINT, signal.SIG_DFL)
  try:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  finally:
    signal.signal(signal.SIGINT, launcher_sigint)
  warm = tmp_path / "run" / "warm_start"
  deadline = time.time() + 300
  while time.time() < deadline and not list(warm.glob("sft_*.partial/[0-9]*")):  # a periodic SFT save
    time.sleep(0.1)
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
  assert "Stopped early in the SFT warm start" in err and json.loads(out.strip().splitlines()[-1])["preempted"]
  assert "Traceback" not in err
  stopped = [int(p.name) for p in warm.glob("sft_*.partial/[0-9]*")]
  assert len(stopped) == 1 and 2 <= stopped[0] < sft_steps, stopped
  assert not list(warm.glob("sft_*[0-9a-f]/model.safetensors"))  # no finished warm start yet
  if sig == signal.SIGINT:
    return  # the same handler as SIGTERM: resuming is shown once
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
  assert out.returncode == 0, out.stderr[-2000:]
  assert f"resuming from step {stopped[0]} of {sft_steps}" in out.stderr
  assert list(warm.glob("sft_*[0-9a-f]/model.safetensors")) and not list(warm.glob("*.partial"))
  assert (tmp_path / "run" / "learning_curve.png").stat().st_size > 0  # issue 15.8, like reproduce.py


def _sft_demos(seed=0, batch=4, length=6, vocab=20):
  rng = np.random.default_rng(seed)
  while True:
    tokens = rng.integers(3, vocab, (batch, length)).astype(np.int32)
    yield {"tokens_BxS": tokens, "valid_BxS": np.ones(tokens.shape, bool),
           "loss_mask_BxS": np.arange(length)[None].repeat(batch, 0) >= length // 2}


def test_interrupted_warm_start_resumes_bit_exact(tmp_path):
  """A stop request after step 7 saves and raises; a crash after step 13 keeps the periodic save at
  10; each resumed run ends bit-identical to an uninterrupted one (the stream is replayed)."""
  from selfrl_jax.models.config import tiny_config
  from selfrl_jax.models.decoder import init_model
  from selfrl_jax.train.sft import WarmStartPreempted, train_sft
  kw = dict(steps=16, learning_rate=1e-2, progress=False, checkpoint_every=5)
  model = lambda: init_model(tiny_config(vocab_size=20, d_model=16, d_ff=32, n_heads=2, n_kv_heads=1, head_dim=8))  # noqa: E731
  want = nnx.state(train_sft(model(), _sft_demos(), **kw), nnx.Param)

  calls = iter(range(100))
  with pytest.raises(WarmStartPreempted, match="step 7"):
    train_sft(model(), _sft_demos(), checkpoint_dir=str(tmp_path / "a"), should_stop=lambda: next(calls) == 6, **kw)
  got = nnx.state(train_sft(model(), _sft_demos(), checkpoint_dir=str(tmp_path / "a"), **kw), nnx.Param)
  jax.tree.map(np.testing.assert_array_equal, got, want)

  def crashing(after):
    for i, demo in enumerate(_sft_demos()):
      if i == after:
        raise RuntimeError("environment died")
      yield demo
  with pytest.raises(RuntimeError, match="environment died"):
    train_sft(model(), crashing(13), checkpoint_dir=str(tmp_path / "b"), **kw)
  assert sorted(p.name for p in (tmp_path / "b").iterdir() if p.name.isdigit()) == ["10"]
  got = nnx.state(train_sft(model(), _sft_demos(), checkpoint_dir=str(tmp_path / "b"), **kw), nnx.Param)
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_nonfinite_steps_abort_with_checkpoint_intact(tmp_path, monkeypatch):
  monkeypatch.setitem(registry.REWARDS, "nan_for_test",
                      lambda stop_ids: lambda rollout, batch: jnp.full((rollout.batch_size,), jnp.nan))
  cfg = get_config()
  with cfg.unlocked():
    cfg.sft.steps, cfg.train.num_steps, cfg.train.progress = 0, 10, False
    cfg.rl.reward, cfg.train.max_nonfinite_in_row = "nan_for_test", 3
    cfg.train.eval_size, cfg.rl.prompts_per_step, cfg.rl.group_size, cfg.rl.micro_batch_size = 128, 4, 4, 16
  with pytest.raises(NonFiniteAbort, match="3 consecutive steps"):
    train(cfg, str(tmp_path))
  rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "nonfinite_skipped" in r]
  assert [r["nonfinite_skipped"] for r in rows] == [1, 1]  # the third step aborts before logging


def test_out_of_memory_names_the_fields_that_trade_memory(tmp_path, monkeypatch):
  from selfrl_jax.train import loop  # pylint: disable=import-outside-toplevel

  def make_oom_step(*args, **kwargs):
    real = make_train_step(*args, **kwargs)

    def step(state, batch):
      del state, batch
      raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 70393221936 bytes.")
    return dataclasses.replace(real, mode="fused", fused=step)
  monkeypatch.setattr(loop, "make_train_step", make_oom_step)
  cfg = get_config()
  with cfg.unlocked():
    cfg.sft.steps, cfg.train.num_steps, cfg.train.progress, cfg.train.eval_every = 0, 2, False, 0
    cfg.train.eval_size, cfg.rl.prompts_per_step, cfg.rl.group_size, cfg.rl.micro_batch_size = 128, 4, 4, 16
  with pytest.raises(MemoryError, match=r"allocating 70393221936 bytes.*rl.micro_batch_size.*model.remat=True"):
    train(cfg, str(tmp_path))


def test_a_remat_policy_without_remat_warns(caplog):
  cfg = get_config()
  cfg.model.remat_policy = "dots_with_no_batch_dims_saveable"
  validate_config(cfg)
  assert "config.model.remat_policy: 'dots_with_no_batch_dims_saveable' has no effect while model.remat is False" in caplog.text
  caplog.clear()
  cfg.model.remat = True
  validate_config(cfg)
  assert "remat_policy" not in caplog.text


@pytest.mark.parametrize("field,value,message", [
    ("rl.num_minibatches", 3, "not divisible by num_minibatches=3"),
    ("rl.micro_batch_size", 48, "not divisible by micro_batch_size=48"),
    ("rl.advantage", "ppo", "rl.advantage"),
    ("rl.group_size", 1, r"config.rl.group_size: rl.advantage='grpo' compares rollouts .* every advantage is 0"),
    ("rl.kl_estimator", "k1", r"config.rl.kl_estimator: k1 .* zero expected gradient"),
    ("rl.algorithm", "ppo", r"config.rl.algorithm: unknown algorithm 'ppo'; available: \[.*'grpo'.*'score'"),
    ("sft.task_params", {"digits": 1}, r"config.sft.task_params: Unknown arithmetic config fields \['digits'\]"),
    ("sft.task_params", {"num_digits": 0}, "config.sft.task_params: arithmetic: num_digits must be >= 1"),
    ("sft.task_params", {"seed": 3}, "config.sft.task_params: may not override seed or splits"),
    ("model.param_dtype", "bfloat16", r"config.model.param_dtype: 'bfloat16' weights cannot take updates of optim.learning_rate=1e-06"),
    ("model.remat_policy", "dots_saveable", r"config.model.remat_policy: 'dots_saveable' is not one of \['dots_with_no_batch_dims_saveable', 'nothing_saveable'\]"),
])
def test_inconsistent_config_names_the_field(field, value, message):
  cfg = get_config()
  with cfg.unlocked():
    section, name = field.split(".")
    cfg[section][name] = value
    if name == "kl_estimator":
      cfg.rl.kl_coef = 0.04
    if name == "param_dtype":
      cfg.optim.learning_rate = 1e-6
  with pytest.raises(ConfigError, match=message):
    validate_config(cfg)


def test_a_prompt_buffer_no_eval_prompt_fits_fails_before_the_warm_start(tmp_path):
  cfg = get_config()
  with cfg.unlocked():
    cfg.task.data_dir = str(tmp_path / "data")
    cfg.sft.steps, cfg.rl.max_prompt_len = 10, 3
    cfg.train.progress = False
  with pytest.raises(ConfigError, match=r"config.train.eval_size: .* rl.max_prompt_len=3 tokens"):
    train(cfg, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "warm_start").exists()


def test_bfloat16_weights_round_small_updates_away():
  """The premise of the param_dtype check: optax adds an update in the weight's dtype."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  w = {"w": jnp.asarray([0.02, 0.3], jnp.bfloat16)}
  moved = optax.apply_updates(w, {"w": jnp.full((2,), 1e-6, jnp.float32)})
  assert (moved["w"] == w["w"]).all()
  assert (optax.apply_updates(w, {"w": jnp.full((2,), 1e-3, jnp.float32)})["w"][0] != w["w"][0])


def test_sft_task_params_give_demonstrations_outside_the_rl_eval_splits(tmp_path):
  """`sft.task_params` warm-starts on another distribution of the same task (here 1-2 digits for a
  2-digit RL set, so the two overlap) and still never shows an RL valid/test problem."""
  from selfrl_jax.train import builders
  cfg = get_config()
  with cfg.unlocked():
    cfg.task.data_dir = str(tmp_path)
    cfg.task.train_size, cfg.task.valid_size, cfg.task.test_size = 400, 256, 256
    cfg.sft.task_params = {"min_digits": 1}
  validate_config(cfg)
  train_source, valid_source, test_source = builders.build_sources(cfg)
  sft_source = builders.build_sft_source(cfg, train_source)
  sft_prompts = {sft_source[i]["prompt"] for i in range(len(sft_source))}
  held_out = {src[i]["prompt"] for src in (valid_source, test_source) for i in range(len(src))}
  one_digit = [p for p in sft_prompts if any(len(t) == 1 for t in p.replace("=", " ").replace("+", " ").split())]
  assert len(sft_source) == 400 and one_digit, "the overrides reach the demonstrations"
  assert not sft_prompts & held_out
  assert builders.build_sft_source(get_config(), train_source) is train_source


def test_other_algorithms_section_is_rejected():
  """A GRPO config carrying config.score would silently ignore it: validation names the section."""
  from configs.common import get_base_config
  cfg = get_config()
  assert "score" not in cfg
  with cfg.unlocked():
    cfg.score = get_base_config("score").score
  with pytest.raises(ConfigError, match="config.score: is not a shared section"):
    validate_config(cfg)


def test_batch_not_divisible_by_devices():
  cfg = get_config()
  with cfg.unlocked():
    cfg.rl.prompts_per_step, cfg.rl.micro_batch_size = 12, 32
  with pytest.raises(ConfigError, match="rl.prompts_per_step.*8 devices"):
    validate_config(cfg, num_devices=8)


def test_unknown_key_and_wrong_type_fail_on_the_command_line(tmp_path):
  base = [sys.executable, os.path.join(REPO, "experiments", "train.py"),
          "--config=" + os.path.join(REPO, "configs", "tiny", "grpo_arithmetic.py"), f"--workdir={tmp_path}"]
  out = subprocess.run(base + ["--config.rl.lerning_rate=0.1"], capture_output=True, text=True, timeout=120)
  # Issue 15.6: one line with the full dotted path and the field meant, not a 53-line traceback.
  assert out.returncode == 2 and out.stderr.strip().splitlines() == [
      "error: config.rl.lerning_rate: no such field in config.rl; did you mean config.optim.learning_rate "
      "or config.sft.error_rate or config.sft.learning_rate?"]
  out = subprocess.run(base + ["--config.rl.group_size=1"], capture_output=True, text=True, timeout=120)
  assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith("error: config.rl.group_size: ")
  assert "Traceback" not in out.stderr
  out = subprocess.run([sys.executable, base[1], "--config=configs/tiny/nope.py", "--workdir=/tmp/x"],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
  assert out.returncode == 2 and out.stderr.strip().splitlines() == [
      f"error: --config=configs/tiny/nope.py: no such file 'configs/tiny/nope.py' (relative paths start at {REPO})"]
  out = subprocess.run(base + ["--config.rl.group_size=eight"], capture_output=True, text=True, timeout=120)
  assert out.returncode == 2 and out.stderr.strip().splitlines() == [
      "error: flag --config.rl.group_size=eight: invalid literal for int() with base 10: 'eight'"]


def test_response_buffer_shorter_than_every_answer_is_refused():
  """Issue 15.6: rl.max_new_tokens=2 on 2-digit sums (answers of 3-4 tokens with EOS) used to run
  200 steps with every completion clipped."""
  from selfrl_jax.train import builders
  cfg = get_config()
  _, tok = builders.build_model(cfg)
  train_source = builders.build_sources(cfg)[0]
  builders.check_answers_fit(cfg, tok, train_source)  # the shipped config fits
  with cfg.unlocked():
    cfg.rl.max_new_tokens = 2
  with pytest.raises(ConfigError, match=r"config.rl.max_new_tokens: .*up to 4 tokens.*set it to >= 4"):
    builders.check_answers_fit(cfg, tok, train_source)


@pytest.mark.parametrize("policy,expected", [("keep", [1.0, 1.0]), ("zero", [1.0, 0.0])])
def test_truncated_reward_knob(monkeypatch, policy, expected):
  """rl.truncated_reward: a response that never emitted a stop token keeps its reward (keep) or
  gets 0 (zero, DAPO's overlong choice), whatever the verifier says about its text."""
  from selfrl_jax.rollouts.two_turn import response_view
  from selfrl_jax.train import builders
  monkeypatch.setitem(registry.REWARDS, "one_for_test", lambda stop_ids: lambda r, b: jnp.ones((r.batch_size,)))
  cfg = get_config()
  with cfg.unlocked():
    cfg.rl.reward, cfg.rl.truncated_reward = "one_for_test", policy
  validate_config(cfg)
  reward_fn = builders.build_reward(cfg, builders.build_model(cfg)[1], None)
  tokens = jnp.ones((2, 3), jnp.int32)
  rollout = response_view(tokens, jnp.ones((2, 3), bool), jnp.asarray([True, False]))
  np.testing.assert_array_equal(np.asarray(reward_fn(rollout, None)), expected)
  with cfg.unlocked():
    cfg.rl.truncated_reward = "mask"
  with pytest.raises(ConfigError, match="config.rl.truncated_reward"):
    validate_config(cfg)


def _tree_snapshot(root):
  """{relative path: (size, mtime_ns, sha256)} of every file and directory under root."""
  import hashlib
  out = {}
  for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames + filenames:
      path = os.path.join(dirpath, name)
      st = os.stat(path)
      digest = hashlib.sha256(open(path, "rb").read()).hexdigest() if name in filenames else "dir"
      out[os.path.relpath(path, root)] = (st.st_size if name in filenames else 0, st.st_mtime_ns, digest)
  return out


def test_eval_is_read_only_uses_the_saved_config_and_names_the_field(tmp_path):
  """Issue 15.4: eval.py created checkpoints/ in a missing path, moved steps it could not restore
  into checkpoints/corrupt/ and ignored the saved config (a 93-line Orbax tree diff)."""
  cfg = get_config()
  with cfg.unlocked():
    cfg.sft.steps, cfg.train.num_steps, cfg.train.progress, cfg.train.eval_every = 0, 2, False, 0
    cfg.train.eval_size, cfg.rl.prompts_per_step, cfg.rl.group_size, cfg.rl.micro_batch_size = 128, 4, 4, 16
    cfg.model.n_layers = 1
  train(cfg, str(tmp_path / "run"))
  before = _tree_snapshot(tmp_path / "run")
  base = [sys.executable, os.path.join(REPO, "experiments", "eval.py"), f"--workdir={tmp_path / 'run'}"]
  out = subprocess.run(base, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert json.loads(out.stdout.strip().splitlines()[-1])["step"] == 2  # the saved 1-layer config, no --config
  # The shipped config has 4 layers: the message names the field, and nothing is moved aside.
  out = subprocess.run(base + ["--config=" + os.path.join(REPO, "configs", "tiny", "grpo_arithmetic.py")],
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 2 and "model.n_layers: saved 1, now 4" in out.stderr.strip().splitlines()[-1], out.stderr[-2000:]
  assert _tree_snapshot(tmp_path / "run") == before
  out = subprocess.run(base[:2] + [f"--workdir={tmp_path / 'missing'}"], capture_output=True, text=True, timeout=120)
  assert out.returncode == 2 and "no checkpoint directory" in out.stderr and not (tmp_path / "missing").exists()
  # A quick look at fewer prompts than the run's eval batch (128) picks a batch that divides it.
  out = subprocess.run(base + ["--eval_size=16"], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and json.loads(out.stdout.strip().splitlines()[-1])["step"] == 2, out.stderr[-2000:]
  # Sampling from the trained run: its config, its newest parameters, its raw-prompt format.
  out = subprocess.run([sys.executable, os.path.join(REPO, "experiments", "generate.py"), f"--model={tmp_path / 'run'}",
                        "--prompt=12+30=", "--max_new_tokens=4"], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "restored step 2 of the run" in out.stdout and "=== 12+30=" in out.stdout
  assert _tree_snapshot(tmp_path / "run") == before


def test_a_shared_warm_start_cache_builds_once_under_concurrent_runs(tmp_path):
  """Issue 15.5: the runs of an ablation share `train.warm_start_cache`; two starting together with
  the same settings train the warm start once (the other waits and reuses it)."""
  import threading
  from selfrl_jax.models.config import tiny_config
  from selfrl_jax.models.decoder import init_model
  from selfrl_jax.train.sft import cached_warm_start
  calls = []

  def build(model, checkpoint_dir):
    calls.append(checkpoint_dir)
    time.sleep(0.5)
    return model
  make = lambda: init_model(tiny_config(vocab_size=20, d_model=16, d_ff=32, n_heads=2, n_kv_heads=1, head_dim=8))  # noqa: E731
  results = [None, None]
  threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, cached_warm_start(make(), str(tmp_path), {"a": 1}, build)))
             for i in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(calls) == 1
  jax.tree.map(np.testing.assert_array_equal, nnx.state(results[0], nnx.Param), nnx.state(results[1], nnx.Param))
  assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [os.path.basename(calls[0])[:-len(".partial")]]


def test_a_second_run_on_a_busy_workdir_is_refused(tmp_path):
  """A fresh user started the same command twice on one workdir: both ran and wrote every metrics
  row twice. The second now stops at once, naming the holder."""
  import fcntl
  with open(tmp_path / ".run.lock", "a+") as held:
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    held.write("pid 12345 on elsewhere")
    held.flush()
    with pytest.raises(ConfigError, match=r"workdir .* is in use by another run \(pid 12345 on elsewhere\)"):
      train(get_config(), str(tmp_path))
  assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock"]  # nothing was built or written


def test_a_damaged_cached_warm_start_is_rebuilt_not_reused(tmp_path, caplog):
  """A fresh user overwrote 4 KB of a cached model.safetensors: every run sharing the cache reused it
  silently and aborted on non-finite updates. Now the manifest check moves it aside and rebuilds."""
  from selfrl_jax.models.config import tiny_config
  from selfrl_jax.models.decoder import init_model
  from selfrl_jax.train.sft import cached_warm_start
  calls = []

  def build(model, checkpoint_dir):
    calls.append(checkpoint_dir)
    return model
  make = lambda: init_model(tiny_config(vocab_size=20, d_model=16, d_ff=32, n_heads=2, n_kv_heads=1, head_dim=8))  # noqa: E731
  good = nnx.state(cached_warm_start(make(), str(tmp_path), {"a": 1}, build), nnx.Param)
  [directory] = [p for p in tmp_path.iterdir() if p.is_dir()]
  weights = directory / "model.safetensors"
  data = bytearray(weights.read_bytes())
  data[len(data) // 2:len(data) // 2 + 64] = b"\xff" * 64
  weights.write_bytes(bytes(data))
  again = nnx.state(cached_warm_start(make(), str(tmp_path), {"a": 1}, build), nnx.Param)
  assert len(calls) == 2  # rebuilt, not reused
  jax.tree.map(np.testing.assert_array_equal, good, again)
  assert "model.safetensors differs from the recorded SHA-256" in caplog.text
  assert len(list(tmp_path.glob("sft_*.damaged-*"))) == 1
  remat = make()
  remat.remat_blocks, remat.remat_policy = True, "dots_with_no_batch_dims_saveable"
  loaded = cached_warm_start(remat, str(tmp_path), {"a": 1}, build)
  assert (loaded.remat_blocks, loaded.remat_policy) == (True, "dots_with_no_batch_dims_saveable")  # the run's static choices survive
  assert len(calls) == 2  # the rebuilt one is intact and reused


def test_warm_start_key_includes_the_base_weights(tmp_path):
  from selfrl_jax.train import builders
  cfg = get_config()
  assert builders.base_weights_fingerprint(cfg) == {"source": "tiny"}
  (tmp_path / "a.gguf").write_bytes(b"x" * 10)
  with cfg.unlocked():
    cfg.model.source = str(tmp_path / "a.gguf")
  first = builders.base_weights_fingerprint(cfg)
  (tmp_path / "a.gguf").write_bytes(b"y" * 11)  # other weights at the same path
  assert builders.base_weights_fingerprint(cfg) != first

r"""Self-Guide's agent episodes: episodes per second, and where an iteration's time goes.

  python -m experiments.benchmarks.bench_self_guide --sides=grid,grid_host --repeats=3
  python -m experiments.benchmarks.bench_self_guide --sides=twx --twx_model=smollm2 --steps=3 --repeats=1
  python -m experiments.benchmarks.bench_self_guide --sides=grid --history_window=2     # a window's cost

Sides (each in its own process, `--repeats` processes per side):
  grid       the grid toy (configs/self_guide/tiny_grid.py) with its JAX environment: the whole
             episode, environment included, inside the compiled train step.
  grid_host  the same grid as a numpy environment behind host callbacks (`envs.base.CallbackEnv`),
             the obvious alternative to a JAX environment.
  twx        TextWorldExpress coin (configs/self_guide/textworld_express_cpu.py): Java games, one
             process per episode row; `--twx_model=tiny` keeps SmolLM2's vocabulary under a tiny
             random decoder (the environment's share), `smollm2` is the real policy.

Per side: `--steps` RL iterations through `train()` (no evaluation, no warm start); the first
compiles and is left out. Reported: the median iteration (s), episodes per second (P x G episodes
per iteration), and its split into
  rollout      one jitted `algorithm.rollout` on a training batch (generation + environment), timed
               apart after training, median of 3 calls;
  environment  for host environments the wall time inside their reset and step calls during those
               rollouts (`CallbackEnv.counters["host_seconds"]`); for the JAX grid, a jitted loop of
               max_steps environment steps on random actions;
  update       the iteration minus the rollout (rewards, advantages, log-probs, backward, optimizer).
Run on an idle machine.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

from absl import app, flags

from experiments.benchmarks.sides import passthrough_flags, spawn, summary

_SIDES = flags.DEFINE_list("sides", ["grid", "grid_host"], "Sides to measure: grid, grid_host, twx.")
_SIDE = flags.DEFINE_string("side", None, "Internal: run one side in this process and print JSON.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Processes per side.")
_STEPS = flags.DEFINE_integer("steps", 6, "RL iterations per process (the first, compiling, is left out).")
_WINDOW = flags.DEFINE_integer("history_window", None, "self_guide.history_window for every side (None: the config's).")
_TWX_MODEL = flags.DEFINE_enum("twx_model", "tiny", ["tiny", "smollm2"], "twx: policy (tiny: SmolLM2's vocabulary, tiny decoder).")


def _config(side: str):
  from experiments.arms import load_config_module  # pylint: disable=import-outside-toplevel
  root = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "self_guide")
  if side.startswith("grid"):
    cfg = load_config_module(os.path.join(root, "tiny_grid.py")).get_config("sg_gr")
  else:
    cfg = load_config_module(os.path.join(root, "textworld_express_cpu.py")).get_config("sg_gr")
  with cfg.unlocked():
    cfg.sft.steps = 0
    cfg.train.num_steps, cfg.train.eval_every, cfg.train.log_every, cfg.train.checkpoint_every = _STEPS.value, 0, 1, 0
    cfg.train.eval_size = cfg.train.eval_batch_size
    cfg.train.progress = False
    if side == "grid_host":
      cfg.self_guide.env = "grid_host"
    if _WINDOW.value is not None:
      cfg.self_guide.history_window = _WINDOW.value
    if side == "twx" and _TWX_MODEL.value == "tiny":
      cfg.model.tokenizer, cfg.model.source = cfg.model.source, "tiny"
      cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads, cfg.model.n_kv_heads, cfg.model.d_ff = 64, 2, 4, 2, 256
  return cfg


def _env_only_seconds(env, cfg, batch) -> float:
  """The JAX grid alone: max_steps jitted steps on random actions (median of 3 after a warm-up)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  g, h, n = cfg.rl.group_size, cfg.self_guide.max_steps, cfg.rl.max_new_tokens
  b = batch.prompt_tokens_PxT.shape[0] * g

  @jax.jit
  def episode(key):
    state = env.reset(batch, g, key)

    def body(state, k):
      actions = jax.random.randint(k, (b, n), 0, 100)
      state, out = env.step(state, actions, jnp.ones((b, n), bool), k)
      return state, out.reward_B
    return jax.lax.scan(body, state, jax.random.split(key, h))[1].sum()

  times = []
  for i in range(4):
    start = time.perf_counter()
    jax.block_until_ready(episode(jax.random.key(i)))
    times.append(time.perf_counter() - start)
  return statistics.median(times[1:])


def _run_side(side: str) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from selfrl_jax.train import builders  # pylint: disable=import-outside-toplevel
  from selfrl_jax.train.loop import train  # pylint: disable=import-outside-toplevel
  from selfrl_jax.train.metrics import read_jsonl  # pylint: disable=import-outside-toplevel
  cfg = _config(side)
  with tempfile.TemporaryDirectory() as workdir:
    train(cfg, workdir)
    rows = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "time/step_s" in r]
  step_s = statistics.median(r["time/step_s"] for r in rows[1:])
  episodes = cfg.rl.prompts_per_step * cfg.rl.group_size

  model, tok = builders.build_model(cfg)
  train_source, _, _ = builders.build_sources(cfg)
  algorithm = builders.build_algorithm(cfg, tok, train_source)
  batch = next(builders.prompt_batches(cfg, train_source, tok, batch_size=cfg.rl.prompts_per_step, seed=0))
  graphdef, params = nnx.split(model)
  rollout = jax.jit(lambda p, b, k: algorithm.rollout(nnx.merge(graphdef, p), b, k))
  jax.block_until_ready(rollout(params, batch, jax.random.key(0)))
  counters = getattr(algorithm.env, "counters", {})
  before = counters.get("host_seconds", 0.0)
  times = []
  for i in range(3):
    start = time.perf_counter()
    jax.block_until_ready(rollout(params, batch, jax.random.key(i + 1)))
    times.append(time.perf_counter() - start)
  rollout_s = statistics.median(times)
  if "host_seconds" in counters:
    env_s = (counters["host_seconds"] - before) / 3
  else:
    env_s = _env_only_seconds(algorithm.env, cfg, batch)
  close = getattr(getattr(algorithm.env, "host", None), "close", None)
  if close:
    close()
  return {"step_s": step_s, "episodes_per_s": episodes / step_s, "rollout_s": rollout_s, "env_s": env_s,
          "update_s": step_s - rollout_s, "episodes": episodes, "max_steps": cfg.self_guide.max_steps}


def main(argv):
  del argv
  if _SIDE.value:
    print(json.dumps(_run_side(_SIDE.value)))
    return
  extra = passthrough_flags(("--side=", "--sides=", "--repeats="))
  for side in _SIDES.value:
    runs = [spawn("experiments.benchmarks.bench_self_guide", side, extra) for _ in range(_REPEATS.value)]
    print(f"{side}: {runs[0]['episodes']} episodes of <= {runs[0]['max_steps']} steps per iteration")
    for key, fmt in (("episodes_per_s", ".2f"), ("step_s", ".3f"), ("rollout_s", ".3f"), ("env_s", ".4f"),
                     ("update_s", ".3f")):
      print(f"  {key:15s} {summary([r[key] for r in runs], fmt)}")


if __name__ == "__main__":
  app.run(main)

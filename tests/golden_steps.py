"""Golden train steps: a few fixed-seed RL iterations per algorithm arm, digested for exact comparison.

    python tests/golden_steps.py --record     # writes tests/golden/train_steps.json (run before a refactor)

`tests/test_golden_steps.py` replays every case in fused and split mode and asserts the parameters
(sha256 of their bytes) and every metric are bit-identical to the recorded values, so a refactor of
the step, the algorithms or the rollouts that changes any number is caught.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import platform
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GOLDEN = pathlib.Path(__file__).resolve().parent / "golden" / "train_steps.json"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs.common import get_base_config  # noqa: E402

P, G, T, N, A, STEPS = 4, 4, 6, 5, 4, 3
MODEL = {"d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "d_ff": 64}

# name -> (algorithm, overrides of config sections); every SCoRe arm of configs/score/tiny_arithmetic.py.
_SCORE = {"score.stage1_steps": 2, "score.beta1": 0.01, "score.beta2": 0.1}
CASES = {
    "grpo": ("grpo", {"rl.num_epochs": 2, "rl.num_minibatches": 2, "rl.micro_batch_size": 4}),
    "dr_grpo": ("grpo", {"rl.advantage": "dr_grpo", "rl.loss_agg": "seq_mean_token_sum_norm", "rl.kl_coef": 0.05}),
    "rloo": ("grpo", {"rl.advantage": "rloo", "rl.micro_batch_size": 8}),
    "score": ("score", dict(_SCORE)),
    "score_single_turn": ("score", {**_SCORE, "score.multi_turn": False}),
    "score_naive_multi_turn": ("score", {**_SCORE, "score.use_stage1": False, "score.alpha": 0.0,
                                         "score.stage1_steps": 0}),
    "score_no_stage1": ("score", {**_SCORE, "score.use_stage1": False, "score.stage1_steps": 0}),
    "score_no_shaping": ("score", {**_SCORE, "score.alpha": 0.0}),
    "score_star": ("score", {**_SCORE, "score.use_stage1": True, "score.stage1_steps": 1,
                             "score.stage2_algo": "star"}),
}

# Every case fused; the split path (one program per run of device phases) once per algorithm family:
# fused == split is also asserted directly (test_extension_point, test_herl, test_parallel_train_step).
CASE_MODES = [(case, "fused") for case in CASES] + [("grpo", "split"), ("score", "split")]


def make_config(name: str):
  algorithm, overrides = CASES[name]
  c = get_base_config(algorithm)
  for k, v in MODEL.items():
    c.model[k] = v
  c.rl.prompts_per_step, c.rl.group_size = P, G
  c.rl.max_prompt_len, c.rl.max_answer_len, c.rl.max_new_tokens = T, A, N
  c.rl.micro_batch_size = P * G
  c.optim.learning_rate = 1e-2
  c.train.num_steps = 10
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = value
  return c


def digit_fraction_reward(tok):
  """A smooth jittable reward (fraction of digit tokens) so a random model gets non-zero advantages."""
  digits = jnp.asarray(tok.encode("0123456789"))

  def fn(rollout, batch):
    del batch
    is_digit = jnp.isin(rollout.response_tokens_BxN, digits) & rollout.response_valid_BxN
    return is_digit.sum(1) / jnp.maximum(rollout.response_valid_BxN.sum(1), 1)
  return fn


def make_batch():
  from selfrl_jax.data.batch import PromptBatch

  rs = np.random.RandomState(0)
  return PromptBatch(prompt_tokens_PxT=jnp.asarray(rs.randint(3, 40, (P, T)), jnp.int32),
                     prompt_valid_PxT=jnp.asarray(np.arange(T)[None] >= rs.randint(0, 3, (P, 1))),
                     prompt_len_P=jnp.full((P,), T, jnp.int32),
                     target_tokens_PxA=jnp.asarray(rs.randint(3, 40, (P, A)), jnp.int32),
                     target_len_P=jnp.full((P,), 2, jnp.int32), example_id_P=jnp.arange(P))


def digest(state, metrics) -> dict:
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(state.params):
    h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return {"params_sha256": h.hexdigest(),
          "param_sum": float(sum(np.asarray(x, np.float64).sum() for x in jax.tree.leaves(state.params))),
          "metrics": {k: float(np.asarray(v)) for k, v in sorted(metrics.items())}}


def run_case(name: str, mode: str) -> dict:
  """STEPS iterations of case `name` in `mode` ("fused" | "split"); returns the digest of the last one."""
  import dataclasses

  from selfrl_jax.train import builders
  from selfrl_jax.train.state import create_train_state, make_optimizer
  from selfrl_jax.train.step import make_train_step

  cfg = make_config(name)
  cfg.rl.mode = mode
  builders.validate_config(cfg, num_devices=1)
  model, tok = builders.build_model(cfg)
  algo = dataclasses.replace(builders.build_algorithm(cfg, tok), reward_fn=digit_fraction_reward(tok))
  tx = make_optimizer(cfg.optim)
  graphdef, state = create_train_state(model, tx, cfg.seed, keep_reference=algo.needs_reference,
                                       algorithm=algo)
  train_step = make_train_step(builders.build_update_settings(cfg, algo), algo, graphdef, tx)
  batch = make_batch()
  for _ in range(STEPS):
    state, metrics = train_step(state, batch)
  assert train_step.compilations() == (1 if mode == "fused" else 2), train_step.compilations()
  return digest(state, jax.device_get(metrics))


def machine() -> str:
  """CPU model, family / model numbers and vector extensions, the jaxlib version and XLA_FLAGS: XLA's
  CPU code (and so the last bits of every float) depends on them, and "AMD EPYC" alone names several
  generations, so exact bytes are only compared on the same kind of machine."""
  info = {"model name": platform.processor(), "cpu family": "?", "model": "?"}
  flags: set[str] = set()
  try:
    for line in open("/proc/cpuinfo"):
      key, _, value = (part.strip() for part in line.partition(":"))
      if key in info and info[key] in ("?", platform.processor()):
        info[key] = value
      elif key == "flags" and not flags:
        flags = set(value.split())
      if not line.strip():   # the first processor's block is enough
        break
  except OSError:
    pass
  vector = "+".join(f for f in ("avx2", "avx512f", "amx_tile") if f in flags) or "none"
  jaxlib = jax.lib.__version__ if hasattr(jax.lib, "__version__") else jax.__version__
  return (f"{info['model name']} (family {info['cpu family']} model {info['model']}, {vector}) | jaxlib {jaxlib}"
          f" | XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}")


if __name__ == "__main__":
  if "--record" not in sys.argv:
    raise SystemExit("usage: python tests/golden_steps.py --record")
  import conftest  # noqa: F401  (the tests' environment: CPU platform, XLA_FLAGS; set before the backend starts)
  out = {"machine": machine(), "cases": {}}
  for case, mode in CASE_MODES:
    out["cases"][f"{case}/{mode}"] = run_case(case, mode)
    print(case, mode, out["cases"][f"{case}/{mode}"]["params_sha256"][:12], flush=True)
  GOLDEN.parent.mkdir(exist_ok=True)
  GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")

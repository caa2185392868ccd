r"""SSRL-IF's two costs outside the policy: the host IFEval checks and the reward classifier.

  python -m experiments.benchmarks.bench_ssrl_if --part=verifier --responses=/tmp/ifeval.jsonl
  python -m experiments.benchmarks.bench_ssrl_if --part=rm_forward --config=configs/ssrl_if/ifeval.py \
      --config.rl.prompts_per_step=8 --config.rl.group_size=4 --config.ssrl_if.rm_width=256 \
      --metrics=/tmp/ssrl_real/metrics.jsonl

verifier: every (response, instruction) pair of IFEval's 541 prompts, strict, checked one by one
  in this process (`check_item`, the obvious way) against `InstructionVerifier` (the worker pool
  with a time limit that training uses; `--workers`). Responses come from an
  `eval.py --benchmark=ifeval --output=...` file (the model's real answers) or, without one, the
  prompts themselves. Reports responses/s and checks/s.
rm_forward: the classifier's forward alone at a config's reward shapes (B = prompts x group
  responses, K constraints, `ssrl_if.rm_width` tokens) against the median `time/step_s` of a run of
  that config (`--metrics`), e.g. the SmolLM2 run in configs/ssrl_if/README.md.

Each side runs in its own process, `--repeats` times; the median and the range are printed. Run on
an idle machine.
"""

from __future__ import annotations

import json
import statistics
import time

from absl import app, flags
from ml_collections import config_flags

from experiments.benchmarks.sides import passthrough_flags, spawn, summary

_PART = flags.DEFINE_enum("part", "verifier", ["verifier", "rm_forward"], "What to measure.")
_SIDE = flags.DEFINE_string("side", None, "Internal: run one side in this process and print JSON.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Processes per side.")
_RESPONSES = flags.DEFINE_string("responses", None, "verifier: eval.py --benchmark=ifeval --output JSONL.")
_WORKERS = flags.DEFINE_integer("workers", 2, "verifier: pool processes.")
_METRICS = flags.DEFINE_string("metrics", None, "rm_forward: metrics.jsonl of a run of --config.")
_CONFIG = config_flags.DEFINE_config_file("config", "configs/ssrl_if/ifeval.py", "rm_forward: the config.")
_TIMINGS = flags.DEFINE_integer("timings", 3, "rm_forward: timed forwards per process after the compiling one.")


def _verifier_side(side: str) -> dict:
  from selfrl_jax.data.benchmarks import load_ifeval  # pylint: disable=import-outside-toplevel
  from selfrl_jax.eval.ifeval import ifeval_constraints  # pylint: disable=import-outside-toplevel
  from selfrl_jax.rewards.instruction_following import InstructionVerifier, check_item  # pylint: disable=import-outside-toplevel
  records = list(load_ifeval())
  if _RESPONSES.value:
    with open(_RESPONSES.value) as f:
      responses = [row["response"] for row in map(json.loads, f) if "response" in row]
  else:
    responses = [r["prompt"] for r in records]
  pairs = [(resp, c) for resp, rec in zip(responses, records) for c in ifeval_constraints(rec, loose=False)]
  if side == "serial":
    check_item(*pairs[0])  # imports and langdetect's profiles load outside the timing
    start = time.perf_counter()
    for resp, c in pairs:
      check_item(resp, c)
    seconds = time.perf_counter() - start
  else:
    with InstructionVerifier(num_workers=_WORKERS.value) as pool:
      pool.check([pairs[0][0]] * _WORKERS.value, [pairs[0][1]] * _WORKERS.value)  # workers started and warm
      start = time.perf_counter()
      pool.check([r for r, _ in pairs], [c for _, c in pairs])
      seconds = time.perf_counter() - start
  return {"responses_per_s": len(responses) / seconds, "checks_per_s": len(pairs) / seconds,
          "seconds": seconds, "checks": len(pairs)}


def _rm_forward_side() -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from selfrl_jax.algos import ssrl_if_rm  # pylint: disable=import-outside-toplevel
  from selfrl_jax.train import builders  # pylint: disable=import-outside-toplevel
  cfg = _CONFIG.value
  model, _ = builders.build_model(cfg)
  rows = cfg.rl.prompts_per_step * cfg.rl.group_size * cfg.task.params.get("num_constraints", 5)
  width = cfg.ssrl_if.rm_width
  params = ssrl_if_rm.init_classifier(model.cfg, jax.random.key(0))
  graphdef = ssrl_if_rm.classifier_graphdef(model.cfg)
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, model.cfg.vocab_size, (rows, width)).astype(np.int32)
  valid = np.ones((rows, width), bool)

  @jax.jit
  def forward(params, tokens, valid):
    return ssrl_if_rm.rm_prob(nnx.merge(graphdef, params)(tokens, valid))

  jax.block_until_ready(forward(params, tokens, valid))
  times = []
  for _ in range(_TIMINGS.value):
    start = time.perf_counter()
    jax.block_until_ready(forward(params, tokens, valid))
    times.append(time.perf_counter() - start)
  return {"forward_s": statistics.median(times), "rows": rows, "width": width}


def _spawn(side: str, extra: list[str]) -> dict:
  return spawn("experiments.benchmarks.bench_ssrl_if", side, [f"--part={_PART.value}", *extra])


def main(argv):
  del argv
  passthrough = passthrough_flags(("--part", "--side", "--repeats"))
  if _SIDE.value:
    print(json.dumps(_verifier_side(_SIDE.value) if _PART.value == "verifier" else _rm_forward_side()))
    return
  if _PART.value == "verifier":
    for side in ("serial", "pool"):
      runs = [_spawn(side, passthrough) for _ in range(_REPEATS.value)]
      print(f"{side:>7} ({runs[0]['checks']} checks): responses/s {summary([r['responses_per_s'] for r in runs])}; "
            f"checks/s {summary([r['checks_per_s'] for r in runs])}")
    return
  runs = [_spawn("forward", passthrough) for _ in range(_REPEATS.value)]
  forward = [r["forward_s"] for r in runs]
  print(f"classifier forward at {runs[0]['rows']} x {runs[0]['width']} tokens: s {summary(forward)}")
  if _METRICS.value:
    with open(_METRICS.value) as f:
      step = [r["time/step_s"] for r in map(json.loads, f) if "time/step_s" in r][1:]
    print(f"run step s {summary(step)}; classifier share {statistics.median(forward) / statistics.median(step):.1%}")


if __name__ == "__main__":
  app.run(main)

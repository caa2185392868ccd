r"""Evaluate the newest good checkpoint of a workdir (held-out split, the algorithm's evaluation decoding: greedy
unless its config says otherwise), read-only; or any model on IFEval.

  python experiments/eval.py --workdir=/tmp/grpo                      # the config the run was trained with
  python experiments/eval.py --workdir=/tmp/score --config=configs/score/tiny_arithmetic.py \
      --config.score.n_attempts_eval=4       # SCoRe: Acc@t1..t4, Delta(t1,t2), i->c, c->i, edits
  python experiments/eval.py --benchmark=ifeval --model=smollm2 --output=/tmp/ifeval.jsonl
  python experiments/eval.py --benchmark=ifeval --workdir=/tmp/ssrl_if   # a trained run's newest checkpoint

IFEval (`--benchmark=ifeval`): the 541 prompts of ../shared/data/ifeval as one user turn of the chat
template, greedy, scored prompt- and instruction-level, strict and loose (selfrl_jax/eval/ifeval.py).
`--model` is a packaged name ("smollm2"), a .gguf file or a Hugging Face directory; `--output`
writes one JSON line per prompt (prompt, response, cut_off, instruction_id_list and the strict and
loose verdict of each instruction) and a last line with the summary and
the accuracy per instruction type.

By default the config saved with the checkpoint is used; `--config` (with overrides) replaces it,
and every field that differs from the saved one is reported before evaluating. Nothing in the
workdir is created, moved or modified. Prints one JSON line: the algorithm's evaluation metrics
(GRPO: accuracy; SCoRe: the self-correction metrics of score.md §2.4).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
import tqdm  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from experiments import cli  # noqa: E402
from selfrl_jax.train.builders import ConfigError  # noqa: E402
from selfrl_jax.train.loop import make_evaluator  # noqa: E402
from selfrl_jax.train.restore import RestoredRun, restore_run  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Optional: evaluate with this config instead of the "
                                          "one saved with the checkpoint.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/.")
_EVAL_SIZE = flags.DEFINE_integer("eval_size", None, "Override train.eval_size.")
_BENCHMARK = flags.DEFINE_enum("benchmark", "heldout", ["heldout", "ifeval"],
                               "heldout: the config's held-out split; ifeval: the 541 IFEval prompts.")
_MODEL = flags.DEFINE_string("model", None, "IFEval only: a packaged name, .gguf file or HF directory "
                             "(instead of --workdir).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 1024, "IFEval only: response buffer.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "IFEval only: prompts decoded together.")
_LIMIT = flags.DEFINE_integer("limit", None, "IFEval only: the first N prompts (a quick look, not the score).")
_OUTPUT = flags.DEFINE_string("output", None, "IFEval only: JSONL of per-prompt responses and verdicts.")
_DATA = flags.DEFINE_string("data_root", None, "IFEval only: the shared data folder (default ../shared/data).")
_ANSWER = flags.DEFINE_string("answer_pattern", "", "IFEval only: regex whose group 1 is the answer the checkers "
                              "read (a thinking model: '</think>\\n\\n(.*)'); no match fails every instruction "
                              "(summary: answered_frac). '' = the whole response. Not read from a --workdir run's "
                              "config: pass the pattern it trained with.")


def _restore(workdir: str) -> RestoredRun:
  def edit(cfg):
    if _EVAL_SIZE.value:
      cfg.train.eval_size = _EVAL_SIZE.value
      # A quick look at 16 prompts must not fail on the run's batch of 128: the largest batch that divides it.
      cfg.train.eval_batch_size = math.gcd(_EVAL_SIZE.value, cfg.train.eval_batch_size)
  run = restore_run(workdir, _CONFIG.value, edit)
  if run.changes:
    print(f"evaluating with a config that differs from the saved one: {run.changes}", file=sys.stderr)
  return run


def _ifeval() -> None:
  from selfrl_jax.data.benchmarks import load_ifeval  # pylint: disable=import-outside-toplevel
  from selfrl_jax.eval import ifeval  # pylint: disable=import-outside-toplevel
  from selfrl_jax.rewards.host import answer_pattern_problem, answer_span  # pylint: disable=import-outside-toplevel
  from selfrl_jax.models.loading import load_model  # pylint: disable=import-outside-toplevel
  if (_MODEL.value is None) == (_WORKDIR.value is None):
    raise ConfigError("--benchmark=ifeval takes exactly one of --model (a checkpoint) or --workdir (a run)")
  problem = answer_pattern_problem(_ANSWER.value)
  if problem:
    raise ConfigError(f"--answer_pattern={_ANSWER.value!r} {problem}")
  if _MODEL.value is not None:
    model, tok = load_model(_MODEL.value)
    source, step = _MODEL.value, None
  else:
    run = _restore(_WORKDIR.value)
    model, tok, source, step = run.model(), run.tokenizer, _WORKDIR.value, run.restored.step
  records = list(load_ifeval(_DATA.value))[:_LIMIT.value]
  start = time.perf_counter()
  bar = tqdm.tqdm(total=len(records), desc="IFEval", unit="prompt")
  responses, stopped = ifeval.generate_ifeval_responses(
      model, tok, records, max_new_tokens=_MAX_NEW.value, batch_size=_BATCH.value,
      progress=lambda done, total: bar.update(done - bar.n))
  bar.close()
  generate_s = time.perf_counter() - start
  spans = [answer_span(r, _ANSWER.value) for r in responses]
  answers = [a or "" for a in spans]
  report = ifeval.ifeval_report(answers, records)
  summary = {"model": source, "step": step, "prompts": len(records),
             **{k: round(report[k], 4) for k in ifeval.METRICS},
             "cut_off_frac": round(1 - sum(stopped) / len(stopped), 4), "generate_s": round(generate_s, 1),
             "total_s": round(time.perf_counter() - start, 1), "max_new_tokens": _MAX_NEW.value,
             "checker_errors": report["checker_errors"], "checker_timeouts": report["checker_timeouts"],
             "answer_pattern": _ANSWER.value, "answered_frac": round(sum(a is not None for a in spans) / len(spans), 4)}
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      for rec, response, stop, verdict in zip(records, responses, stopped, report["per_prompt"]):
        f.write(json.dumps({"prompt": rec["prompt"], "response": response, "cut_off": not stop, **verdict}) + "\n")
      f.write(json.dumps({"summary": summary, "per_instruction": report["per_instruction"]}) + "\n")
  print(json.dumps(summary))


def main(argv):
  del argv
  if _BENCHMARK.value == "ifeval":
    return _ifeval()
  if _WORKDIR.value is None:
    raise ConfigError("--workdir is required (the run to evaluate)")
  run = _restore(_WORKDIR.value)
  evaluator = make_evaluator(run.cfg, run.graphdef, run.tokenizer, run.test_source, run.cfg.train.eval_size)
  print(json.dumps({"step": run.restored.step, **evaluator(run.restored.state.params)}))


if __name__ == "__main__":
  cli.run(main)

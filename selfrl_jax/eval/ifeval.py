"""IFEval (Zhou et al. 2023): 541 prompts with verifiable instructions, scored four ways.

    report = ifeval_report(responses, records)      # records from data.benchmarks.load_ifeval()
    report["prompt_level_loose"]                     # SSRL-IF's headline "Pr.(L)"

- prompt level: a prompt counts when every one of its instructions is followed;
- instruction level: the fraction of all instructions followed;
- strict: the checker on the response; loose: any of IFEval's eight loose variants (first and/or
  last line dropped, `*` removed) — see `rewards.instruction_following`.

`generate_ifeval_responses` decodes the prompts as one user turn of the model's chat template
(no system prompt, greedy by default), every batch at one prompt width so one program compiles.
"""

from __future__ import annotations

import collections
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx

from selfrl_jax.data.pipeline import encode_prompt
from selfrl_jax.data.records import record_meta
from selfrl_jax.rewards.instruction_following import Constraint, InstructionVerifier
from selfrl_jax.sampling.sampler import Sampler, SamplingParams
from selfrl_jax.sampling.texts import bucket_width, generate_in_batches

METRICS = ("prompt_level_strict", "prompt_level_loose", "instruction_level_strict", "instruction_level_loose")


def ifeval_constraints(record: Mapping[str, Any], loose: bool) -> list[Constraint]:
  meta = record_meta(record)
  return [Constraint(i, kw, record["prompt"], loose) for i, kw in zip(meta["instruction_id_list"], meta["kwargs"])]


def ifeval_report(responses: Sequence[str], records: Sequence[Mapping[str, Any]],
                  verifier: InstructionVerifier | None = None) -> dict[str, Any]:
  """The four IFEval accuracies (fractions in [0, 1]), per-type accuracies and checker failures.

  Args:
    responses: one response per record, the text the model wrote (no prompt).
    records: IFEval records (`prompt`, meta `instruction_id_list` and `kwargs`).
    verifier: a running `InstructionVerifier` to reuse; one is started (and closed) otherwise.

  Returns:
    {"prompt_level_strict", "prompt_level_loose", "instruction_level_strict",
     "instruction_level_loose", "num_prompts", "num_instructions",
     "per_instruction": {id: {"strict", "loose", "count"}},
     "per_prompt": [{"instruction_id_list", "strict": [bool], "loose": [bool]}] (one per record),
     "checker_errors", "checker_timeouts"}.
    A checker that raised or timed out counts as not followed and is counted.
  """
  if len(responses) != len(records):
    raise ValueError(f"{len(responses)} responses for {len(records)} records")
  owned = verifier is None
  verifier = verifier or InstructionVerifier()
  try:
    before = dict(verifier.counters)
    verdicts = {}
    for mode in ("strict", "loose"):
      pairs = [(r, c, p) for p, (r, rec) in enumerate(zip(responses, records))
               for c in ifeval_constraints(rec, mode == "loose")]
      ok = verifier.check([r for r, _, _ in pairs], [c for _, c, _ in pairs])
      verdicts[mode] = (ok, [c.instruction_id for _, c, _ in pairs], np.asarray([p for _, _, p in pairs]))
    counters = {k: verifier.counters[k] - before.get(k, 0) for k in ("errors", "timeouts")}
  finally:
    if owned:
      verifier.close()
  report: dict[str, Any] = {"num_prompts": len(records)}
  per_type: dict[str, dict[str, float]] = collections.defaultdict(dict)
  per_prompt = [{"instruction_id_list": list(record_meta(r)["instruction_id_list"]), "strict": [], "loose": []}
                for r in records]
  for mode, (ok, ids, prompt_of) in verdicts.items():
    ok = np.asarray(ok, bool)
    for p, v in zip(prompt_of, ok):
      per_prompt[p][mode].append(bool(v))
    report[f"instruction_level_{mode}"] = float(ok.mean()) if ok.size else 0.0
    followed_all = np.ones(len(records), bool)
    np.logical_and.at(followed_all, prompt_of, ok)
    report[f"prompt_level_{mode}"] = float(followed_all.mean()) if len(records) else 0.0
    by_id = collections.defaultdict(list)
    for i, v in zip(ids, ok):
      by_id[i].append(v)
    for i, vs in by_id.items():
      per_type[i].update({mode: float(np.mean(vs)), "count": len(vs)})
    report["num_instructions"] = int(ok.size)
  report["per_instruction"] = dict(sorted(per_type.items()))
  report["per_prompt"] = per_prompt
  report["checker_errors"], report["checker_timeouts"] = counters["errors"], counters["timeouts"]
  return report


def generate_ifeval_responses(model, tokenizer, records: Sequence[Mapping[str, Any]], *, max_new_tokens: int,
                              batch_size: int = 16, temperature: float = 0.0, seed: int = 0,
                              progress=None) -> tuple[list[str], list[bool]]:
  """(responses, stopped) for each record's prompt as a single user turn of the chat template.

  All batches share one prompt width and batch size (the last batch is padded with repeats), so
  one program is compiled. `stopped` is False where the response hit `max_new_tokens`.
  `progress(done, total)` is called after each batch.
  """
  prompts = [encode_prompt(tokenizer, r["prompt"], chat=True) for r in records]
  params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, stop_ids=tokenizer.eos_ids,
                          pad_id=tokenizer.pad_id)
  sampler = Sampler(nnx.graphdef(model), params, group_size=1)
  out = generate_in_batches(sampler, nnx.state(model), tokenizer, prompts, jax.random.key(seed),
                            batch_size=batch_size, width=bucket_width(max(len(p) for p in prompts)),
                            progress=progress)
  texts, stopped = [text for text, _, _ in out], [stop for _, _, stop in out]
  return texts, stopped

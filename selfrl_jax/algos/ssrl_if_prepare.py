"""SSRL-IF's preparation stage (ssrl_if.md §3.3, §8 rows 9-10, §9.6 "RM training"): the classifier is
trained on pseudo-labels from the warm-started policy's own ladder responses, before RL.

For `ssrl_if.rm_ladders` instructions of the training split, the policy (training decoding, one
sample per prompt) answers x_0 (no constraint) ... x_n (all n); each constraint c_k gives the pairs
(o_k, c_k, 1) and (o_{k-1}, c_k, 0). The last `rm_holdout` of the ladders are held out. Reported
(as `prepare/<name>` at step 0):

- pseudo_label_acc(_soft, _k<k>): how often a pseudo-label equals the oracle's verdict, over all
  pairs, soft constraints, and the pairs of ladder step k (worlds with an oracle only; the
  analogue of v1 Table 2's check against human judgement);
- rm_train_acc / rm_train_loss: the last 100 classifier steps;
- rm_heldout_acc / rm_heldout_auc: against the pseudo-labels of the held-out ladders;
- rm_oracle_acc(_soft) / rm_oracle_auc(_soft): against the oracle on the held-out responses;
- num_pairs: training pairs; ladders_skipped: ladders whose longest prompt does not fit rl.max_prompt_len;
  pairs_unanswered: (positive, negative) pairs dropped because a side did not match `answer_pattern`.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import tqdm
from flax import nnx

from selfrl_jax.algos.ssrl_if_rm import (classifier_graphdef, classifier_probs, init_classifier, ladder_pairs,
                                         rm_inputs, roc_auc, train_rm)
from selfrl_jax.data.pipeline import encode_prompt
from selfrl_jax.data.records import normalize_record
from selfrl_jax.sampling.sampler import Sampler
from selfrl_jax.sampling.texts import generate_in_batches
from selfrl_jax.train.builders import ConfigError

_SAMPLE_BATCH = 64


def sample_answers(algorithm, model, tokenizer, prompts: list[str], *, chat: bool, width: int, seed: int,
                   batch_size: int = _SAMPLE_BATCH, system_prompt: str | None = None,
                   progress=None) -> list[str | None]:
  """One training-decoding response per prompt (fixed batch shapes, the prompt encoded as RL encodes
  it), as `algorithm.answer_of` reads it (None where the answer pattern does not match)."""
  sampler = Sampler(nnx.graphdef(model), algorithm.sampling, group_size=1)
  encoded = [encode_prompt(tokenizer, p, chat, system_prompt) for p in prompts]
  out = generate_in_batches(sampler, nnx.state(model), tokenizer, encoded,
                            jax.random.key(seed), batch_size=batch_size, width=width, progress=progress)
  return [algorithm.answer_of(text) for text, _, _ in out]


def training_pairs(answers: list[str | None], instruction, rm_pairs: str) -> tuple[list, int]:
  """(the ladder's pseudo-labelled pairs for the classifier, pairs dropped): `ladder_pairs` of
  o_0..o_n, soft constraints only for rm_pairs="soft"; (positive, negative) stay together, and a
  pair with a side that has no answer (None: the answer pattern did not match) is dropped whole."""
  pairs = ladder_pairs(answers, instruction)
  kept = [pair for pair in zip(pairs[0::2], pairs[1::2]) if rm_pairs == "all" or pair[0].constraint.soft]
  answered = [pair for pair in kept if pair[0].response is not None and pair[1].response is not None]
  return [p for pair in answered for p in pair], len(kept) - len(answered)


def _rate(x: np.ndarray) -> float:
  return float(np.mean(x)) if len(x) else float("nan")


def prepare(cfg, algorithm, algo_state, model, tokenizer, train_source):
  """(algo_state with the trained classifier under "rm", report); see the module docstring."""
  s = cfg.ssrl_if
  world = algorithm.world
  # The first rm_ladders instruction ladders of the training split (math rows have none).
  ladders, i = [], 0
  while len(ladders) < s.rm_ladders and i < len(train_source):
    ladder = world.ladder(normalize_record(train_source[i]))
    i += 1
    if ladder is not None:
      ladders.append(ladder)
  n = len(ladders)
  # A ladder whose longest prompt does not fit the prompt buffer is skipped (counted), as RL skips it.
  width = cfg.rl.max_prompt_len
  system = cfg.task.system_prompt or None
  fits = [max(len(encode_prompt(tokenizer, p, cfg.task.chat, system)) for p in prompts) <= width for prompts, _ in ladders]
  skipped = len(ladders) - sum(fits)
  ladders = [ladder for ladder, ok in zip(ladders, fits) if ok]
  if len(ladders) < 2:
    raise ConfigError(f"config.ssrl_if.rm_ladders: only {len(ladders)} of {n} ladders fit rl.max_prompt_len={width}")
  instructions = [instruction for _, instruction in ladders]
  prompts = [p for ladder_prompts, _ in ladders for p in ladder_prompts]
  with tqdm.tqdm(total=len(prompts), desc="prepare: ladder responses", unit="response",
                 disable=not cfg.train.progress) as bar:
    answers = sample_answers(algorithm, model, tokenizer, prompts, chat=cfg.task.chat, width=cfg.rl.max_prompt_len,
                             seed=cfg.seed, system_prompt=system, progress=lambda done, _: bar.update(done - bar.n))
  pairs_by_ladder, start, unanswered = [], 0, 0
  for instruction in instructions:
    ladder = answers[start:start + len(instruction) + 1]
    start += len(instruction) + 1
    pairs, dropped = training_pairs(ladder, instruction, s.rm_pairs)
    pairs_by_ladder.append(pairs)
    unanswered += dropped
  if unanswered and not any(pairs_by_ladder):
    raise ConfigError(f"config.ssrl_if.answer_pattern: {s.answer_pattern!r} matched none of the policy's ladder responses: "
                     "every reward would be 0 (is it a thinking model's tag this model never writes?)")
  held = max(1, math.ceil(s.rm_holdout * len(ladders)))
  train_pairs = [p for ladder in pairs_by_ladder[:-held] for p in ladder]
  test_pairs = [p for ladder in pairs_by_ladder[-held:] for p in ladder]

  def arrays(pairs):
    tokens, valid = rm_inputs(tokenizer, [p.response for p in pairs], [p.constraint.text for p in pairs], s.rm_width,
                              world.rm_template)
    return tokens, valid, np.asarray([p.label for p in pairs], np.int32)

  key = jax.random.fold_in(jax.random.key(cfg.seed), 7)
  backbone = nnx.state(model, nnx.Param) if s.rm_init == "policy" else None
  params = init_classifier(model.cfg, key, backbone)
  graphdef = classifier_graphdef(model.cfg)
  tokens, valid, labels = arrays(train_pairs)
  with tqdm.tqdm(total=s.rm_steps, desc="prepare: classifier", unit="step", disable=not cfg.train.progress) as bar:
    params, train_metrics = train_rm(graphdef, params, tokens, valid, labels, steps=s.rm_steps,
                                     batch_size=s.rm_batch_size, learning_rate=s.rm_learning_rate, seed=cfg.seed,
                                     objective=s.rm_objective, on_step=lambda _: bar.update())
  test_tokens, test_valid, test_labels = arrays(test_pairs)
  probs = classifier_probs(graphdef, params, test_tokens, test_valid)
  report = {"num_pairs": float(len(train_pairs)), "ladders_skipped": float(skipped),
            "pairs_unanswered": float(unanswered), "rm_train_acc": train_metrics["train_acc"],
            "rm_train_loss": train_metrics["train_loss"],
            "rm_heldout_acc": _rate((probs > 0.5) == test_labels), "rm_heldout_auc": roc_auc(probs, test_labels)}
  if world.has_oracle:
    def truth(pairs):
      return np.asarray([world.holds(p.constraint, p.response) for p in pairs])
    soft_all = np.asarray([p.constraint.soft for p in train_pairs + test_pairs], bool)
    labels_all = np.asarray([p.label for p in train_pairs + test_pairs], bool)
    agree = labels_all == truth(train_pairs + test_pairs)
    oracle_test = truth(test_pairs)
    soft_test = np.asarray([p.constraint.soft for p in test_pairs], bool)
    level_all = np.asarray([p.level for p in train_pairs + test_pairs])
    report.update({f"pseudo_label_acc_k{k}": _rate(agree[level_all == k]) for k in sorted(set(level_all.tolist()))})
    report.update({"pseudo_label_acc": _rate(agree), "pseudo_label_acc_soft": _rate(agree[soft_all]),
                   "rm_oracle_acc": _rate((probs > 0.5) == oracle_test), "rm_oracle_auc": roc_auc(probs, oracle_test),
                   "rm_oracle_acc_soft": _rate(((probs > 0.5) == oracle_test)[soft_test]),
                   "rm_oracle_auc_soft": roc_auc(probs[soft_test], oracle_test[soft_test])})
  return {**algo_state, "rm": params}, report

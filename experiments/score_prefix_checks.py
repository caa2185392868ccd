"""Preconditions of SCoRe's prefix-sums toy, checked before any claim (issue: "a toy in which turn 2
can know more than turn 1"), and the claims checked on the numbers.

  P1  single-turn RL leaves held-out long-item Acc@t1 <= 0.25 (read off the single_turn arm);
  P2  a supervised corrector on (x, wrong y1) -> y* reaches >= 0.9 on long items within a minute;
  P3  the base at T = 1 fixes >= 5% of its wrong long-item first attempts.

If one fails the toy is invalid for the claim and the report says so; nothing here is tuned until
it passes. P2 fine-tunes the warm-started base (it knows the format) on two-turn traces whose y1 is
the answer shifted by a random offset and whose y2 is the answer, loss on y2 only, for at most
`P2_SECONDS` of wall time; accuracy is greedy (every y2 token is the argmax given the ones before,
which is exactly greedy decoding reproducing y*), on held-out long items.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments import arms as arms_lib
from experiments import score_toy
from selfrl_jax.data.records import normalize_record, record_meta
from selfrl_jax.data.score_toy import toy_demonstrations
from selfrl_jax.models.decoder import forward_full
from selfrl_jax.train import builders
from selfrl_jax.train.evaluation import Evaluator
from selfrl_jax.train.loop import eval_batches, warm_start
from selfrl_jax.train.sft import make_sft_step

CONFIG = score_toy.TOYS["prefix_sums"]
P1_MAX_ACC, P2_MIN_ACC, P2_SECONDS, P3_MIN_FIX = 0.25, 0.9, 60.0, 0.05
TIE = 0.0  # a claim "X > Y" holds when mean(X) - mean(Y) > std(X) + std(Y) + TIE


def buckets(cfg) -> dict[str, tuple[int, ...]]:
  """{"short": prompt lengths, "long": prompt lengths} in tokens: `d1…dn=` is n + 1 tokens with the
  char tokenizer (checked in `check_preconditions`)."""
  lengths = sorted(cfg.task.params["lengths"])
  half = len(lengths) // 2
  return {"short": tuple(n + 1 for n in lengths[:half]), "long": tuple(n + 1 for n in lengths[half:])}


def _base(cfg, workdir: str):
  """The warm-started base every arm starts from (the same cache `arms.run_arms` uses)."""
  model, tok = builders.build_model(cfg)
  train_source, valid_source, test_source = builders.build_sources(cfg)
  model = warm_start(cfg, model, tok, train_source, valid_source, f"{workdir}/warm_start")
  return model, tok, train_source, test_source


def p3_fix_rate(cfg, model, tok, test_source) -> dict[str, float]:
  """The base sampled at T = 1 (fixed key): fraction of wrong long-item first attempts whose second
  attempt is right, and the long-item Acc@t1 at T = 1."""
  algorithm = builders.build_algorithm(cfg, tok, test_source)
  sampling = builders.train_sampling(cfg, tok)  # T = rl.temperature (1.0), what RL samples
  evaluator = Evaluator(nnx.graphdef(model), algorithm, sampling, eval_batches(cfg, tok, test_source, cfg.train.eval_size))
  out = evaluator.per_example(nnx.state(model, nnx.Param))
  right_KxB = np.asarray(out["reward_KxB"]) > 0.5
  long_B = np.isin(np.asarray(out["prompt_len_B"]), buckets(cfg)["long"])
  wrong1 = long_B & ~right_KxB[0]
  return {"p3_fix_rate": float((right_KxB[1] & wrong1).sum() / max(wrong1.sum(), 1)),
          "p3_wrong_first_attempts": float(wrong1.sum()), "p3_acc_t1_long_T1": float(right_KxB[0][long_B].mean())}


def _corrector_demos(cfg, tok, algorithm, batch, records, rng):
  """Traces [x | offset y1 | instr | y*] with the loss on y* only."""
  demo = toy_demonstrations(batch, records, tok, rng, instr_ids=algorithm.instr_ids,
                            max_new_tokens1=algorithm.sampling.max_new_tokens,
                            max_new_tokens2=algorithm.sampling2.max_new_tokens, copy_prob=0.0,
                            first_right_prob=0.0)
  y2_start = batch.prompt_tokens_PxT.shape[1] + algorithm.sampling.max_new_tokens + len(algorithm.instr_ids)
  demo["loss_mask_BxS"][:, :y2_start] = False
  return demo


def p2_supervised_corrector(cfg, model, tok, train_source, test_source, seconds: float = P2_SECONDS
                            ) -> dict[str, float]:
  """Fine-tunes the base as a corrector for at most `seconds` (Adam, sft.learning_rate, sft.batch_size);
  greedy accuracy of y2 on held-out long items with a wrong (offset) y1."""
  algorithm = builders.build_algorithm(cfg, tok, train_source)
  rng = np.random.default_rng(0)
  train_it = builders.prompt_batches(cfg, train_source, tok, batch_size=cfg.sft.batch_size, seed=123)
  test_batch = eval_batches(cfg, tok, test_source, cfg.train.eval_size)
  test_demos = [_corrector_demos(cfg, tok, algorithm, b, _records(test_source, b), rng) for b in test_batch]
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optax.adam(cfg.sft.learning_rate)
  opt_state, step = tx.init(params), make_sft_step(graphdef, tx)

  @jax.jit
  def exact_B(params, demo):
    m = nnx.merge(graphdef, params)
    logits = forward_full(m, demo["tokens_BxS"], demo["valid_BxS"]) @ m.output_embedding()
    hit = jnp.argmax(logits[:, :-1], -1) == demo["tokens_BxS"][:, 1:]
    return jnp.all(hit | ~demo["loss_mask_BxS"][:, 1:], axis=1)

  def long_accuracy(params):
    hits, long_ = [], []
    for b, d in zip(test_batch, test_demos):
      hits.append(np.asarray(exact_B(params, d)))
      long_.append(np.isin(np.asarray(b.prompt_valid_PxT.sum(1)), buckets(cfg)["long"]))
    hits, long_ = np.concatenate(hits), np.concatenate(long_)
    return float(hits[long_].mean())

  before = long_accuracy(params)
  start, steps = time.perf_counter(), 0
  for batch in train_it:
    demo = _corrector_demos(cfg, tok, algorithm, batch, _records(train_source, batch), rng)
    params, opt_state, _ = step(params, opt_state, demo)
    steps += 1
    if time.perf_counter() - start > seconds:
      break
  return {"p2_corrector_acc_long": long_accuracy(params), "p2_base_as_corrector_acc_long": before,
          "p2_steps": float(steps), "p2_seconds": time.perf_counter() - start}


def _records(source, batch):
  return [normalize_record(source[int(i)]) for i in np.asarray(batch.example_id_P)]


def check_preconditions(workdir: str, runs: dict | None, edit: Callable | None = None
                        ) -> list[tuple[str, bool | None, str]]:
  """[(precondition, holds (None: not run), numbers)] for P1 (from the single_turn runs), P2, P3.

  `edit(cfg)` changes the config first (e.g. a longer warm start, to see what the toy would need).
  """
  cfg = arms_lib.load_config_module(CONFIG).get_config("score")
  if edit is not None:
    with cfg.unlocked():
      edit(cfg)
  model, tok, train_source, test_source = _base(cfg, workdir)
  record = normalize_record(train_source[0])
  if len(tok.encode(record["prompt"])) != record_meta(record)["n"] + 1:
    raise ValueError(f"prompt {record['prompt']!r} is not n + 1 tokens: the length buckets would be wrong")
  out = []
  if runs and "single_turn" in runs:
    long_ = score_toy.summarize({"single_turn": runs["single_turn"]}, prompt_lens=buckets(cfg)["long"])
    acc, std = long_["single_turn"]["acc_t1"]
    out.append((f"P1 single-turn RL leaves long-item Acc@t1 <= {P1_MAX_ACC}", acc <= P1_MAX_ACC,
                f"{acc:.3f} ± {std:.3f} over {len(runs['single_turn'])} seeds; base {long_['base']['acc_t1'][0]:.3f}"))
  else:
    out.append((f"P1 single-turn RL leaves long-item Acc@t1 <= {P1_MAX_ACC}", None, "single_turn arm not run"))
  p2 = p2_supervised_corrector(cfg, model, tok, train_source, test_source)
  out.append((f"P2 a supervised corrector reaches >= {P2_MIN_ACC} on long items within {P2_SECONDS:.0f} s",
              p2["p2_corrector_acc_long"] >= P2_MIN_ACC,
              f"{p2['p2_corrector_acc_long']:.3f} after {p2['p2_steps']:.0f} steps in {p2['p2_seconds']:.0f} s "
              f"(the base as corrector before: {p2['p2_base_as_corrector_acc_long']:.3f})"))
  p3 = p3_fix_rate(cfg, model, tok, test_source)
  out.append((f"P3 the base at T = 1 fixes >= {P3_MIN_FIX:.0%} of wrong long first attempts",
              p3["p3_fix_rate"] >= P3_MIN_FIX,
              f"{p3['p3_fix_rate']:.3f} of {p3['p3_wrong_first_attempts']:.0f} wrong attempts "
              f"(long Acc@t1 at T = 1: {p3['p3_acc_t1_long_T1']:.3f})"))
  return out


def _greater(rows, a: str, b: str, metric: str = "delta") -> tuple[bool, str]:
  (ma, sa), (mb, sb) = rows[a][metric], rows[b][metric]
  return ma - mb > sa + sb + TIE, f"{a} {ma:+.3f} ± {sa:.3f} vs {b} {mb:+.3f} ± {sb:.3f}"


def claims(long_rows: dict) -> list[tuple[str, bool | None, str]]:
  """The paper's claims on long items (where turn 2 can know more than turn 1), each decided on the
  numbers: X > Y holds when the means differ by more than the sum of the seed stds."""
  out = []

  def add(claim, arm_a, arm_b, metric="delta"):
    if arm_a not in long_rows or arm_b not in long_rows:
      out.append((claim, None, f"{arm_a} or {arm_b} not run"))
      return
    ok, numbers = _greater(long_rows, arm_a, arm_b, metric)
    out.append((claim, ok, numbers))
  if "score" in long_rows:
    m, s = long_rows["score"]["delta"]
    out.append(("SCoRe self-corrects: Δ(t1, t2) > 0 on long items", m > s, f"{m:+.3f} ± {s:.3f}"))
  add("SCoRe's Δ beats naive multi-turn RL's (naive collapses)", "score", "naive_multi_turn")
  add("SCoRe's Δ beats single-turn RL's", "score", "single_turn")
  add("Stage I matters: SCoRe's Δ beats w/o Stage I", "score", "no_stage1")
  add("Shaping matters: SCoRe's Δ beats w/o shaping", "score", "no_shaping")
  add("Shaping is more than a turn-2 step size: SCoRe's Δ beats the (1+alpha) control", "score", "shaping_control")
  add("REINFORCE beats STaR in Stage II (Δ)", "score", "star")
  add("SCoRe's Acc@t2 beats naive multi-turn RL's", "score", "naive_multi_turn", "acc_t2")
  return out

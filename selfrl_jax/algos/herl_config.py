"""HeRL's config section `config.herl`, its validation, and the toy's warm-start demonstrations.

Names follow the released code (herl.md §4, §6); defaults are the released IF run's.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from selfrl_jax.algos.herl_rubrics import RUBRICS
from selfrl_jax.algos.herl_templates import DIAGNOSES, KINDS
from selfrl_jax.algos.registry import CheckFn

IS_RATIOS = {"ratio": "is_weight", "raw": "policy_shaping"}  # he.is_ratio -> surrogate of hindsight tokens
FALLBACKS = ("copy_best", "skip")
EVAL_CONTEXTS = ("hindsight", "prompt")
RESCORE = ("revision", "rollout")


def default_config() -> ml_collections.ConfigDict:
  h = ml_collections.ConfigDict()
  h.enable = True                 # he.enable: False = plain GRPO on the rubric reward (same rollout, reward, loss)
  h.rubric = "ifeval"             # digits (the CPU toy: one item per answer character + length) | ifeval (IFEval checkers per constraint)
  h.template = "constraint"       # constraint (the released HE prompt) | flags (the toy: x <sep> y <sep> o/x per item <fix>)
  h.diagnosis = "full"            # full (met / unmet lists) | naive (NaiveHE: the draft only, no diagnosis)
  h.threshold = 1.0               # tau: groups whose best rubric score reaches it are not revised
  h.candidate_limit = 16          # L: revisions per group at most (ties at the group best, most items met first)
  h.revision_temperature = 0.3    # T of the revision sample (the trainer rescores its tokens at this T)
  h.revision_samples = 1          # revisions per candidate; r~_j is the best of them
  h.revision_max_new_tokens = 0   # revision length limit (0 = rl.max_new_tokens)
  h.he_prompt_len = 0             # W, slots of the hindsight prompt (left-truncated beyond, as released; 0 = derived from the rollout shapes)
  h.bonus = True                  # improvement bonus r_j <- r_j + alpha (r~_j - r_j) on candidates
  h.alpha = 0.05                  # reward_shaping_alpha
  h.bonus_clamp_min = False       # True: max(r~_j - r_j, 0) (the released code allows negative bonuses)
  h.replace_top_n = 1             # revisions injected per group (each into its own random slot)
  h.fallback = "copy_best"        # no revision reaches the group best: copy_best (released: the best original into the slot) | skip
  h.train_with_he_prompt = True   # the injected slot's context: h (released) | False: the original prompt x (LUFFY-style)
  h.is_ratio = "ratio"            # hindsight tokens' weight: ratio (rho = pi/pi_old, w = rho/(rho+gamma)) | raw (LUFFY: pi/(pi+gamma))
  h.gamma = 1.0                   # he_shaping_gamma (1 for the IF run, 0.1 for the medical run; <= 0: w = rho)
  h.dual_clip_c = 3.0             # dual-clip constant of the ordinary tokens' PPO loss
  h.append_eos = False            # True: a revision that hit the length limit is trained with EOS appended (released: only stopped revisions end with EOS)
  h.rescore_temperature = "revision"  # T the trainer scores hindsight tokens at: revision (the T they were sampled at) | rollout (rl.temperature, verl's one batch temperature)
  h.eval_rounds = 2               # test-time experience rounds in evaluation (eval/accuracy_round{k}, k = 1..rounds)
  h.eval_revision_temperature = 0.3  # T of the test-time revisions
  h.eval_round_context = "hindsight"  # test-time rounds resample from: hindsight (h: draft + unmet items) | prompt (x alone: the best-of-k control)
  # Toy warm start (sft.demos = "herl_toy"): direct answers plus revision demonstrations on easy problems.
  h.sft_revision_frac = 0.3       # fraction of warm-start demonstrations in the revision format
  h.sft_revision_max_digits = 3   # revision demonstrations only on problems with operands of at most this many digits
  return h


def validate(cfg: ml_collections.ConfigDict, check: CheckFn) -> None:
  h, rl = cfg.herl, cfg.rl
  check(h.rubric in RUBRICS, "herl.rubric", f"must be one of {RUBRICS}, got {h.rubric!r}")
  check(h.template in KINDS, "herl.template", f"must be one of {KINDS}, got {h.template!r}")
  check(h.diagnosis in DIAGNOSES, "herl.diagnosis", f"must be one of {DIAGNOSES}, got {h.diagnosis!r}")
  check(0.0 < h.threshold <= 1.0, "herl.threshold",
        f"must be in (0, 1] (rubric scores are in [0, 1]; <= 0 revises nothing), got {h.threshold}")
  check(h.candidate_limit >= 1, "herl.candidate_limit", f"must be >= 1, got {h.candidate_limit}")
  check(h.revision_temperature > 0, "herl.revision_temperature", f"must be > 0, got {h.revision_temperature}")
  check(h.eval_revision_temperature >= 0, "herl.eval_revision_temperature", "must be >= 0")
  check(h.revision_samples >= 1, "herl.revision_samples", f"must be >= 1, got {h.revision_samples}")
  check(0 <= h.revision_max_new_tokens <= rl.max_new_tokens, "herl.revision_max_new_tokens",
        f"must be in [0, rl.max_new_tokens={rl.max_new_tokens}] (the rollout buffer holds the revision), "
        f"got {h.revision_max_new_tokens}")
  check(h.he_prompt_len == 0 or h.he_prompt_len >= rl.max_prompt_len, "herl.he_prompt_len",
        f"must be 0 (derived) or >= rl.max_prompt_len={rl.max_prompt_len}, got {h.he_prompt_len}")
  check(h.alpha >= 0, "herl.alpha", f"must be >= 0, got {h.alpha}")
  check(1 <= h.replace_top_n <= rl.group_size - 1, "herl.replace_top_n",
        f"must be in [1, rl.group_size - 1 = {rl.group_size - 1}] (a group keeps at least one own rollout), "
        f"got {h.replace_top_n}")
  check(h.fallback in FALLBACKS, "herl.fallback", f"must be one of {FALLBACKS}, got {h.fallback!r}")
  check(h.is_ratio in IS_RATIOS, "herl.is_ratio", f"must be one of {sorted(IS_RATIOS)}, got {h.is_ratio!r}")
  check(h.dual_clip_c > 1.0, "herl.dual_clip_c", f"must be > 1, got {h.dual_clip_c}")
  check(h.eval_rounds >= 0, "herl.eval_rounds", f"must be >= 0, got {h.eval_rounds}")
  check(h.rescore_temperature in RESCORE, "herl.rescore_temperature",
        f"must be one of {RESCORE}, got {h.rescore_temperature!r}")
  check(h.eval_round_context in EVAL_CONTEXTS, "herl.eval_round_context",
        f"must be one of {EVAL_CONTEXTS}, got {h.eval_round_context!r}")
  check(rl.group_size >= 2, "rl.group_size", "GRPO's group baseline needs group_size >= 2")
  check(h.rubric != "digits" or h.template == "flags", "herl.template",
        "the digits rubric's items are character positions: use template='flags'")
  check(0.0 <= h.sft_revision_frac <= 1.0, "herl.sft_revision_frac", "must be in [0, 1]")
  check(cfg.sft.demos != "herl_toy" or h.rubric == "digits", "sft.demos",
        "herl_toy demonstrations are for the digits rubric (arithmetic tasks)")


def _corrupt(answer: str, rng: np.random.Generator) -> str:
  """The answer with one or two characters replaced by other digits (a draft to revise)."""
  chars = list(answer)
  for i in rng.choice(len(chars), size=min(len(chars), int(rng.integers(1, 3))), replace=False):
    chars[i] = str((int(chars[i]) + int(rng.integers(1, 10))) % 10)
  return "".join(chars)


def toy_demos(cfg: ml_collections.ConfigDict, algorithm, batches, tokenizer, seed: int):
  """`sft.demos = "herl_toy"` (herl.md §10): [context | answer EOS] rows in the rollout's layout.

  A demonstration is a revision with probability `sft_revision_frac` when both operands have at most
  `sft_revision_max_digits` digits: context h(x, draft, flags) with a draft of 1-2 corrupted
  characters, half in the full format and half in the naive one (so the NaiveHE arm starts from the
  same base), target the right answer. Otherwise it is a direct answer, with one character corrupted
  with probability `sft.error_rate` (a weak base on long problems).
  """
  from selfrl_jax.data.records import normalize_record, record_meta  # pylint: disable=import-outside-toplevel
  from selfrl_jax.algos.herl_rubrics import character_items  # pylint: disable=import-outside-toplevel
  from selfrl_jax.algos.herl_templates import HindsightTemplate  # pylint: disable=import-outside-toplevel
  h = cfg.herl
  full, naive = HindsightTemplate("flags", "full"), HindsightTemplate("flags", "naive")
  # One layout for every arm (herl.enable changes the rollout's widths, not the warm start's), so all
  # arms share one cached base model.
  width, n_resp = algorithm.he_prompt_len, algorithm.sampling.max_new_tokens + 1
  rubric = algorithm.rubric

  def stream():
    rng = np.random.default_rng(seed)
    for batch in batches:
      records = batches.records(batch.example_id_P)
      prompts, valid = np.asarray(batch.prompt_tokens_PxT), np.asarray(batch.prompt_valid_PxT, bool)
      p = len(records)
      tokens = np.full((p, width + n_resp), tokenizer.pad_id, np.int32)
      mask = np.zeros(tokens.shape, bool)
      ok = np.zeros(tokens.shape, bool)
      for row, rec in enumerate(records):
        rec = normalize_record(rec)
        answer, meta = rec["answer"], record_meta(rec)
        x = prompts[row][valid[row]].tolist()
        easy = max(len(str(meta["a"])), len(str(meta["b"]))) <= h.sft_revision_max_digits
        if easy and rng.random() < h.sft_revision_frac:
          draft = _corrupt(answer, rng)
          met = character_items(draft, answer, rubric.width)
          template = full if rng.random() < 0.5 else naive
          context = template.ids(tokenizer, x, tokenizer.encode(draft), met, rubric.descriptions(0))[-width:]
          target = answer
        else:
          context = x
          target = _corrupt(answer, rng) if rng.random() < cfg.sft.error_rate else answer
        ids = tokenizer.encode(target) + [tokenizer.eos_ids[0]]
        tokens[row, width - len(context):width], ok[row, width - len(context):width] = context, True
        tokens[row, width:width + len(ids)], ok[row, width:width + len(ids)] = ids, True
        mask[row, width:width + len(ids)] = True
      yield {"tokens_BxS": tokens, "valid_BxS": ok, "loss_mask_BxS": mask}

  settings = {"herl": {k: h[k] for k in ("sft_revision_frac", "sft_revision_max_digits")},
              "width": width, "response_width": n_resp, "error_rate": cfg.sft.error_rate}
  return stream(), settings

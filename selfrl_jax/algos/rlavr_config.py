"""RLAVR's config section `config.rlavr` and its validation (rlavr.md §2, §4, §6, §7)."""

from __future__ import annotations

import ml_collections

from selfrl_jax.algos.rlavr_labels import ADV_COEFF_MODES

SELECTIONS = ("ttrl", "random", "entropy", "avg_prob", "care", "oracle_cag", "full_gt")
SCORES = ("cag", "soft")
EQUIVALENCES = ("string", "math_verify")
ANSWER_STYLES = ("text", "auto", "boxed", "gsm8k", "last_number")

def default_config() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.selection = "care"        # ttrl | random | entropy | avg_prob | care | oracle_cag | full_gt (spec §2 "Variants")
  s.p = 0.2                   # GT fraction of the prompts per step (budget; ceil(p * P) labels per step)
  s.p2 = 0.25                 # care: fraction gated as reliable (never queried), after the warm-up
  s.warmup = 20               # care: RL steps with the reliability gate off (hard-coded 20 in the code)
  s.kappa = 1.0               # care: soft_adv, c_i = clip(kappa * s_i * 1[reliable], 0, 1) on pseudo-labelled prompts
  s.adv_mode = "gated"        # care: gated (released code) | use_pseudo (every prompt keeps its advantage; paper text) | drop (queried only)
  s.score = "cag"             # care: rank by expected CAG s (released) | soft: by (1 - p1) * s (spec §7 variant); the gate stays
  s.mask_non_gt = True        # random / entropy / avg_prob: train on the GT-labelled prompts only (the code's default)
  s.equivalence = "string"    # answer clustering: string (exact text) | math_verify (either direction, host pool)
  s.answer_style = "text"     # what is clustered: text (the whole response) | auto | boxed | gsm8k | last_number
  s.verify_timeout_s = 5.0    # math_verify: seconds per comparison (a time-out counts as "different")
  s.probe_lr = 1e-4           # care: probe AdamW learning rate (weight decay 0, global-norm clip 1.0)
  s.probe_steps = 3           # care: probe optimizer steps per RL step
  s.replay_size = 2048        # care: FIFO replay buffer rows (queried prompts)
  s.replay_batch = 16         # care: replayed rows per probe step (stage 2 stratified by label)
  s.aux_weight = 1.5          # care: weight of the per-response correctness head
  return s


def validate(cfg: ml_collections.ConfigDict, check) -> None:
  r, rl = cfg.rlavr, cfg.rl
  check(r.selection in SELECTIONS, "rlavr.selection", f"{r.selection!r} is not one of {SELECTIONS}")
  check(r.score in SCORES, "rlavr.score", f"{r.score!r} is not one of {SCORES}")
  check(r.adv_mode in ADV_COEFF_MODES, "rlavr.adv_mode", f"{r.adv_mode!r} is not one of {ADV_COEFF_MODES}")
  check(r.equivalence in EQUIVALENCES, "rlavr.equivalence", f"{r.equivalence!r} is not one of {EQUIVALENCES}")
  check(r.answer_style in ANSWER_STYLES, "rlavr.answer_style", f"{r.answer_style!r} is not one of {ANSWER_STYLES}")
  check(0.0 <= r.p <= 1.0, "rlavr.p", f"must be in [0, 1], got {r.p}")
  check(0.0 <= r.p2 <= 1.0, "rlavr.p2", f"must be in [0, 1], got {r.p2}")
  check(r.selection != "care" or r.p + r.p2 <= 1.0, "rlavr.p2", f"rlavr.p + rlavr.p2 = {r.p + r.p2} exceeds 1 for selection=care: lower p2 (0 turns the gate off) or p")
  check(rl.group_size >= 2, "rl.group_size", "a majority vote and group advantages need group_size >= 2")
  check(r.warmup >= 0, "rlavr.warmup", f"must be >= 0, got {r.warmup}")
  check(r.probe_steps >= 1 and r.replay_batch >= 1 and r.replay_size >= rl.prompts_per_step, "rlavr.replay_size",
        "need probe_steps >= 1, replay_batch >= 1 and replay_size >= rl.prompts_per_step")
  check(r.probe_lr > 0, "rlavr.probe_lr", "must be > 0")

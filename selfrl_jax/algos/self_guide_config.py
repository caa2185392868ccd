"""Self-Guide's config section `config.self_guide`, its validation, the builder and the grid toy's
warm-start demonstrations. Defaults follow self_guide.md §4, §7 and §9."""

from __future__ import annotations

import dataclasses
import logging

import ml_collections
import numpy as np

from selfrl_jax.algos.registry import CheckFn
from selfrl_jax.algos.self_guide_objective import AGGREGATIONS, SCHEDULES, TrustSchedule

log = logging.getLogger(__name__)

STEP_CREDITS = ("trajectory", "reward_to_go")
ENV_REWARDS = ("success", "normalized_score")
ENVS = ("grid", "grid_host", "twx", "scienceworld")
GAME_ENVS = ("twx", "scienceworld")   # host text games; each resets from the task of the same name
LABELS = ("positive", "neutral", "negative")


def default_config() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.env = "grid"                    # grid (JAX, the whole episode compiled) | grid_host (the same grid in numpy behind host callbacks) | twx | scienceworld (Java text games: the task of that name, whose task.params pick the game)
  s.max_steps = 14                  # H, steps per episode at most (the grid's horizon)
  s.history_window = 0              # 0: the whole episode in one KV cache | k >= 1: each step sees the prompt and the last k steps (§3, verl-agent: 2), the cache rebuilt per step, one update row per step
  s.slip_prob = 0.2                 # grid: probability that a move slips to a random one of the four
  s.use_guidance = True             # False: plain GRPO, the policy writes actions only (arm a)
  s.schedule = "trapezoid"          # trust schedule λ(u): trapezoid | immediate (λ ≡ 1) | no_anneal | early_entry | zero (λ ≡ 0: "GRPO w/ SG")
  s.schedule_steps = (40, 50, 70, 80)  # trapezoid breakpoints in train steps: warm-up end, ramp end, full end, anneal end (paper: 40/50/70/80)
  s.early_entry_step = 15           # schedule=early_entry: the ramp starts here (paper ablation: 15, 25)
  s.sg_scale = 0.1                  # r_sg = scale * polarity (paper: ±0.1, 0 for neutral)
  s.agg = "sum"                     # R_sg over steps: sum (paper) | mean | sum_clipped (clipped to [-1, 1])
  s.skip_first = True               # the first guidance (no previous action to judge) earns no reward
  s.step_credit = "trajectory"      # trajectory (paper: one GRPO advantage per episode) | reward_to_go (G_t normalised per step across the group)
  s.sg_reward_on_guide_tokens = True  # False: guidance tokens get the advantage of R_env alone (removes the self-report incentive)
  s.env_reward = "success"          # success (0/1) | normalized_score (score / max, for ScienceWorld-like scores)
  s.invalid_action_penalty = 0.1    # subtracted from R_env per invalid action (verl-agent: 0.1)
  s.eval_without_guidance = True    # evaluation also plays each task without guidance (eval/success_unguided)
  s.eval_temperature = 0.4          # held-out decoding temperature (§7 item 12: verl-agent validates at 0.4; 0 = greedy)
  # Host text games (env = twx | scienceworld): one Java process per episode row, stepped in parallel threads.
  s.obs_len = 160                   # ids per observation turn (the chat turn around it included); longer ones are cut, counted
  s.env_step_timeout_s = 10.0       # a row whose step takes longer ends as failed (its Java process is restarted)
  # Step format: the guidance segment ends with guide_close; the environment reads the action after it.
  s.instruction = "G"               # text before each task prompt when guidance is on (toy: a mode marker; chat: a system turn)
  s.plain_instruction = "A"         # text before each task prompt without guidance
  s.guide_close = "|"               # text that closes the guidance segment (any number of tokens; LLM template: "</guide>")
  s.labels = ("+", "=", "-")        # positive, neutral, negative labels (LLM template: "[POSITIVE]", "[NEUTRAL]", "[NEGATIVE]")
  s.step_stop = ""                  # extra text that ends a step besides EOS (a single token, e.g. "</action>"; "" = EOS only)
  # Grid warm start (sft.demos = "self_guide_grid"): scripted episodes with noisy guidance labels.
  s.sft_label_accuracy = 0.7        # probability that a demonstrated label is the true progress of the last move
  s.sft_action_skill = 0.3          # probability that a demonstrated move is a shortest-path move (else uniform)
  s.sft_guided_frac = 0.5           # fraction of demonstrations with guidance (the rest act only, for arm a)
  return s


def schedule_of(s: ml_collections.ConfigDict) -> TrustSchedule:
  w, r, f, a = (float(x) for x in s.schedule_steps)
  return TrustSchedule(kind=s.schedule, warm_end=w, ramp_end=r, full_end=f, anneal_end=a, entry=float(s.early_entry_step))


def validate(cfg: ml_collections.ConfigDict, check: CheckFn) -> None:
  s, rl = cfg.self_guide, cfg.rl
  check(s.env in ENVS, "self_guide.env", f"must be one of {ENVS}, got {s.env!r}")
  check(s.max_steps >= 1, "self_guide.max_steps", f"must be >= 1, got {s.max_steps}")
  check(s.history_window >= 0, "self_guide.history_window", f"must be >= 0 (0: whole history), got {s.history_window}")
  if s.history_window >= s.max_steps >= 1:
    log.warning("self_guide.history_window=%d >= max_steps=%d: capped at %d (the whole history; each step still "
                "gets its own update row, which costs more than history_window=0).", s.history_window, s.max_steps,
                s.max_steps - 1)
  if s.history_window > 0 and cfg.sft.steps > 0:
    log.warning("self_guide.history_window=%d with an SFT warm start: the warm start demonstrates whole episodes, "
                "so RL sees shorter contexts than it was taught.", s.history_window)
  check(0.0 <= s.slip_prob < 1.0, "self_guide.slip_prob", f"must be in [0, 1), got {s.slip_prob}")
  check(s.schedule in SCHEDULES, "self_guide.schedule", f"must be one of {SCHEDULES}, got {s.schedule!r}")
  check(len(s.schedule_steps) == 4, "self_guide.schedule_steps",
        f"needs 4 breakpoints (warm-up end, ramp end, full end, anneal end), got {s.schedule_steps}")
  if len(s.schedule_steps) == 4:
    try:
      schedule = schedule_of(s)
    except ValueError as e:
      # early_entry moves the ramp to start at early_entry_step: name it when the breakpoints alone are fine.
      field = "self_guide.schedule_steps"
      if s.schedule == "early_entry":
        try:
          TrustSchedule("trapezoid", *map(float, s.schedule_steps))
          field = "self_guide.early_entry_step"
        except ValueError:
          pass
      check(False, field, str(e))
    else:
      ramp_start = schedule.breakpoints()[0]
      if s.schedule in ("trapezoid", "no_anneal", "early_entry") and cfg.train.num_steps <= ramp_start + 1:
        # λ(u) is 0 up to the ramp's start (u = step - 1): a shortened run would silently be the λ ≡ 0 arm.
        log.warning("self_guide.schedule=%r starts its ramp after step %g, but train.num_steps=%d: λ stays 0 for "
                    "the whole run, which makes it the 'GRPO w/ SG' (λ ≡ 0) arm. Scale self_guide.schedule_steps "
                    "(and early_entry_step) with the steps, as reproduce.py --num_steps does.",
                    s.schedule, ramp_start + 1, cfg.train.num_steps)
  check(s.agg in AGGREGATIONS, "self_guide.agg", f"must be one of {AGGREGATIONS}, got {s.agg!r}")
  check(s.step_credit in STEP_CREDITS, "self_guide.step_credit", f"must be one of {STEP_CREDITS}, got {s.step_credit!r}")
  check(s.env_reward in ENV_REWARDS, "self_guide.env_reward", f"must be one of {ENV_REWARDS}, got {s.env_reward!r}")
  check(s.sg_scale >= 0, "self_guide.sg_scale", f"must be >= 0, got {s.sg_scale}")
  check(s.invalid_action_penalty >= 0, "self_guide.invalid_action_penalty", "must be >= 0")
  check(s.eval_temperature >= 0, "self_guide.eval_temperature", f"must be >= 0, got {s.eval_temperature}")
  check(len(s.labels) == 3 and all(s.labels), "self_guide.labels",
        f"needs three non-empty labels (positive, neutral, negative), got {s.labels}")
  check(len(set(s.labels)) == 3, "self_guide.labels", f"labels must differ, got {s.labels}")
  check(bool(s.guide_close), "self_guide.guide_close", "must be non-empty (it separates guidance from action)")
  check(s.instruction != s.plain_instruction, "self_guide.plain_instruction",
        "must differ from self_guide.instruction (the policy tells the two modes apart by it)")
  check(rl.group_size >= 2, "rl.group_size", "GRPO's group baseline needs group_size >= 2")
  check(rl.advantage in ("grpo", "grpo_sample_std", "dr_grpo", "rloo"), "rl.advantage",
        f"Self-Guide normalises returns within a task's group: grpo, grpo_sample_std, dr_grpo or rloo, got {rl.advantage!r}")
  check(s.env not in ("grid", "grid_host") or cfg.task.name == "grid_nav", "task.name",
        f"self_guide.env={s.env!r} resets from grid_nav tasks, got task.name={cfg.task.name!r}")
  if s.env in ("grid", "grid_host") and cfg.task.name == "grid_nav":
    show_distance = _grid_view(cfg).show_distance
    prompt_len = len("61>34:") + show_distance
    check(rl.max_prompt_len >= prompt_len, "rl.max_prompt_len",
          f"a grid_nav prompt takes {prompt_len} ids (task.params.show_distance={show_distance}), got {rl.max_prompt_len}")
  if s.env in GAME_ENVS:
    check(cfg.task.name == s.env, "task.name", f"self_guide.env={s.env!r} resets from {s.env} tasks, got task.name={cfg.task.name!r}")
  if cfg.sft.steps > 0:   # each warm start plays its own environment's episodes
    demos = "self_guide_games" if s.env in GAME_ENVS else "self_guide_grid"
    check(cfg.sft.demos == demos, "sft.demos", f"self_guide.env={s.env!r} warm-starts from {demos!r}, got {cfg.sft.demos!r}")
  check(s.obs_len >= 8, "self_guide.obs_len", f"must be >= 8 ids (a chat turn's markers alone take several), got {s.obs_len}")
  check(s.env_step_timeout_s > 0, "self_guide.env_step_timeout_s", f"must be > 0 seconds, got {s.env_step_timeout_s}")
  check(rl.kl_coef >= 0, "rl.kl_coef", f"must be >= 0, got {rl.kl_coef}")
  for name, p in (("sft_label_accuracy", s.sft_label_accuracy), ("sft_action_skill", s.sft_action_skill),
                  ("sft_guided_frac", s.sft_guided_frac)):
    check(0.0 <= p <= 1.0, f"self_guide.{name}", f"must be in [0, 1], got {p}")


def mode_prefix_ids(tokenizer, text: str, chat: bool) -> tuple[int, ...]:
  """Ids put before each task prompt to select the mode (guided or actions only).

  Plain prompts: `text` encoded. Chat prompts already start with the template's first turn, so the
  instruction becomes a system turn of its own before them ("<|im_start|>system\n{text}<|im_end|>\n"
  in ChatML): the ids of [system: text, user: "1"] rendered up to the turn the user message opens,
  found as the ids before the first occurrence, after the first end-of-turn id, of the id the
  template opens a lone user turn with. Raises ValueError when the template shows no such structure.
  """
  if not chat:
    return tuple(int(i) for i in tokenizer.encode(text))
  both = list(tokenizer.apply_chat_template([{"role": "system", "content": text}, {"role": "user", "content": "1"}],
                                            add_generation_prompt=False))
  opener = tokenizer.apply_chat_template([{"role": "user", "content": "1"}], add_generation_prompt=False)[0]
  ends = [i for i, t in enumerate(both) if t in tokenizer.eos_ids]
  starts = [i for i, t in enumerate(both) if t == opener and ends and i > ends[0]]
  if not starts:
    raise ValueError("self_guide: the chat template renders no separate system turn before the user turn, so the "
                     "mode instruction cannot be put before chat prompts; set task.chat=False and spell the format out.")
  return tuple(int(i) for i in both[:starts[0]])


def _single_id(tokenizer, text: str, field: str) -> int:
  ids = tokenizer.encode(text)
  if len(ids) != 1:
    raise ValueError(f"self_guide.{field}={text!r} must encode to one token, got {len(ids)} ({ids}).")
  return int(ids[0])


def make_env(cfg, tokenizer):
  """The environment `self_guide.env` names."""
  from selfrl_jax.envs.base import CallbackEnv  # pylint: disable=import-outside-toplevel
  from selfrl_jax.envs.grid import GridEnv, GridHostEnv, GridSpec  # pylint: disable=import-outside-toplevel
  s = cfg.self_guide
  if s.env in GAME_ENVS:
    from selfrl_jax.envs.host_games import PooledGameEnv  # pylint: disable=import-outside-toplevel
    from selfrl_jax.envs.scienceworld import ScienceWorldGame  # pylint: disable=import-outside-toplevel
    from selfrl_jax.envs.textworld_express import TextWorldExpressGame  # pylint: disable=import-outside-toplevel
    from selfrl_jax.train.builders import build_task  # pylint: disable=import-outside-toplevel
    game = build_task(cfg).config   # the game the task's prompts show
    adapter = (TextWorldExpressGame(game.game, game.game_params, s.max_steps) if s.env == "twx"
               else ScienceWorldGame(game.task_name, game.simplification, s.max_steps))
    return CallbackEnv(PooledGameEnv(tokenizer, adapter, obs_len=s.obs_len, chat=cfg.task.chat,
                                     step_timeout_s=s.env_step_timeout_s))
  view = _grid_view(cfg)
  spec = GridSpec.for_tokenizer(tokenizer, horizon=s.max_steps, slip_prob=s.slip_prob,
                                show_distance=view.show_distance, show_progress=view.show_progress)
  return GridEnv(spec) if s.env == "grid" else CallbackEnv(GridHostEnv(spec))


def _grid_view(cfg):
  """The grid task's config (`grid_nav.GridNavConfig`): what its prompts and the environment's
  observations show (`show_distance`, `show_progress`), so the two always agree."""
  from selfrl_jax.train.builders import build_task  # pylint: disable=import-outside-toplevel
  return build_task(cfg).config


def build(cfg, tokenizer, reward_fn, sampling, records=None):
  from selfrl_jax.algos.self_guide import SelfGuide  # pylint: disable=import-outside-toplevel
  from selfrl_jax.rollouts.segments import turn_end_ids  # pylint: disable=import-outside-toplevel
  del reward_fn, records
  s = cfg.self_guide
  if s.step_stop:
    stop = _single_id(tokenizer, s.step_stop, "step_stop")
    sampling = dataclasses.replace(sampling, stop_ids=tuple(dict.fromkeys((*sampling.stop_ids, stop))))
  return SelfGuide(
      sampling=sampling, group_size=cfg.rl.group_size, advantage=cfg.rl.advantage, kl_coef=cfg.rl.kl_coef,
      env=make_env(cfg, tokenizer), max_steps=s.max_steps, end_ids=turn_end_ids(tokenizer, cfg.task.chat),
      guide_close_ids=tuple(int(i) for i in tokenizer.encode(s.guide_close)),
      label_ids=tuple(tuple(tokenizer.encode(label)) for label in s.labels),
      instruction_ids=mode_prefix_ids(tokenizer, s.instruction, cfg.task.chat),
      plain_instruction_ids=mode_prefix_ids(tokenizer, s.plain_instruction, cfg.task.chat),
      history_window=s.history_window, use_guidance=s.use_guidance, schedule=schedule_of(s), sg_scale=s.sg_scale,
      agg=s.agg, skip_first=s.skip_first,
      step_credit=s.step_credit, sg_reward_on_guide_tokens=s.sg_reward_on_guide_tokens, env_reward=s.env_reward,
      invalid_action_penalty=s.invalid_action_penalty, eval_without_guidance=s.eval_without_guidance,
      eval_temperature=s.eval_temperature)


# --- the grid toy's warm start ---------------------------------------------------------------------

def scripted_episode(goal: int, start: int, horizon: int, slip_prob: float, skill: float, label_accuracy: float,
                     guided: bool, labels, rng: np.random.Generator,
                     show_distance: bool = False, guide_close: str = "|",
                     show_progress: bool = False) -> tuple[list[str], bool]:
  """One demonstrated grid episode: the text of each step (label + guide_close + move, or the move alone) and
  the observation after it; returns (texts alternating step, observation, ..., step) and success.

  The move is a shortest-path move with probability `skill`, else uniform (a weak prior); the label
  (from step 2 on) is the true progress of the previous move with probability `label_accuracy`,
  else one of the two others; step 1's label is neutral (nothing to judge yet). Observations are
  rendered as the environment renders them (`grid_nav.observation_text`: with the BFS distance when
  `show_distance`, the move's progress when `show_progress`).
  """
  from selfrl_jax.data.grid_nav import MOVES, maze_tables, observation_text  # pylint: disable=import-outside-toplevel
  t = maze_tables()
  cell, texts, progress, success = start, [], 0, False
  for step in range(horizon):
    if rng.random() < skill:
      best = t.dist_CxC[goal, t.next_cell_Cx4[cell]]
      move = int(rng.choice(np.flatnonzero(best == best.min())))
    else:
      move = int(rng.integers(4))
    text = MOVES[move]
    if guided:
      if step == 0:
        label = labels[1]
      else:
        true = {1: 0, 0: 1, -1: 2}[progress]
        label = labels[true] if rng.random() < label_accuracy else labels[int(rng.choice([k for k in range(3) if k != true]))]
      text = label + guide_close + text
    texts.append(text)
    actual = int(rng.integers(4)) if rng.random() < slip_prob else move
    new = int(t.next_cell_Cx4[cell, actual])
    progress = int(np.sign(t.dist_CxC[goal, cell] - t.dist_CxC[goal, new]))
    cell = new
    if cell == goal:
      return texts, True
    if step < horizon - 1:
      texts.append(observation_text(cell, goal, progress, show_distance, show_progress))
  return texts, success


def grid_demos(cfg: ml_collections.ConfigDict, algorithm, batches, tokenizer, seed: int):
  """`sft.demos = "self_guide_grid"`: scripted episodes (`scripted_episode`) on the train tasks,
  [instruction | prompt | y_1 EOS | o_1 | y_2 EOS | ...], loss on the steps' ids only."""
  from selfrl_jax.data.grid_nav import maze_tables  # pylint: disable=import-outside-toplevel
  from selfrl_jax.data.records import normalize_record, record_meta  # pylint: disable=import-outside-toplevel
  s = cfg.self_guide
  size = maze_tables().size
  eos = tokenizer.eos_ids[0]
  view = _grid_view(cfg)
  width = (len(algorithm.instruction_ids) + cfg.rl.max_prompt_len
           + s.max_steps * (cfg.rl.max_new_tokens + 1) + (s.max_steps - 1) * (algorithm.env.obs_len + 1))

  def stream():
    rng = np.random.default_rng(seed)
    for batch in batches:
      records = batches.records(batch.example_id_P)
      tokens = np.full((len(records), width), tokenizer.pad_id, np.int32)
      mask, ok = np.zeros(tokens.shape, bool), np.zeros(tokens.shape, bool)
      for row, rec in enumerate(records):
        rec = normalize_record(rec)
        meta = record_meta(rec)
        goal, start = meta["goal"][0] * size + meta["goal"][1], meta["start"][0] * size + meta["start"][1]
        guided = rng.random() < s.sft_guided_frac
        texts, _ = scripted_episode(goal, start, s.max_steps, s.slip_prob, s.sft_action_skill, s.sft_label_accuracy,
                                    guided, tuple(s.labels), rng, view.show_distance, s.guide_close,
                                    view.show_progress)
        prefix = (s.instruction if guided else s.plain_instruction) + rec["prompt"]
        ids, loss = tokenizer.encode(prefix), [False] * len(tokenizer.encode(prefix))
        for k, text in enumerate(texts):
          part = tokenizer.encode(text) + ([eos] if k % 2 == 0 else [])
          ids += part
          loss += [k % 2 == 0] * len(part)
        tokens[row, :len(ids)], ok[row, :len(ids)], mask[row, :len(ids)] = ids, True, loss
      yield {"tokens_BxS": tokens, "valid_BxS": ok, "loss_mask_BxS": mask}

  settings = {"self_guide": {k: s[k] for k in ("sft_label_accuracy", "sft_action_skill", "sft_guided_frac",
                                               "max_steps", "slip_prob", "labels", "instruction", "plain_instruction",
                                               "guide_close")},
              "width": width, "show_distance": view.show_distance, "show_progress": view.show_progress}
  return stream(), settings

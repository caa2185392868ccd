"""A format warm start for Self-Guide on text games (`sft.demos = "self_guide_games"`).

A small chat model does not write the step template zero-shot (SmolLM2-135M-Instruct: no step of
its first RL iteration closed the guidance, configs/self_guide/README.md), so every group's returns
are equal and GRPO cannot move it. These demonstrations teach the template: each train game's gold
action path, played through the run's own host environment so the observation turns are exactly
the ids a rollout appends, every step written as

    guided:  "<guide>{label} {judgement}</guide><action>{a_t}</action>" + the stop id
    plain:   "<action>{a_t}</action>" + the stop id

after [mode instruction | task prompt], loss on the steps' ids only. Step 1's label is neutral
(nothing to judge yet); later steps' are positive (a gold action makes progress). They teach the
format and the gold path, not judgement: keep `sft.steps` small.
"""

from __future__ import annotations

import ml_collections
import numpy as np

FIRST_JUDGEMENT = "Nothing has happened yet."
PROGRESS_JUDGEMENT = "My last action moved me closer to the goal."


def step_text(action: str, label: str | None, judgement: str) -> str:
  """One demonstrated step in the template (no guidance segment when `label` is None)."""
  act = f"<action>{action}</action>"
  return act if label is None else f"<guide>{label} {judgement}</guide>{act}"


def game_demos(cfg: ml_collections.ConfigDict, algorithm, batches, tokenizer, seed: int):
  """Demonstration batches {"tokens_BxS", "valid_BxS", "loss_mask_BxS"} and the settings keying
  their cache. The rows of a batch play their games side by side in the host environment
  (`algorithm.env.host`, a `PooledGameEnv`); a game that fails ends its demonstration there.

  Raises:
    ValueError: `self_guide.env` is not a host text game.
  """
  host = getattr(algorithm.env, "host", None)
  if host is None or host.has_progress:
    raise ValueError(f"config.sft.demos: 'self_guide_games' plays text games; self_guide.env={cfg.self_guide.env!r} "
                     "is not one (the grid's warm start is 'self_guide_grid').")
  s = cfg.self_guide
  stop = algorithm.sampling.stop_ids[0]
  n, h = cfg.rl.max_new_tokens, s.max_steps
  width = (max(len(algorithm.instruction_ids), len(algorithm.plain_instruction_ids)) + cfg.rl.max_prompt_len
           + h * n + (h - 1) * (len(algorithm.end_ids) + host.obs_len))
  labels = tuple(s.labels)

  def stream():
    rng = np.random.default_rng(seed)
    for batch in batches:
      records = batches.records(batch.example_id_P)
      b = len(records)
      guided = rng.random(b) < s.sft_guided_frac
      gold = [list(_meta(r)["gold_actions"])[:h] for r in records]
      rows = [list(algorithm.instruction_ids if g else algorithm.plain_instruction_ids)
              + [int(i) for i, ok in zip(p, v) if ok]
              for g, p, v in zip(guided, np.asarray(batch.prompt_tokens_PxT), np.asarray(batch.prompt_valid_PxT))]
      losses = [[False] * len(r) for r in rows]
      host.reset(np.asarray(batch.example_id_P), np.asarray(batch.target_tokens_PxA), 1, seed)
      done = np.array([not g for g in gold])
      for t in range(h):
        steps = [tokenizer.encode(step_text(gold[r][t], (labels[1] if t == 0 else labels[0]) if guided[r] else None,
                                            FIRST_JUDGEMENT if t == 0 else PROGRESS_JUDGEMENT)) + [stop]
                 if not done[r] else [] for r in range(b)]
        if any(len(x) > n for x in steps):
          raise ValueError(f"config.rl.max_new_tokens={n}: a demonstrated step takes {max(map(len, steps))} ids.")
        action_BxN = np.full((b, n), tokenizer.pad_id, np.int32)
        valid_BxN = np.zeros((b, n), bool)
        for r, ids in enumerate(steps):
          action_BxN[r, :len(ids)], valid_BxN[r, :len(ids)] = ids, True
          rows[r] += ids
          losses[r] += [True] * len(ids)
        out = host.step(action_BxN, valid_BxN, np.zeros(b, np.float32))
        for r in range(b):
          if steps[r] and not out.done_B[r] and t + 1 < len(gold[r]):   # the next step follows an observation
            obs = [int(i) for i, ok in zip(out.obs_BxO[r], out.obs_valid_BxO[r]) if ok]
            rows[r] += obs
            losses[r] += [False] * len(obs)
        done |= np.asarray(out.done_B) | np.array([t + 1 >= len(g) for g in gold])
        if done.all():
          break
      tokens = np.full((b, width), tokenizer.pad_id, np.int32)
      valid, mask = np.zeros(tokens.shape, bool), np.zeros(tokens.shape, bool)
      for r, (ids, loss) in enumerate(zip(rows, losses)):
        tokens[r, :len(ids)], valid[r, :len(ids)], mask[r, :len(ids)] = ids, True, loss
      yield {"tokens_BxS": tokens, "valid_BxS": valid, "loss_mask_BxS": mask}

  settings = {"self_guide_games": {k: s[k] for k in ("sft_guided_frac", "max_steps", "labels", "instruction",
                                                      "plain_instruction", "obs_len")},
              "judgements": (FIRST_JUDGEMENT, PROGRESS_JUDGEMENT), "width": width}
  return stream(), settings


def _meta(record) -> dict:
  from selfrl_jax.data.records import normalize_record, record_meta  # pylint: disable=import-outside-toplevel
  return record_meta(normalize_record(record))

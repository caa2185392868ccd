"""One helper that builds every rollout's token layout from segments (single-turn, two-turn, agents).

    between = after_turn(turn1_out.stopped_B, end_ids, appended_BxI, appended_valid_BxI)  # also fed to the cache
    rollout = pack_segments([context(prompt_BxT, prompt_valid_BxT),
                             generated(turn1_out, turn=1, params=params1),
                             between,                                         # [end of turn | appended]
                             generated(turn2_out, turn=2, params=params2)])

The layout is the KV cache's slot layout: `[prompt | y1 | end | appended | y2 | ...]`, each segment
a static slice, with holes (invalid slots) where a row's prompt was padded, a turn stopped early or
a row appended fewer ids. Generated segments carry the loss mask, sampler log-probs, turn id and
sampling temperature of their tokens; context segments carry none. The last generated segment is
the rollout's `response_*` (what a single-turn reward scores).

A turn that hits `max_new_tokens` has no end-of-turn token, so whatever follows it (the next user
turn, an observation, a hindsight prompt) would sit inside the unfinished assistant turn. Every
multi-turn layout therefore goes through `after_turn`, which closes truncated rows with the ids the
chat template writes at the end of an assistant turn (`turn_end_ids`) and leaves a hole on rows
that stopped (their stop token is already the turn's last generated token).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

from selfrl_jax.models.tokenizers import Tokenizer
from selfrl_jax.rollouts.types import Rollout
from selfrl_jax.sampling.sampler import SampleOutput, SamplingParams


@dataclasses.dataclass(frozen=True)
class Segment:
  """A [B, N] slice of the layout. Build with `context` or `generated`.

  Attributes:
    tokens_BxN, valid_BxN: ids and real-token mask.
    logp_BxN: sampler log-probs (generated segments; None for context).
    stopped_B: the turn ended with a stop token (generated segments).
    turn: turn id of generated tokens (0 for context).
    temperature: sampling temperature of the tokens (1.0 for context and greedy turns).
    trained: generated tokens enter the loss mask.
  """

  tokens_BxN: jax.Array
  valid_BxN: jax.Array
  logp_BxN: jax.Array | None = None
  stopped_B: jax.Array | None = None
  turn: int = 0
  temperature: float = 1.0
  trained: bool = False


def context(tokens_BxN: jax.Array, valid_BxN: jax.Array) -> Segment:
  """Tokens the policy conditions on but did not generate (prompt, instruction, observation)."""
  return Segment(tokens_BxN=tokens_BxN, valid_BxN=valid_BxN.astype(bool))


def generated(out: SampleOutput, turn: int, params: SamplingParams, trained: bool = True) -> Segment:
  """A sampled turn; `trained=False` keeps it out of the loss (e.g. a turn sampled for metrics only)."""
  return Segment(tokens_BxN=out.tokens_BxN, valid_BxN=out.valid_BxN, logp_BxN=out.logp_BxN,
                 stopped_B=out.stopped_B, turn=turn, temperature=params.temperature or 1.0, trained=trained)


def turn_end_ids(tokenizer: Tokenizer, chat: bool) -> tuple[int, ...]:
  """Ids that end an assistant turn: the chat template's end-of-turn token(s) (`chat`), else the
  tokenizer's eos (the plain format of the synthetic tasks: `x y1 <eos> p y2 <eos>`).

  Found by rendering [user, assistant("2")]: the ids after the content up to and including the last
  stop id. Raises ValueError when the rendering has no stop id after the content.
  """
  if not chat:
    return (int(tokenizer.eos_ids[0]),)
  conv = [{"role": "user", "content": "1"}, {"role": "assistant", "content": "2"}]
  rendered = list(tokenizer.apply_chat_template(conv, add_generation_prompt=False))
  content = list(tokenizer.encode("2"))
  ends = [i for i, t in enumerate(rendered) if t in tokenizer.eos_ids]
  starts = [i + len(content) for i in range(len(rendered) - len(content) + 1)
            if rendered[i:i + len(content)] == content]
  starts = [i for i in starts if ends and i <= ends[-1]]
  if not starts:
    raise ValueError("turn_end_ids: the chat template renders no stop token after the assistant's content; "
                     "cannot tell how it closes a turn.")
  return tuple(int(t) for t in rendered[starts[-1]:ends[-1] + 1])


def after_turn(stopped_B: jax.Array, end_ids: Sequence[int], appended_BxI: jax.Array,
               appended_valid_BxI: jax.Array) -> Segment:
  """The context between a generated turn and the next one, [B, E + I]: `end_ids` on the rows the
  turn left truncated (`stopped_B` False: no stop token), a hole on the rows that stopped, then the
  appended ids.

  Feed `tokens_BxN` / `valid_BxN` of the result to `continue_generation` and put the segment in the
  layout, so the cache and the trainer see the same context.
  """
  if len(end_ids) == 0:
    raise ValueError("after_turn: end_ids is empty; use `turn_end_ids(tokenizer, chat)`.")
  b = stopped_B.shape[0]
  end_BxE = jnp.broadcast_to(jnp.asarray(tuple(end_ids), jnp.int32)[None], (b, len(end_ids)))
  end_valid_BxE = jnp.broadcast_to(~stopped_B.astype(bool)[:, None], end_BxE.shape)
  return context(jnp.concatenate([end_BxE, appended_BxI.astype(jnp.int32)], axis=1),
                 jnp.concatenate([end_valid_BxE, appended_valid_BxI.astype(bool)], axis=1))


def trained_slots(segments: Sequence[Segment]) -> tuple[int, ...]:
  """The slots of the trained segments in `pack_segments`' layout (static: from the segments' widths),
  the `Rollout.loss_slots` of a layout whose context is long between trained turns."""
  slots, offset = [], 0
  for seg in segments:
    width = seg.tokens_BxN.shape[1]
    if seg.trained:
      slots.extend(range(offset, offset + width))
    offset += width
  return tuple(slots)


def pack_segments(segments: Sequence[Segment]) -> Rollout:
  """Concatenates segments into a Rollout; the last generated segment is the response.

  Raises:
    ValueError: no generated segment, or segments with different row counts.
  """
  responses = [seg for seg in segments if seg.logp_BxN is not None]
  if not responses:
    raise ValueError("pack_segments: the layout has no generated segment (nothing to train or score).")
  rows = {seg.tokens_BxN.shape[0] for seg in segments}
  if len(rows) != 1:
    raise ValueError(f"pack_segments: segments have different row counts {sorted(rows)}.")

  def column(fn):
    return jnp.concatenate([fn(seg) for seg in segments], axis=1)

  zeros = lambda seg, dtype: jnp.zeros(seg.tokens_BxN.shape, dtype)  # noqa: E731
  last = responses[-1]
  return Rollout(
      tokens_BxS=column(lambda seg: seg.tokens_BxN),
      valid_BxS=column(lambda seg: seg.valid_BxN),
      loss_mask_BxS=column(lambda seg: seg.valid_BxN if seg.trained else zeros(seg, bool)),
      sampler_logp_BxS=column(lambda seg: zeros(seg, jnp.float32) if seg.logp_BxN is None else seg.logp_BxN),
      turn_id_BxS=column(lambda seg: seg.turn * seg.valid_BxN.astype(jnp.int32)),
      response_tokens_BxN=last.tokens_BxN, response_valid_BxN=last.valid_BxN, stopped_B=last.stopped_B,
      temperature_BxS=column(lambda seg: jnp.full(seg.tokens_BxN.shape, seg.temperature, jnp.float32)))

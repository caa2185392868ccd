"""Two-attempt (and K-attempt) self-correction rollouts, token in, token out (SCoRe, score.md §2.5).

    rollout, extras = two_turn_rollout(model, prompts_PxT, valid_PxT, instr_ids, end_ids, key, params1, params2, G)
    rollout.tokens_BxS        # [prompt T | y1 N1 | end E | instr I | y2 N2], holes where a turn stopped early
    rollout.turn_id_BxS       # 1 on y1 tokens, 2 on y2 tokens, 0 on prompt / instruction / holes
    extras.y1_tokens_BxN      # the first attempt, so rewards of both turns can be computed

Turn 2 continues turn 1's KV cache: the end-of-turn ids where y1 was truncated (`segments.after_turn`)
and the instruction ids (tokenized once, static) are appended to the cache and y2 is sampled after them. Nothing is decoded to text and re-tokenized, so the trainer's
forward pass over `tokens_BxS` sees exactly the context the sampler saw.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import struct

from selfrl_jax.models.decoder import Decoder
from selfrl_jax.models.tokenizers import Tokenizer
from selfrl_jax.rollouts.segments import after_turn, context, generated, pack_segments
from selfrl_jax.rollouts.types import Rollout
from selfrl_jax.sampling.sampler import SamplingParams, continue_generation, generate


@struct.dataclass
class TwoTurnExtras:
  """The first attempt of a two-turn rollout (the Rollout's `response_*` fields hold the second).

  Attributes:
    y1_tokens_BxN: first-attempt ids (pad after the stop token).
    y1_valid_BxN: generated tokens of the first attempt (including its stop token).
    y1_stopped_B: the first attempt ended with a stop token (False: truncated).
  """

  y1_tokens_BxN: jax.Array
  y1_valid_BxN: jax.Array
  y1_stopped_B: jax.Array


@struct.dataclass
class TwoTurnRollout(Rollout):
  """A Rollout that also carries the first attempt; what `SCoRe.rollout` returns."""

  extras: TwoTurnExtras = None  # a default only because Rollout ends with one; always set


def attach_extras(rollout: Rollout, extras: TwoTurnExtras) -> TwoTurnRollout:
  fields = {name: getattr(rollout, name) for name in Rollout.__dataclass_fields__}
  return TwoTurnRollout(**fields, extras=extras)


def turn1_view(rollout: TwoTurnRollout) -> TwoTurnRollout:
  """The same rollout with `response_*` pointing at y1, so any single-turn `RewardFn` scores turn 1."""
  e = rollout.extras
  return rollout.replace(response_tokens_BxN=e.y1_tokens_BxN, response_valid_BxN=e.y1_valid_BxN,
                         stopped_B=e.y1_stopped_B)


def response_view(tokens_BxN: jax.Array, valid_BxN: jax.Array, stopped_B: jax.Array) -> Rollout:
  """A Rollout holding only a response, so any single-turn `RewardFn` can score one attempt."""
  zeros = jnp.zeros(tokens_BxN.shape, jnp.int32)
  return Rollout(tokens_BxS=tokens_BxN, valid_BxS=valid_BxN, loss_mask_BxS=valid_BxN,
                 sampler_logp_BxS=zeros.astype(jnp.float32), turn_id_BxS=zeros, response_tokens_BxN=tokens_BxN,
                 response_valid_BxN=valid_BxN, stopped_B=stopped_B)


def _instruction_BxI(instr_ids: Sequence[int], batch_size: int) -> tuple[jax.Array, jax.Array]:
  if len(instr_ids) == 0:
    raise ValueError("instr_ids is empty; the self-correction instruction needs at least one token "
                     "(the toy uses '<fix>').")
  instr_I = jnp.asarray(tuple(instr_ids), jnp.int32)
  return (jnp.broadcast_to(instr_I[None], (batch_size, instr_I.shape[0])),
          jnp.ones((batch_size, instr_I.shape[0]), bool))


def two_turn_rollout(model: Decoder, prompt_tokens_PxT: jax.Array, prompt_valid_PxT: jax.Array,
                     instr_ids: Sequence[int], end_ids: Sequence[int], key: jax.Array, params1: SamplingParams,
                     params2: SamplingParams, group_size: int) -> tuple[Rollout, TwoTurnExtras]:
  """Samples y1 ~ pi(.|x) and y2 ~ pi(.|x, y1, p) for `group_size` rollouts per prompt (§2.5 steps 1–3).

  Args:
    model: the decoder.
    prompt_tokens_PxT, prompt_valid_PxT: left-padded prompts.
    instr_ids: static self-correction instruction ids p (see `correction_instruction_ids`).
    end_ids: ids that close a truncated y1 (`segments.turn_end_ids`), so the context of y2 is the chat
      template's rendering of [x, y1, p] for truncated and finished rows alike.
    key: PRNG key (split into one key per turn).
    params1, params2: decoding settings of turn 1 (N1 slots) and turn 2 (N2 slots).
    group_size: rollouts per prompt; rows are prompt-major (B = P * G). One y2 per y1 (§7 item 7).

  Returns:
    (Rollout over [prompt | y1 | end | instr | y2] with loss on y1 and y2 tokens and response = y2,
     TwoTurnExtras holding y1).
  """
  key1, key2 = jax.random.split(key)
  out1 = generate(model, prompt_tokens_PxT, prompt_valid_PxT, key1, params1, group_size=group_size,
                  extra_capacity=len(end_ids) + len(instr_ids) + params2.max_new_tokens)
  b = out1.tokens_BxN.shape[0]
  between = after_turn(out1.stopped_B, end_ids, *_instruction_BxI(instr_ids, b))
  out2 = continue_generation(model, out1.cache, between.tokens_BxN, between.valid_BxN, key2, params2)

  prompt_BxT = jnp.repeat(prompt_tokens_PxT, group_size, axis=0)
  prompt_valid_BxT = jnp.repeat(prompt_valid_PxT.astype(bool), group_size, axis=0)
  rollout = pack_segments([context(prompt_BxT, prompt_valid_BxT), generated(out1, turn=1, params=params1),
                           between, generated(out2, turn=2, params=params2)])
  extras = TwoTurnExtras(y1_tokens_BxN=out1.tokens_BxN, y1_valid_BxN=out1.valid_BxN,
                         y1_stopped_B=out1.stopped_B)
  return rollout, extras


class MultiAttemptOutput(NamedTuple):
  """K sequential attempts per rollout (attempt k sees the prompt and attempts 1..k-1, each closed
  where truncated and followed by the instruction).

  Attributes:
    tokens_KxBxN: ids of each attempt (pad after the stop token).
    valid_KxBxN: generated tokens of each attempt.
    logp_KxBxN: sampler log-probs (0 on padding).
    stopped_KxB: the attempt ended with a stop token.
  """

  tokens_KxBxN: jax.Array
  valid_KxBxN: jax.Array
  logp_KxBxN: jax.Array
  stopped_KxB: jax.Array


def multi_attempt_rollout(model: Decoder, prompt_tokens_PxT: jax.Array, prompt_valid_PxT: jax.Array,
                          instr_ids: Sequence[int], end_ids: Sequence[int], key: jax.Array,
                          params: SamplingParams, group_size: int, num_attempts: int) -> MultiAttemptOutput:
  """K >= 2 attempts in one cache ([prompt | y1 | end | p | y2 | end | p | ... | yK]) for evaluation
  (App. A.1, Fig. 8); `end` holds `end_ids` where the attempt before it was truncated.

  Attempts 2..K run under one `lax.scan`, so K does not multiply compile time. With K = 2 and the
  same settings for both turns, attempts 1 and 2 equal `two_turn_rollout`'s y1 and y2 under greedy
  decoding (sampling keys differ).
  """
  if num_attempts < 2:
    raise ValueError(f"multi_attempt_rollout: num_attempts must be >= 2, got {num_attempts}.")
  per_turn = len(end_ids) + len(instr_ids) + params.max_new_tokens
  key1, key_rest = jax.random.split(key)
  out1 = generate(model, prompt_tokens_PxT, prompt_valid_PxT, key1, params, group_size=group_size,
                  extra_capacity=(num_attempts - 1) * per_turn)
  instr_BxI, instr_valid_BxI = _instruction_BxI(instr_ids, out1.tokens_BxN.shape[0])

  def attempt(carry, k):
    cache, prev_stopped_B = carry
    between = after_turn(prev_stopped_B, end_ids, instr_BxI, instr_valid_BxI)
    out = continue_generation(model, cache, between.tokens_BxN, between.valid_BxN,
                              jax.random.fold_in(key_rest, k), params)
    return (out.cache, out.stopped_B), (out.tokens_BxN, out.valid_BxN, out.logp_BxN, out.stopped_B)

  _, (tokens, valid, logp, stopped) = jax.lax.scan(attempt, (out1.cache, out1.stopped_B),
                                                   jnp.arange(num_attempts - 1))
  stack = lambda first, rest: jnp.concatenate([first[None], rest], axis=0)  # noqa: E731
  return MultiAttemptOutput(tokens_KxBxN=stack(out1.tokens_BxN, tokens), valid_KxBxN=stack(out1.valid_BxN, valid),
                            logp_KxBxN=stack(out1.logp_BxN, logp), stopped_KxB=stack(out1.stopped_B, stopped))


def correction_instruction_ids(tokenizer: Tokenizer, text: str, chat: bool = False) -> tuple[int, ...]:
  """Token ids of the self-correction instruction p, computed once on the host.

  Plain (`chat=False`): `tokenizer.encode(text)` (the toy's "<fix>"). Chat: the ids a chat template
  puts between the end of an assistant turn and the next assistant turn when `text` is the user turn
  in between (e.g. "\\n<|im_start|>user\\n{text}<|im_end|>\\n<|im_start|>assistant\\n"), found by
  rendering a conversation with and without that user turn; y1 ends with the tokenizer's EOS (the
  end-of-turn token), so what follows it is exactly these ids.
  """
  if not chat:
    ids = tuple(tokenizer.encode(text))
  else:
    conv = [{"role": "user", "content": "1"}, {"role": "assistant", "content": "2"}]
    base = tokenizer.apply_chat_template(conv, add_generation_prompt=False)
    full = tokenizer.apply_chat_template(conv + [{"role": "user", "content": text}], add_generation_prompt=True)
    ends = [i for i, t in enumerate(base) if t in tokenizer.eos_ids]
    if not ends or list(full[:len(base)]) != list(base):
      raise ValueError("correction_instruction_ids: the chat template does not render the conversation "
                       "as a prefix ending in an EOS token; pass chat=False and spell the turn out in text.")
    ids = tuple(full[ends[-1] + 1:])
  if not ids:
    raise ValueError(f"correction_instruction_ids: instruction {text!r} encodes to no tokens.")
  return tuple(int(i) for i in ids)

"""Jit-compiled sampling: prefill, then a `lax.while_loop` decode that stops when all rows finish.

    params = SamplingParams(max_new_tokens=64, temperature=1.0, stop_ids=tok.eos_ids, pad_id=tok.pad_id)
    out = generate(model, prompt_tokens_PxT, prompt_valid_PxT, key, params, group_size=G)
    out.tokens_BxN, out.logp_BxN, out.valid_BxN      # B = P * G, rows grouped by prompt
    # Second turn (token in, token out): append instruction ids to the same cache and sample again.
    out2 = continue_generation(model, out.cache, instr_BxI, instr_valid_BxI, key2, params)
    # Hidden states on request (no second forward pass): SamplingParams(..., return_hidden=True)
    out.hidden_BxNxD, out.context_hidden_BxD   # == forward_full(...) at [prompt | response] slots

All functions take the NNX model and are meant to be traced inside one `jax.jit` (see `Sampler`).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from selfrl_jax.models.decoder import Decoder
from selfrl_jax.sampling.kv_cache import KVCache, append, init_cache, repeat_rows


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """Static decoding settings (hashable: a change recompiles).

  Attributes:
    max_new_tokens: response buffer length N.
    temperature: softmax temperature; 0 means greedy.
    top_k: keep the k most likely tokens (0 = off).
    top_p: nucleus threshold (1.0 = off).
    stop_ids: a row finishes after emitting any of these (the stop token is kept and valid).
    pad_id: written after a row has finished.
    return_hidden: also return final-layer hidden states (`SampleOutput.hidden_BxNxD`,
      `context_hidden_BxD`) read off the sampling forward passes. Does not change what is sampled;
      False compiles exactly the program without hidden states.
  """

  max_new_tokens: int
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  stop_ids: tuple[int, ...] = ()
  pad_id: int = 0
  return_hidden: bool = False

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}.")
    if self.temperature < 0:
      raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}.")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}.")
    if self.top_k < 0:
      raise ValueError(f"SamplingParams.top_k must be >= 0, got {self.top_k}.")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0


class SampleOutput(NamedTuple):
  """One sampled turn.

  Attributes:
    tokens_BxN: sampled ids; `pad_id` after a row's stop token.
    logp_BxN: log-prob of each sampled token under softmax(logits / temperature) (plain softmax
      when greedy), before top-k/top-p truncation — the quantity the trainer recomputes; 0 on padding.
    valid_BxN: token was generated (up to and including the stop token).
    length_B: number of valid tokens.
    stopped_B: the row emitted a stop token (False: truncated at max_new_tokens).
    cache: cache holding prompt and response; its slot layout is [prompt | N response slots].
    hidden_BxNxD: (only with `return_hidden`, else None) final-layer hidden state (after the final
      norm) computed when slot n's token was fed, i.e. the state whose logits chose token n + 1;
      equals `forward_full` at that token's slot of the rollout buffer. 0 where not `valid_BxN`.
    context_hidden_BxD: (only with `return_hidden`, else None) hidden state of the last valid
      token before this turn (the state whose logits chose token 0): the last prompt token for
      `generate`, the last appended token for `continue_generation` (the previous turn's last
      token for a row that appended nothing).
  """

  tokens_BxN: jax.Array
  logp_BxN: jax.Array
  valid_BxN: jax.Array
  length_B: jax.Array
  stopped_B: jax.Array
  cache: KVCache
  hidden_BxNxD: Optional[jax.Array] = None
  context_hidden_BxD: Optional[jax.Array] = None


class DecodeState(NamedTuple):
  """The `decode` while-loop carry.

  Attributes:
    step: next response slot to fill (scalar int32).
    tokens_BxN: sampled ids so far; `pad_id` elsewhere.
    logp_BxN: their log-probs; 0 elsewhere.
    done_B: row has emitted a stop token.
    cache: KV cache holding everything fed so far.
    logits_BxV: next-token logits of each row.
    hidden_BxNxD: hidden states so far (`SamplingParams.return_hidden`), else None (no carry).
  """

  step: jax.Array
  tokens_BxN: jax.Array
  logp_BxN: jax.Array
  done_B: jax.Array
  cache: KVCache
  logits_BxV: jax.Array
  hidden_BxNxD: Optional[jax.Array] = None


def _truncate(logits_BxV: jax.Array, params: SamplingParams) -> jax.Array:
  """Applies top-k and top-p by setting excluded logits to -inf."""
  neg_inf = jnp.finfo(logits_BxV.dtype).min
  if params.top_k > 0:
    kth_B = jax.lax.top_k(logits_BxV, params.top_k)[0][:, -1]
    logits_BxV = jnp.where(logits_BxV < kth_B[:, None], neg_inf, logits_BxV)
  if params.top_p < 1.0:
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it < p.
    mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    keep_BxV = mass_before_BxV < params.top_p
    threshold_B = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1)
    logits_BxV = jnp.where(logits_BxV < threshold_B[:, None], neg_inf, logits_BxV)
  return logits_BxV


_CDF_BLOCK = 256


def _categorical(logits_BxV: jax.Array, key: jax.Array) -> jax.Array:
  """Exact categorical draw by two-level inverse-CDF sampling: 2 uniforms per row.

  `jax.random.categorical` draws B*V Gumbel variates per token; at V = 49152 generating them costs
  several times the LM-head matmul on CPU. Here a block of `_CDF_BLOCK` ids is picked by the
  cumulative block masses, then an id inside it (two short cumsums keep float32 rounding small).
  Zero-probability ids (top-k / top-p) are never picked: a zero-mass entry never raises the CDF.
  """
  b, v = logits_BxV.shape
  probs_BxV = jax.nn.softmax(logits_BxV.astype(jnp.float32), axis=-1)
  probs_BxCxK = jnp.pad(probs_BxV, ((0, 0), (0, -v % _CDF_BLOCK))).reshape(b, -1, _CDF_BLOCK)
  key_block, key_id = jax.random.split(key)

  def pick(mass_BxM, k):
    cdf_BxM = jnp.cumsum(mass_BxM, axis=-1)
    u_Bx1 = jax.random.uniform(k, (b, 1)) * cdf_BxM[:, -1:]
    # First index whose CDF exceeds u (u < total, so never past the end).
    return jnp.minimum((cdf_BxM <= u_Bx1).sum(axis=-1), mass_BxM.shape[1] - 1)

  block_B = pick(probs_BxCxK.sum(axis=-1), key_block)
  inner_BxK = jnp.take_along_axis(probs_BxCxK, block_B[:, None, None], axis=1)[:, 0]
  return (block_B * _CDF_BLOCK + pick(inner_BxK, key_id)).astype(jnp.int32)


def sample_token(logits_BxV: jax.Array, key: jax.Array, params: SamplingParams,
                 ) -> tuple[jax.Array, jax.Array]:
  """Draws one token per row; returns (token_B, logp_B) with logp as documented in SampleOutput."""
  if params.greedy:
    token_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logp_BxV = jax.nn.log_softmax(logits_BxV, axis=-1)
  else:
    scaled_BxV = logits_BxV / params.temperature
    logp_BxV = jax.nn.log_softmax(scaled_BxV, axis=-1)
    token_B = _categorical(_truncate(scaled_BxV, params), key)
  logp_B = jnp.take_along_axis(logp_BxV, token_B[:, None], axis=-1)[:, 0]
  return token_B, logp_B


def decode(model: Decoder, cache: KVCache, logits_BxV: jax.Array, key: jax.Array,
           params: SamplingParams, active_B: jax.Array | None = None) -> SampleOutput:
  """Samples up to `max_new_tokens` tokens after the cache's content, stopping early when all rows stop.

  Rows with `active_B` False (e.g. an agent episode that already ended) generate nothing: their
  slots stay invalid, their log-probs 0, and they count as stopped.

  The returned cache always ends exactly `max_new_tokens` slots after it started (unused slots are
  invalid), so every turn occupies a static slice of the slot layout. With `params.return_hidden`
  the cache must track `last_hidden_BxD` (its last `append` ran with `return_hidden=True`); it is
  the turn's `context_hidden_BxD`.
  """
  b, n = logits_BxV.shape[0], params.max_new_tokens
  start = cache.end_index
  stop_ids = jnp.asarray(params.stop_ids or (-1,), jnp.int32)
  if params.return_hidden:
    if cache.last_hidden_BxD is None:
      raise ValueError("decode(return_hidden=True) needs a cache filled by append(..., return_hidden=True).")
    context_hidden_BxD = cache.last_hidden_BxD
    hidden_BxNxD = jnp.zeros((b, n, context_hidden_BxD.shape[-1]), context_hidden_BxD.dtype)
  else:
    cache = cache.replace(last_hidden_BxD=None)  # keeps the loop carry free of a stale hidden state
    context_hidden_BxD = hidden_BxNxD = None

  def cond(state: DecodeState):
    return (state.step < n) & ~jnp.all(state.done_B)

  def body(state: DecodeState) -> DecodeState:
    step, done_B = state.step, state.done_B
    token_B, logp_B = sample_token(state.logits_BxV, jax.random.fold_in(key, step), params)
    token_B = jnp.where(done_B, params.pad_id, token_B)
    logp_B = jnp.where(done_B, 0.0, logp_B)
    tokens_BxN = jax.lax.dynamic_update_slice(state.tokens_BxN, token_B[:, None], (0, step))
    logp_BxN = jax.lax.dynamic_update_slice(state.logp_BxN, logp_B[:, None], (0, step))
    # The stop token itself enters the cache: a following turn must see it.
    if params.return_hidden:
      logits_BxV, cache, hidden_BxD = append(model, state.cache, token_B[:, None], ~done_B[:, None],
                                             return_hidden=True)
      hidden_BxD = jnp.where(done_B[:, None], jnp.zeros_like(hidden_BxD), hidden_BxD)
      hidden_BxNxD = jax.lax.dynamic_update_slice(state.hidden_BxNxD, hidden_BxD[:, None], (0, step, 0))
    else:
      logits_BxV, cache = append(model, state.cache, token_B[:, None], ~done_B[:, None])
      hidden_BxNxD = None
    done_B = done_B | jnp.isin(token_B, stop_ids)
    return DecodeState(step=step + 1, tokens_BxN=tokens_BxN, logp_BxN=logp_BxN, done_B=done_B,
                       cache=cache, logits_BxV=logits_BxV, hidden_BxNxD=hidden_BxNxD)

  init = DecodeState(step=jnp.zeros((), jnp.int32), tokens_BxN=jnp.full((b, n), params.pad_id, jnp.int32),
                     logp_BxN=jnp.zeros((b, n), jnp.float32),
                     done_B=jnp.zeros((b,), bool) if active_B is None else ~active_B.astype(bool), cache=cache,
                     logits_BxV=logits_BxV, hidden_BxNxD=hidden_BxNxD)
  final = jax.lax.while_loop(cond, body, init)
  cache = final.cache
  valid_BxN = jax.lax.dynamic_slice_in_dim(cache.valid_BxS, start, n, axis=1)
  cache = cache.replace(end_index=start + n)
  return SampleOutput(tokens_BxN=final.tokens_BxN, logp_BxN=final.logp_BxN, valid_BxN=valid_BxN,
                      length_B=valid_BxN.sum(axis=1, dtype=jnp.int32), stopped_B=final.done_B, cache=cache,
                      hidden_BxNxD=final.hidden_BxNxD, context_hidden_BxD=context_hidden_BxD)


def generate(model: Decoder, prompt_tokens_PxT: jax.Array, prompt_valid_PxT: jax.Array, key: jax.Array,
             params: SamplingParams, group_size: int = 1, extra_capacity: int = 0) -> SampleOutput:
  """Prefills each prompt once, repeats the cache `group_size` times, and samples.

  Args:
    model: the decoder.
    prompt_tokens_PxT: left-padded prompts.
    prompt_valid_PxT: False on padding.
    key: PRNG key.
    params: decoding settings.
    group_size: completions per prompt (G); output rows are prompt-major (P*G).
    extra_capacity: additional cache slots reserved for later turns (`continue_generation`).
  """
  p, t = prompt_tokens_PxT.shape
  cache = init_cache(model.cfg, p, t + params.max_new_tokens + extra_capacity)
  # With return_hidden the cache also carries each prompt's last hidden state, repeated with it.
  logits_PxV, cache = append(model, cache, prompt_tokens_PxT, prompt_valid_PxT,
                             return_hidden=params.return_hidden)[:2]
  logits_BxV, cache = repeat_rows((logits_PxV, cache), group_size)
  return decode(model, cache, logits_BxV, key, params)


def continue_generation(model: Decoder, cache: KVCache, tokens_BxI: jax.Array, valid_BxI: jax.Array,
                        key: jax.Array, params: SamplingParams, active_B: jax.Array | None = None
                        ) -> SampleOutput:
  """Appends tokens (e.g. a self-correction instruction) to an existing cache and samples the next turn.

  The room left depends on the traced `cache.end_index`, so only "fits an empty cache" can be
  checked here; callers reserve the exact room with `generate(..., extra_capacity=...)`, as
  `two_turn_rollout` and `multi_attempt_rollout` do.

  Every row must append at least one valid id: a row whose `valid_BxI` is all False would sample
  its first token from the logits of a padding query (known limitation: layouts where some rows
  append nothing must give those rows a separator id, or mark them inactive; agent episodes end a
  row whose environment returns no observation, `envs.base.CallbackEnv`).
  `tests/test_extension_point.py` covers per-row lengths 1..3.

  With `params.return_hidden`, a row that appends nothing gets the previous turn's last hidden
  state as `context_hidden_BxD` only if that turn was also sampled with `return_hidden` (the cache
  then tracks it); otherwise that row's context hidden state is meaningless.
  """
  needed = tokens_BxI.shape[1] + params.max_new_tokens
  if needed > cache.capacity:
    raise ValueError(f"Cache capacity {cache.capacity} cannot hold {tokens_BxI.shape[1]} appended "
                     f"tokens + max_new_tokens={params.max_new_tokens}; raise extra_capacity in generate().")
  logits_BxV, cache = append(model, cache, tokens_BxI, valid_BxI, return_hidden=params.return_hidden)[:2]
  return decode(model, cache, logits_BxV, key, params, active_B)


class Sampler:
  """Compiled `generate` / `continue_generation` over split NNX state (graphdef fixed, state traced).

      sampler = Sampler(graphdef, SamplingParams(...), group_size=4)
      out = sampler.generate(state, prompts_PxT, valid_PxT, key)
  """

  def __init__(self, graphdef: nnx.GraphDef, params: SamplingParams, group_size: int = 1,
               extra_capacity: int = 0):
    self.params = params

    def _generate(state, prompt_tokens_PxT, prompt_valid_PxT, key):
      return generate(nnx.merge(graphdef, state), prompt_tokens_PxT, prompt_valid_PxT, key, params,
                      group_size=group_size, extra_capacity=extra_capacity)

    def _continue(state, cache, tokens_BxI, valid_BxI, key):
      return continue_generation(nnx.merge(graphdef, state), cache, tokens_BxI, valid_BxI, key, params)

    self.generate = jax.jit(_generate)
    self.continue_generation = jax.jit(_continue, donate_argnums=(1,))

"""Text in, text out: batched decoding of token prompts into strings with a compiled `Sampler`.

Prompts are left-padded to a shared width rounded up to a multiple of 64 (or a width the caller
fixes), so prompts of similar length share one compiled program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from selfrl_jax.sampling.sampler import Sampler


def bucket_width(n: int, multiple: int = 64) -> int:
  """Prompt buffer width: a multiple of 64, so prompts of similar length share one compiled program."""
  return max(multiple, -(-n // multiple) * multiple)


def generate_texts(sampler: Sampler, state, tokenizer, prompts: list[list[int]], key,
                   width: int | None = None) -> list[list[tuple[str, int, bool]]]:
  """[(text, tokens, stopped)] * group_size for each prompt (token ids), sampled in one batch.

  Prompts are left-padded to `width` (default: the longest, rounded up by `bucket_width`);
  `stopped` is False for an answer that hit max_new_tokens.

  Raises:
    ValueError: a prompt is longer than `width`.
  """
  longest = max(len(p) for p in prompts)
  width = width or bucket_width(longest)
  if longest > width:
    raise ValueError(f"a prompt has {longest} tokens, more than the prompt width {width}")
  tokens = np.full((len(prompts), width), tokenizer.pad_id, np.int32)
  valid = np.zeros((len(prompts), width), bool)
  for i, ids in enumerate(prompts):
    tokens[i, width - len(ids):], valid[i, width - len(ids):] = ids, True
  out = sampler.generate(state, jnp.asarray(tokens), jnp.asarray(valid), key)
  ids, lengths, stopped = (np.asarray(x) for x in (out.tokens_BxN, out.length_B, out.stopped_B))
  samples = [(tokenizer.decode(ids[b, :lengths[b]]), int(lengths[b]), bool(stopped[b])) for b in range(len(ids))]
  g = len(samples) // len(prompts)
  return [samples[i * g:(i + 1) * g] for i in range(len(prompts))]


def generate_in_batches(sampler: Sampler, state, tokenizer, prompts: list[list[int]], key, *, batch_size: int,
                        width: int, progress=None) -> list[tuple[str, int, bool]]:
  """(text, tokens, stopped) of one sample per prompt, `batch_size` prompts at a time.

  Every batch has the same shape (the last one is padded with repeats of its last prompt, whose
  samples are dropped), so one program is compiled; batch i samples with `fold_in(key, i *
  batch_size)`. `progress(done, total)` is called after each batch. The sampler's group size must be 1.
  """
  out = []
  for start in range(0, len(prompts), batch_size):
    chunk = prompts[start:start + batch_size]
    padded = chunk + [chunk[-1]] * (batch_size - len(chunk))
    samples = generate_texts(sampler, state, tokenizer, padded, jax.random.fold_in(key, start), width=width)
    out += [group[0] for group in samples[:len(chunk)]]
    if progress is not None:
      progress(len(out), len(prompts))
  return out


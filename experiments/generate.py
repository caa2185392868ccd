r"""Sample from any supported checkpoint with a chat prompt.

  python experiments/generate.py --model=smollm2 --prompt="What is the capital of France?"
  python experiments/generate.py --model=/ckpts/Qwen2.5-0.5B-Instruct --prompt="2+2?" \
      --temperature=0.7 --top_p=0.9 --num_samples=4 --max_new_tokens=128
"""

from __future__ import annotations

import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from selfrl_jax.models.loading import load_model
from selfrl_jax.sampling.sampler import Sampler, SamplingParams

_MODEL = flags.DEFINE_string("model", "smollm2", "'smollm2', a .gguf file, or a Hugging Face directory.")
_PROMPT = flags.DEFINE_string("prompt", "What is the capital of France?", "User message.")
_SYSTEM = flags.DEFINE_string("system", None, "Optional system message.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Response length limit.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Top-k truncation (0 = off).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus truncation (1 = off).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Completions for the prompt (group sampling).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter and compute dtype.")


def main(argv):
  del argv
  t0 = time.perf_counter()
  model, tokenizer = load_model(_MODEL.value, param_dtype=_DTYPE.value, compute_dtype=_DTYPE.value)
  messages = ([{"role": "system", "content": _SYSTEM.value}] if _SYSTEM.value else [])
  messages.append({"role": "user", "content": _PROMPT.value})
  prompt_ids = tokenizer.apply_chat_template(messages)
  print(f"loaded {_MODEL.value} in {time.perf_counter() - t0:.1f}s; prompt {len(prompt_ids)} tokens")
  params = SamplingParams(max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
                          top_p=_TOP_P.value, stop_ids=tokenizer.eos_ids, pad_id=tokenizer.pad_id)
  graphdef, state = nnx.split(model)
  sampler = Sampler(graphdef, params, group_size=_NUM_SAMPLES.value)
  t0 = time.perf_counter()
  out = sampler.generate(state, jnp.asarray([prompt_ids], jnp.int32), jnp.ones((1, len(prompt_ids)), bool),
                         jax.random.key(_SEED.value))
  tokens = np.asarray(out.tokens_BxN)
  lengths = np.asarray(out.length_B)
  elapsed = time.perf_counter() - t0
  for i in range(tokens.shape[0]):
    print(f"--- sample {i} ({lengths[i]} tokens)\n{tokenizer.decode(tokens[i, :lengths[i]])}")
  print(f"--- {int(lengths.sum())} tokens in {elapsed:.1f}s (includes compilation)")


if __name__ == "__main__":
  app.run(main)

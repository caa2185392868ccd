r"""Sample from any supported checkpoint with a chat prompt.

  python experiments/generate.py --model=smollm2 --prompt="What is the capital of France?"
  python experiments/generate.py --model=/ckpts/Qwen2.5-0.5B-Instruct --prompt="2+2?" \
      --temperature=0.7 --top_p=0.9 --num_samples=4 --max_new_tokens=128
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from experiments import cli  # noqa: E402
from selfrl_jax.models.loading import load_model  # noqa: E402
from selfrl_jax.sampling.sampler import Sampler, SamplingParams  # noqa: E402

_MODEL = flags.DEFINE_string("model", "smollm2", "'smollm2', a .gguf file, or a Hugging Face directory.")
_PROMPT = flags.DEFINE_string("prompt", "What is the capital of France?", "User message.")
_SYSTEM = flags.DEFINE_string("system", None, "Optional system message.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Response length limit.")
_TEMPERATURE = flags.DEFINE_float("temperature", None, "0 = greedy. Unset: the checkpoint's "
                                   "generation_config.json (its temperature when do_sample, else greedy).")
_TOP_K = flags.DEFINE_integer("top_k", None, "Top-k truncation (0 = off). Unset: generation_config.json or off.")
_TOP_P = flags.DEFINE_float("top_p", None, "Nucleus truncation (1 = off). Unset: generation_config.json or off.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Completions for the prompt (group sampling).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter and compute dtype.")


def sampling_settings(generation_defaults: dict, **flag_values) -> dict[str, tuple[float, str]]:
  """{name: (value, source)} for temperature / top_k / top_p: the flag when set, else the
  checkpoint's generation_config.json (as transformers would: its values apply only when
  do_sample is true), else greedy / off. Unlike transformers, a field the file leaves out is off
  (transformers would sample with top_k=50)."""
  off = {"temperature": 0.0, "top_k": 0, "top_p": 1.0}
  sampling = bool(generation_defaults.get("do_sample"))
  out = {}
  for name, value in flag_values.items():
    if value is not None:
      out[name] = (value, "flag")
    elif sampling and name in generation_defaults:
      out[name] = (generation_defaults[name], "generation_config.json")
    else:
      out[name] = (off[name], "default")
  return out


def main(argv):
  del argv
  t0 = time.perf_counter()
  model, tokenizer = load_model(_MODEL.value, param_dtype=_DTYPE.value, compute_dtype=_DTYPE.value)
  messages = ([{"role": "system", "content": _SYSTEM.value}] if _SYSTEM.value else [])
  messages.append({"role": "user", "content": _PROMPT.value})
  prompt_ids = tokenizer.apply_chat_template(messages)
  print(f"loaded {_MODEL.value} in {time.perf_counter() - t0:.1f}s; prompt {len(prompt_ids)} tokens")
  decoding = sampling_settings(tokenizer.generation_defaults, temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
                               top_p=_TOP_P.value)
  print("decoding: " + ", ".join(f"{k}={v} ({src})" for k, (v, src) in decoding.items()))
  params = SamplingParams(max_new_tokens=_MAX_NEW.value, stop_ids=tokenizer.eos_ids, pad_id=tokenizer.pad_id,
                          **{k: v for k, (v, _) in decoding.items()})
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
  cli.run(main)

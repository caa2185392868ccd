"""Checkpoint loading: GGUF import of a tiny model, and clear errors for bad checkpoints."""

import json
import os

import numpy as np
import pytest
import jax.numpy as jnp

from hf_reference import VOCAB, make_reference, torch
from selfrl_jax.models.decoder import forward_full
from selfrl_jax.models.gguf_io import load_gguf
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


def _write_gguf(ref, path):
  """Writes a torch Llama model as an F32 GGUF file laid out the way llama.cpp does."""
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


def test_missing_files(tmp_path):
  with pytest.raises(CheckpointError, match="config.json not found"):
    load_hf(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
  with pytest.raises(CheckpointError, match="Cannot load"):
    load_model(str(tmp_path / "nothing.bin"))

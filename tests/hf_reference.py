"""Tiny randomly initialised transformers (torch) models: the reference for parity tests."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="parity tests need the optional extra torch==2.13.0 (requirements-dev.txt)")
transformers = pytest.importorskip("transformers")

VOCAB = 96
_COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, max_position_embeddings=256, rms_norm_eps=1e-6,
               bos_token_id=1, eos_token_id=2, pad_token_id=0)

# name -> (config class, model class, extra config). Covers every family, tied and untied
# embeddings, GQA ratios 2 and 4, an explicit head_dim and Llama-3 rope scaling.
FAMILIES = {
    "llama_tied_gqa2": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "llama3_rope_gqa4": ("LlamaConfig", "LlamaForCausalLM", dict(
        num_key_value_heads=1, tie_word_embeddings=False, rope_theta=50000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64})),
    "qwen2_untied_bias": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=2, tie_word_embeddings=False)),
    "qwen2_tied": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=4, tie_word_embeddings=True)),
    "qwen3_qknorm": ("Qwen3Config", "Qwen3ForCausalLM", dict(num_key_value_heads=2, head_dim=24,
                                                             tie_word_embeddings=False)),
}


def make_reference(name: str, seed: int = 0, scale: float = 0.3):
  """A torch model of the named family with random weights large enough to give peaked logits."""
  config_cls, model_cls, extra = FAMILIES[name]
  torch.manual_seed(seed)
  model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**_COMMON, **extra)).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * scale)
  return model

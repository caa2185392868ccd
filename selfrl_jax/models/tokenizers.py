"""One tokenizer interface for Hugging Face tokenizers, GGUF-embedded tokenizers and characters.

Everything downstream (data pipelines, rollouts, rewards) sees only `Tokenizer`:

    ids = tok.encode("2+2=")                      # list[int], no special tokens added
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    text = tok.decode(ids)
    tok.pad_id, tok.eos_ids, tok.vocab_size
"""

from __future__ import annotations

import abc
import json
import os
import shutil
import string
from typing import Sequence

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


class Tokenizer(abc.ABC):
  """Text <-> token ids. Subclasses set `vocab_size`, `pad_id`, `eos_ids`, `bos_id`."""

  vocab_size: int
  pad_id: int
  eos_ids: tuple[int, ...]
  bos_id: int | None

  @abc.abstractmethod
  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without BOS/EOS."""

  @abc.abstractmethod
  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    """Text of `ids`; padding is always dropped."""

  @abc.abstractmethod
  def apply_chat_template(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a conversation rendered with the model's chat format."""

  @property
  def special_ids(self) -> frozenset[int]:
    """Ids of special tokens (pad, bos, eos; chat markers; the character tokenizer's named specials),
    e.g. what a hindsight prompt strips from a rendered prompt."""
    return frozenset(int(i) for i in (self.pad_id, self.bos_id, *self.eos_ids) if i is not None)


# Sampling fields of generation_config.json that `generation_defaults` carries over.
GENERATION_SAMPLING_KEYS = ("do_sample", "temperature", "top_k", "top_p")
# End-of-turn markers of common chat formats (ChatML, Llama 3, Qwen/GPT-2), stop ids when present.
_CHAT_STOP_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>")
# GGUF metadata keys llama.cpp treats as end of generation.
_GGUF_STOP_KEYS = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")


def _id_list(value) -> list[int]:
  """An `eos_token_id` field (int, list of ints or None) as a list."""
  if value is None:
    return []
  return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _read_json(path: str) -> dict:
  import json  # pylint: disable=import-outside-toplevel
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def gguf_stop_ids(gguf_file) -> list[int]:
  """The end-of-generation ids a GGUF file declares (eos, eot, eom metadata), in that order.

  `gguf_file` is a path or an open `gguf.GGUFReader` (parsing a file's metadata takes seconds for a
  large vocabulary, so a caller that already holds the reader passes it).
  """
  import gguf  # pylint: disable=import-outside-toplevel
  reader = gguf_file if isinstance(gguf_file, gguf.GGUFReader) else gguf.GGUFReader(gguf_file)
  fields = reader.fields
  return [int(fields[k].contents()) for k in _GGUF_STOP_KEYS if k in fields]


class HFTokenizer(Tokenizer):
  """A transformers tokenizer loaded from a local directory or from a GGUF file's metadata.

  `eos_ids` are every id that ends generation, in this order and without repeats: the tokenizer's
  eos token, then the ids the checkpoint declares — generation_config.json and config.json
  `eos_token_id` (an int or a list, as transformers reads them) for a directory, the GGUF eos / eot /
  eom ids for a GGUF file — then the chat end-of-turn markers in `_CHAT_STOP_TOKENS` the vocabulary
  has. `eos_ids[0]` is the tokenizer's own eos (what SFT targets end with).

  `generation_defaults` holds the sampling fields of generation_config.json (do_sample, temperature,
  top_k, top_p) for entry points to use where their flags are unset; training configs never read it.
  """

  def __init__(self, hf_tokenizer, extra_eos_ids=(), generation_defaults: dict | None = None):
    self.hf = hf_tokenizer
    self.vocab_size = len(hf_tokenizer)
    ids = _id_list(hf_tokenizer.eos_token_id) + [int(i) for i in extra_eos_ids]
    vocab = hf_tokenizer.get_vocab()
    ids += [vocab[t] for t in _CHAT_STOP_TOKENS if t in vocab]
    self.eos_ids = tuple(dict.fromkeys(ids))
    if not self.eos_ids:
      raise ValueError("The tokenizer declares no end-of-sequence token and the checkpoint lists none.")
    pad = hf_tokenizer.pad_token_id
    self.pad_id = int(pad if pad is not None else self.eos_ids[0])
    self.bos_id = hf_tokenizer.bos_token_id
    self.generation_defaults = dict(generation_defaults or {})

  @classmethod
  def from_directory(cls, path: str) -> "HFTokenizer":
    """Loads tokenizer files (tokenizer.json / tokenizer_config.json) from a local directory, with
    the stop ids and sampling defaults of its generation_config.json and config.json."""
    from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
    if not os.path.isdir(path):
      raise FileNotFoundError(f"Tokenizer directory {path!r} does not exist.")
    gen = _read_json(os.path.join(path, "generation_config.json"))
    model_cfg = _read_json(os.path.join(path, "config.json"))
    extra = _id_list(gen.get("eos_token_id")) + _id_list(model_cfg.get("eos_token_id"))
    defaults = {k: gen[k] for k in GENERATION_SAMPLING_KEYS if gen.get(k) is not None}
    return cls(AutoTokenizer.from_pretrained(path, local_files_only=True), extra, defaults)

  @classmethod
  def from_gguf(cls, gguf_path: str, cache_dir: str | None = None, stop_ids=None) -> "HFTokenizer":
    """Builds the tokenizer stored in a GGUF file's metadata (vocab, merges, chat template).

    Converting GGUF metadata takes ~15 s on CPU and reading the stop ids (eos, eot, eom) from it
    ~10 s, so both are saved under `cache_dir` (default `$SELFRL_CACHE` or ~/.cache/selfrl_jax),
    keyed by the file's size and mtime; a caller that already parsed the file passes `stop_ids`.
    """
    from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
    gguf_path = os.path.abspath(gguf_path)
    if not os.path.exists(gguf_path):
      raise FileNotFoundError(f"GGUF file {gguf_path!r} does not exist.")
    stat = os.stat(gguf_path)
    root = cache_dir or os.environ.get("SELFRL_CACHE", os.path.expanduser("~/.cache/selfrl_jax"))
    cached = os.path.join(root, "tokenizers", f"{os.path.basename(gguf_path)}-{stat.st_size}-{int(stat.st_mtime)}")
    stops_file = os.path.join(cached, "gguf_stop_ids.json")
    if os.path.exists(os.path.join(cached, "tokenizer_config.json")) and os.path.exists(stops_file):
      with open(stops_file) as f:
        cached_stops = json.load(f)
      return cls(AutoTokenizer.from_pretrained(cached, local_files_only=True),
                 cached_stops if stop_ids is None else list(stop_ids))
    stop_ids = gguf_stop_ids(gguf_path) if stop_ids is None else list(stop_ids)
    directory, name = os.path.split(gguf_path)
    hf = AutoTokenizer.from_pretrained(directory, gguf_file=name, local_files_only=True)
    tmp = f"{cached}.tmp{os.getpid()}"
    hf.save_pretrained(tmp)
    with open(os.path.join(tmp, "gguf_stop_ids.json"), "w") as f:
      json.dump([int(i) for i in stop_ids], f)
    if os.path.exists(cached) and not os.path.exists(stops_file):   # an older cache without the stop ids
      shutil.rmtree(cached, ignore_errors=True)
    os.replace(tmp, cached) if not os.path.exists(cached) else shutil.rmtree(tmp, ignore_errors=True)  # atomic
    return cls(hf, stop_ids)

  def encode(self, text: str) -> list[int]:
    return list(self.hf.encode(text, add_special_tokens=False))

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    ids = [int(i) for i in ids if int(i) != self.pad_id or not skip_special_tokens]
    return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

  @property
  def special_ids(self) -> frozenset[int]:
    return super().special_ids | frozenset(int(i) for i in self.hf.all_special_ids)

  def apply_chat_template(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
    if not self.hf.chat_template:
      raise ValueError("This tokenizer has no chat template; encode the prompt text directly.")
    text = self.hf.apply_chat_template(list(messages), tokenize=False,
                                       add_generation_prompt=add_generation_prompt)
    return self.encode(text)


class CharTokenizer(Tokenizer):
  """One id per character plus a few multi-character special tokens, for the synthetic tasks.

  Ids: 0 <pad>, 1 <bos>, 2 <eos>, then the named special tokens, then printable ASCII characters.
  Special tokens are matched greedily in the text, so "12<fix>" encodes to ['1', '2', '<fix>'].
  """

  PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
  DEFAULT_SPECIALS = ("<fix>", "<sep>", "<user>", "<assistant>")

  def __init__(self, specials: Sequence[str] = DEFAULT_SPECIALS,
               alphabet: str = string.digits + string.ascii_letters + string.punctuation + " \n"):
    self.specials = (self.PAD, self.BOS, self.EOS) + tuple(specials)
    self.id_to_token = list(self.specials) + list(dict.fromkeys(alphabet))
    self.token_to_id = {t: i for i, t in enumerate(self.id_to_token)}
    self.vocab_size = len(self.id_to_token)
    self.pad_id, self.bos_id = 0, 1
    self.eos_ids = (2,)
    # Longest specials first so "<assistant>" is not read as "<", "a", ...
    self._specials_by_len = sorted(self.specials, key=len, reverse=True)

  def encode(self, text: str) -> list[int]:
    ids, i = [], 0
    while i < len(text):
      for sp in self._specials_by_len:
        if text.startswith(sp, i):
          ids.append(self.token_to_id[sp])
          i += len(sp)
          break
      else:
        ch = text[i]
        if ch not in self.token_to_id:
          raise ValueError(f"CharTokenizer cannot encode character {ch!r} (position {i} of {text!r}).")
        ids.append(self.token_to_id[ch])
        i += 1
    return ids

  @property
  def special_ids(self) -> frozenset[int]:
    return frozenset(self.token_to_id[t] for t in self.specials)

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    out = []
    for i in ids:
      i = int(i)
      if i == self.pad_id or (skip_special_tokens and i in (self.bos_id, *self.eos_ids)):
        continue
      out.append(self.id_to_token[i])
    return "".join(out)

  def apply_chat_template(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
    """`<user>text<assistant>text<eos>...`: a minimal chat format for multi-turn synthetic tasks."""
    ids = []
    for m in messages:
      tag = "<assistant>" if m["role"] == "assistant" else "<user>"
      ids += [self.token_to_id[tag]] + self.encode(m["content"])
      if m["role"] == "assistant":
        ids.append(self.eos_ids[0])
    if add_generation_prompt:
      ids.append(self.token_to_id["<assistant>"])
    return ids

"""One tokenizer interface for Hugging Face tokenizers, GGUF-embedded tokenizers and characters.

Everything downstream (data pipelines, rollouts, rewards) sees only `Tokenizer`:

    ids = tok.encode("2+2=")                      # list[int], no special tokens added
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    text = tok.decode(ids)
    tok.pad_id, tok.eos_ids, tok.vocab_size
"""

from __future__ import annotations

import abc
import os
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


class HFTokenizer(Tokenizer):
  """A transformers tokenizer loaded from a local directory or from a GGUF file's metadata."""

  def __init__(self, hf_tokenizer):
    self.hf = hf_tokenizer
    self.vocab_size = len(hf_tokenizer)
    eos = hf_tokenizer.eos_token_id
    self.eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
    for extra in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>"):
      tid = hf_tokenizer.convert_tokens_to_ids(extra) if extra in hf_tokenizer.get_vocab() else None
      if tid is not None and tid not in self.eos_ids:
        self.eos_ids += (tid,)
    pad = hf_tokenizer.pad_token_id
    self.pad_id = int(pad if pad is not None else self.eos_ids[0])
    self.bos_id = hf_tokenizer.bos_token_id

  @classmethod
  def from_directory(cls, path: str) -> "HFTokenizer":
    """Loads tokenizer files (tokenizer.json / tokenizer_config.json) from a local directory."""
    from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
    if not os.path.isdir(path):
      raise FileNotFoundError(f"Tokenizer directory {path!r} does not exist.")
    return cls(AutoTokenizer.from_pretrained(path, local_files_only=True))

  @classmethod
  def from_gguf(cls, gguf_path: str, cache_dir: str | None = None) -> "HFTokenizer":
    """Builds the tokenizer stored in a GGUF file's metadata (vocab, merges, chat template).

    Converting GGUF metadata takes ~15 s on CPU, so the converted tokenizer is saved under
    `cache_dir` (default `$SELFRL_CACHE` or ~/.cache/selfrl_jax), keyed by the file's size and mtime.
    """
    from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
    gguf_path = os.path.abspath(gguf_path)
    if not os.path.exists(gguf_path):
      raise FileNotFoundError(f"GGUF file {gguf_path!r} does not exist.")
    stat = os.stat(gguf_path)
    root = cache_dir or os.environ.get("SELFRL_CACHE", os.path.expanduser("~/.cache/selfrl_jax"))
    cached = os.path.join(root, "tokenizers", f"{os.path.basename(gguf_path)}-{stat.st_size}-{int(stat.st_mtime)}")
    if os.path.exists(os.path.join(cached, "tokenizer_config.json")):
      return cls.from_directory(cached)
    directory, name = os.path.split(gguf_path)
    hf = AutoTokenizer.from_pretrained(directory, gguf_file=name, local_files_only=True)
    tmp = f"{cached}.tmp{os.getpid()}"
    hf.save_pretrained(tmp)
    os.replace(tmp, cached) if not os.path.exists(cached) else None  # atomic: never a half-written cache
    return cls(hf)

  def encode(self, text: str) -> list[int]:
    return list(self.hf.encode(text, add_special_tokens=False))

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    ids = [int(i) for i in ids if int(i) != self.pad_id or not skip_special_tokens]
    return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

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

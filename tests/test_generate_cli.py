"""generate_texts (experiments/generate.py, IFEval): several prompts in one batch, cut-off answers marked."""

import jax
from flax import nnx

from selfrl_jax.sampling.texts import generate_texts
from selfrl_jax.models.config import tiny_config
from selfrl_jax.models.decoder import init_model
from selfrl_jax.models.tokenizers import CharTokenizer
from selfrl_jax.sampling.sampler import Sampler, SamplingParams


def test_several_prompts_in_one_batch_equal_each_alone_and_cut_offs_are_reported():
  tok = CharTokenizer()
  graphdef, state = nnx.split(init_model(tiny_config(vocab_size=tok.vocab_size, d_model=32, d_ff=64)))
  params = SamplingParams(max_new_tokens=4, temperature=0.0, stop_ids=tok.eos_ids, pad_id=tok.pad_id)
  sampler = Sampler(graphdef, params, group_size=1)
  prompts = [tok.encode("12+30="), tok.encode("7+5=")]
  together = generate_texts(sampler, state, tok, prompts, jax.random.key(0))
  alone = [generate_texts(sampler, state, tok, [p], jax.random.key(0))[0] for p in prompts]
  assert together == alone  # left padding to the shared bucket changes nothing (greedy)
  for [(text, n, stopped)] in together:
    assert 1 <= n <= 4 and (stopped or n == 4)  # not stopped means it used the whole buffer
  # A random tiny model rarely says <eos> within 4 tokens: at least one answer is cut off.
  assert any(not stopped for [(_, _, stopped)] in together)

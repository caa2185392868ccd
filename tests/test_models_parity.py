"""Logit and greedy-decoding parity with transformers (torch, CPU) on tiny random models."""

import os

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

from hf_reference import FAMILIES, VOCAB, make_reference, torch
from selfrl_jax.models.decoder import forward_full
from selfrl_jax.models.hf_io import load_hf, save_hf
from selfrl_jax.sampling.sampler import Sampler, SamplingParams

T_PROMPT, N_NEW = 12, 10


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request, tmp_path_factory):
  ref = make_reference(request.param)
  directory = tmp_path_factory.mktemp(request.param)
  ref.save_pretrained(directory)
  model, cfg = load_hf(str(directory))
  return request.param, ref, model, cfg


def _ref_logits(ref, tokens):
  with torch.no_grad():
    return ref(torch.tensor(tokens, dtype=torch.long)).logits.numpy()


def test_logits_match_transformers(pair):
  name, ref, model, cfg = pair
  tokens = np.random.RandomState(1).randint(0, VOCAB, (3, 40))
  ours = model.logits(forward_full(model, jnp.asarray(tokens), jnp.ones(tokens.shape, bool)))
  assert np.abs(np.asarray(ours) - _ref_logits(ref, tokens)).max() <= 1e-4, name
  assert cfg.tie_embeddings == ref.config.tie_word_embeddings


def test_greedy_kv_cache_matches_transformers_generate(pair):
  """Left-padded prompts of different lengths in one batch, decoded through our cache."""
  name, ref, model, _ = pair
  rs = np.random.RandomState(2)
  lengths = [T_PROMPT, 7, 3]
  tokens = np.zeros((3, T_PROMPT), np.int32)
  valid = np.zeros((3, T_PROMPT), bool)
  for i, n in enumerate(lengths):
    tokens[i, T_PROMPT - n:] = rs.randint(3, VOCAB, n)
    valid[i, T_PROMPT - n:] = True
  graphdef, state = nnx.split(model)
  out = Sampler(graphdef, SamplingParams(max_new_tokens=N_NEW, temperature=0.0)).generate(
      state, jnp.asarray(tokens), jnp.asarray(valid), jax.random.key(0))
  for i, n in enumerate(lengths):
    prompt = torch.tensor(tokens[i:i + 1, T_PROMPT - n:], dtype=torch.long)
    # No stop token on either side (min_new_tokens would instead bias EOS logits in HF).
    ref.generation_config.eos_token_id = None
    expected = ref.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=N_NEW,
                            do_sample=False, pad_token_id=0)[0, n:].numpy()
    np.testing.assert_array_equal(np.asarray(out.tokens_BxN[i]), expected, err_msg=f"{name} row {i}")


def test_export_roundtrip_through_transformers(pair, tmp_path):
  name, _, model, _ = pair
  save_hf(model, str(tmp_path))
  # Every exported file has the same permissions (safetensors alone would write 0600).
  assert len({os.stat(p).st_mode for p in tmp_path.iterdir()}) == 1, {p.name: oct(os.stat(p).st_mode) for p in tmp_path.iterdir()}
  torch_model = __import__("transformers").AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
  tokens = np.random.RandomState(3).randint(0, VOCAB, (2, 16))
  ours = np.asarray(model.logits(forward_full(model, jnp.asarray(tokens), jnp.ones(tokens.shape, bool))))
  assert np.abs(_ref_logits(torch_model, tokens) - ours).max() <= 1e-4, name
  reloaded, _ = load_hf(str(tmp_path))
  again = reloaded.logits(forward_full(reloaded, jnp.asarray(tokens), jnp.ones(tokens.shape, bool)))
  np.testing.assert_array_equal(np.asarray(again), ours)


def test_remat_blocks_give_the_same_loss_and_gradient_and_build_from_the_config():
  """`model.remat` (gradient checkpointing) changes memory, not results: a reference-free check
  against the same model without it, on a sequence with padding holes, for each `model.remat_policy`;
  and each policy keeps what it says for the backward pass."""
  from configs.tiny.grpo_arithmetic import get_config  # pylint: disable=import-outside-toplevel
  from selfrl_jax.train import builders  # pylint: disable=import-outside-toplevel
  cfg = get_config()
  cfg.model.remat, cfg.model.remat_policy = True, "dots_with_no_batch_dims_saveable"
  model, _ = builders.build_model(cfg)
  assert model.remat_blocks and model.remat_policy == "dots_with_no_batch_dims_saveable"
  b, t = 2, 16
  tokens = jnp.asarray(np.random.RandomState(2).randint(0, 20, (b, t)))
  valid = jnp.asarray(np.arange(t)[None] >= np.array([[0], [5]]))   # the second row left-padded

  def loss(params, policy):
    m = nnx.merge(graphdef, params)
    m.remat_blocks, m.remat_policy = policy is not None, policy or "nothing_saveable"
    return (m.logits(forward_full(m, tokens, valid)) ** 2).mean()

  graphdef, params = nnx.split(model)
  policies = (None, "nothing_saveable", "dots_with_no_batch_dims_saveable")
  plain, *remat = (jax.value_and_grad(loss)(params, policy) for policy in policies)
  for value, grads in remat:
    np.testing.assert_allclose(float(plain[0]), float(value), rtol=1e-6)
    for a, g in zip(jax.tree.leaves(plain[1]), jax.tree.leaves(grads)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(g), rtol=1e-5, atol=1e-7)
  # ...and the backward pass does recompute: the checkpointed program holds a remat region.
  assert "remat" in str(jax.make_jaxpr(lambda p: jax.grad(loss)(p, "nothing_saveable"))(params))
  # What the backward pass keeps (the residuals of `jax.vjp`, bytes): keeping the Linear outputs adds
  # exactly those a backward needs per block, q, k, v, o, gate and up ([B*T, width] float32 each;
  # down's output only feeds the residual stream, whose sum is the next block's saved input).
  kept = {p: sum(x.nbytes for x in jax.tree.leaves(jax.vjp(lambda w, p=p: loss(w, p), params)[1])) for p in policies}
  c = model.cfg
  linear_outputs = c.n_layers * b * t * 4 * (c.n_heads * c.head_dim + 2 * c.n_kv_heads * c.head_dim + c.d_model
                                              + 2 * c.d_ff)
  assert kept["dots_with_no_batch_dims_saveable"] - kept["nothing_saveable"] == linear_outputs
  assert kept[None] > kept["dots_with_no_batch_dims_saveable"]

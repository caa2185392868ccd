"""Hugging Face checkpoint import/export (config.json + safetensors, sharded index supported).

Our NNX attribute tree mirrors the HF module tree, so a parameter path maps to a tensor name by
joining the path with dots and renaming the leaf: linear `kernel` <-> `weight` (transposed),
norm `weight` <-> `weight`, embedding `embedding` <-> `weight`, `bias` <-> `bias`.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from selfrl_jax.models.config import ModelConfig, from_hf_config, to_hf_config
from selfrl_jax.models.decoder import Decoder

# Tensors some checkpoints carry that hold no learned state we need.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(ValueError):
  """A checkpoint is missing, malformed, or does not match the architecture."""


def hf_name(path: tuple) -> tuple[str, bool]:
  """HF tensor name of an NNX parameter path, and whether the tensor is stored transposed."""
  *parents, leaf = (str(p) for p in path)
  if leaf == "kernel":
    return ".".join(parents + ["weight"]), True
  if leaf in ("embedding", "weight"):
    return ".".join(parents + ["weight"]), False
  if leaf == "bias":
    return ".".join(parents + ["bias"]), False
  raise CheckpointError(f"No Hugging Face name for parameter path {'.'.join(map(str, path))!r}.")


def abstract_model(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
  """Graph definition and shape-only state: no memory is allocated for random weights."""
  return nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))


def model_from_tensors(cfg: ModelConfig, get_tensor: Callable[[str], np.ndarray],
                       available: Iterable[str], source: str) -> Decoder:
  """Builds a Decoder from named HF-layout tensors.

  Args:
    cfg: target architecture.
    get_tensor: returns the (HF layout, i.e. [out, in] for linears) array for a name.
    available: every tensor name the checkpoint holds (to report missing/unexpected ones).
    source: checkpoint location, quoted in error messages.

  Raises:
    CheckpointError: naming the tensor for a missing tensor, a shape mismatch, or unexpected tensors.
  """
  graphdef, abstract = abstract_model(cfg)
  available = set(available)
  flat = nnx.to_flat_state(abstract)
  param_dtype = jnp.dtype(cfg.param_dtype)
  used, leaves = set(), []
  for path, var in flat:
    name, transposed = hf_name(path)
    if name not in available:
      raise CheckpointError(f"{source}: missing tensor {name!r} (expected shape "
                            f"{tuple(reversed(var.shape)) if transposed else tuple(var.shape)}).")
    array = np.asarray(get_tensor(name))
    if transposed:
      array = array.T
    if array.shape != tuple(var.shape):
      stored = tuple(reversed(array.shape)) if transposed else array.shape
      expected = tuple(reversed(var.shape)) if transposed else tuple(var.shape)
      raise CheckpointError(f"{source}: tensor {name!r} has shape {stored}, expected {expected}.")
    used.add(name)
    leaves.append((path, var.replace(jnp.asarray(array, dtype=param_dtype))))
  unexpected = sorted(n for n in available - used if not n.endswith(_IGNORED_SUFFIXES)
                      and not (cfg.tie_embeddings and n == "lm_head.weight"))
  if unexpected:
    raise CheckpointError(f"{source}: unexpected tensors for a {cfg.family} model: {unexpected[:8]}"
                          f"{' ...' if len(unexpected) > 8 else ''}")
  return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def _safetensor_files(directory: str) -> list[str]:
  index = os.path.join(directory, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    return sorted({os.path.join(directory, v) for v in weight_map.values()})
  single = os.path.join(directory, "model.safetensors")
  if os.path.exists(single):
    return [single]
  raise CheckpointError(f"{directory}: no model.safetensors or model.safetensors.index.json found.")


def read_hf_config(directory: str) -> dict:
  path = os.path.join(directory, "config.json")
  if not os.path.exists(path):
    raise CheckpointError(f"{directory}: config.json not found (is this a Hugging Face model directory?).")
  with open(path) as f:
    return json.load(f)


def load_hf(directory: str, **config_overrides) -> tuple[Decoder, ModelConfig]:
  """Loads a local Hugging Face checkpoint directory into a Decoder.

  Args:
    directory: folder with config.json and model.safetensors (or a sharded index).
    **config_overrides: ModelConfig fields to override, e.g. param_dtype="bfloat16".
  """
  from safetensors import safe_open  # pylint: disable=import-outside-toplevel
  try:
    cfg = from_hf_config(read_hf_config(directory), **config_overrides)
  except KeyError as e:
    raise CheckpointError(f"{directory}/config.json: required field {e.args[0]!r} is missing.") from None
  except ValueError as e:
    raise CheckpointError(f"{directory}/config.json: {e}") from None
  handles = {}
  for file in _safetensor_files(directory):
    try:
      handle = safe_open(file, framework="numpy")
    except Exception as e:  # safetensors raises its own error types for corrupt headers
      raise CheckpointError(f"{file}: cannot read safetensors file ({e}).") from e
    for name in handle.keys():
      handles[name] = handle
  model = model_from_tensors(cfg, lambda n: handles[n].get_tensor(n), handles.keys(), directory)
  return model, cfg


def hf_tensors(model: Decoder) -> dict[str, np.ndarray]:
  """Our parameters as HF-named, HF-layout float32 numpy arrays."""
  out = {}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    name, transposed = hf_name(path)
    array = np.asarray(jax.device_get(var[...]), dtype=np.float32)
    out[name] = np.ascontiguousarray(array.T if transposed else array)
  return out


def save_hf(model: Decoder, directory: str, tokenizer=None, extra_config: Mapping | None = None) -> None:
  """Writes config.json + model.safetensors (float32) that `transformers` can `from_pretrained`.

  Args:
    model: the Decoder to export.
    directory: output folder (created).
    tokenizer: optional `HFTokenizer`; its files are saved alongside so the folder is self-contained,
      and generation_config.json gets every stop id (`eos_ids`) and its sampling defaults.
    extra_config: extra config.json fields (e.g. bos/eos token ids).
  """
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  os.makedirs(directory, exist_ok=True)
  hf_cfg = to_hf_config(model.cfg, **dict(extra_config or {}))
  hf_cfg["dtype"] = "float32"
  if tokenizer is not None:
    hf_cfg.setdefault("eos_token_id", list(tokenizer.eos_ids))
    hf_cfg.setdefault("pad_token_id", tokenizer.pad_id)
    if tokenizer.bos_id is not None:
      hf_cfg.setdefault("bos_token_id", tokenizer.bos_id)
    tokenizer.hf.save_pretrained(directory)
    generation = {**tokenizer.generation_defaults, "eos_token_id": list(tokenizer.eos_ids),
                  "pad_token_id": tokenizer.pad_id}
    if tokenizer.bos_id is not None:
      generation["bos_token_id"] = tokenizer.bos_id
    with open(os.path.join(directory, "generation_config.json"), "w") as f:
      json.dump(generation, f, indent=2)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(hf_cfg, f, indent=2)
  weights = os.path.join(directory, "model.safetensors")
  save_file(hf_tensors(model), weights, metadata={"format": "pt"})
  # safetensors writes the file owner-only (0600); give it the permissions of every other file.
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(weights, 0o666 & ~umask)

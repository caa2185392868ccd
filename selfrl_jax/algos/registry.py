"""Algorithm registry: `rl.algorithm` names a module `selfrl_jax.algos.<name>` that defines `ALGORITHM`.

    spec = get_algorithm_spec("grpo")       # imports selfrl_jax.algos.grpo, returns its ALGORITHM
    section = spec.default_config()         # the algorithm's own config section (or None)
    algo = spec.build(cfg, tokenizer, reward_fn, sampling, records=records)

No shared file lists the papers: a new paper is a module with an `ALGORITHM = AlgorithmSpec(...)`
(see docs/algorithms.md, "Adding a paper"). Code outside the package can `register_algorithm`.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable, Mapping

import ml_collections

CheckFn = Callable[[bool, str, str], None]  # check(condition, "section.field", message) raises ConfigError


@dataclasses.dataclass(frozen=True)
class AlgorithmSpec:
  """How the shared code builds, configures and validates one algorithm.

  Attributes:
    name: the `rl.algorithm` value.
    build: `build(cfg, tokenizer, reward_fn, sampling, records=None) -> Algorithm`, with the
      training decoding; `records` is the split being trained or evaluated (host verifiers and
      label oracles look examples up by `example_id`).
    default_config: the algorithm's own section `cfg.<name>` (every field commented), or None.
    validate: `validate(cfg, check)`: checks the algorithm's knobs, naming the field.
    replaces: shared knobs the algorithm ignores -> (the value it must keep, the knob to use
      instead); any other value fails validation, e.g. {"rl.kl_coef": (0.0, "score.beta1 / score.beta2")}.
    sft_demos: extra `sft.demos` streams: name -> `demos(cfg, algorithm, batches, tokenizer, seed)
      -> (iterator of SFT demonstrations, settings dict that keys the warm-start cache)`.
    prepare: optional stage between the warm start and RL (`train/prepare.py`):
      `prepare(cfg, algorithm, algo_state, model, tokenizer, train_source) -> (algo_state, report)`
      fills part of the algorithm's state from the warm-started policy `model` (e.g. a reward
      classifier trained on the policy's own responses); `report` maps names to scalars.
    prepare_settings: `prepare_settings(cfg) -> dict`, everything besides the policy that
      determines `prepare`'s result (keys its cache).
    renamed_knobs: knobs of the section renamed since config files may have been written: old
      field -> what to set instead (named when a config still sets the old field).
    answer_is_response: the response is the task's answer, so `rl.max_new_tokens` must fit the
      reference answers (checked before training); False for agents, whose record answer specifies
      the environment's task and whose per-step budget is unrelated to it.
  """

  name: str
  build: Callable[..., Any]
  default_config: Callable[[], ml_collections.ConfigDict] | None = None
  validate: Callable[[ml_collections.ConfigDict, CheckFn], None] | None = None
  replaces: Mapping[str, tuple[Any, str]] = dataclasses.field(default_factory=dict)
  sft_demos: Mapping[str, Callable[..., Any]] = dataclasses.field(default_factory=dict)
  prepare: Callable[..., Any] | None = None
  prepare_settings: Callable[[ml_collections.ConfigDict], dict] | None = None
  renamed_knobs: Mapping[str, str] = dataclasses.field(default_factory=dict)
  answer_is_response: bool = True


_REGISTRY: dict[str, AlgorithmSpec] = {}


def register_algorithm(spec: AlgorithmSpec) -> AlgorithmSpec:
  """Adds `spec` (replacing one of the same name, so notebooks can re-run a cell)."""
  _REGISTRY[spec.name] = spec
  return spec


def available_algorithms() -> list[str]:
  """Every registered name plus every module of this package that defines `ALGORITHM`."""
  import selfrl_jax.algos as package

  names = set(_REGISTRY)
  for info in pkgutil.iter_modules(package.__path__):
    module = importlib.import_module(f"{package.__name__}.{info.name}")
    if isinstance(getattr(module, "ALGORITHM", None), AlgorithmSpec):
      names.add(module.ALGORITHM.name)
  return sorted(names)


def get_algorithm_spec(name: str) -> AlgorithmSpec:
  """The spec registered as `name`, importing `selfrl_jax.algos.<name>` on first use.

  Raises:
    KeyError: naming the available algorithms.
  """
  if name not in _REGISTRY and name.isidentifier():
    try:
      module = importlib.import_module(f"selfrl_jax.algos.{name}")
    except ModuleNotFoundError as e:
      if e.name != f"selfrl_jax.algos.{name}":
        raise
    else:
      spec = getattr(module, "ALGORITHM", None)
      if isinstance(spec, AlgorithmSpec):
        register_algorithm(spec)
  if name not in _REGISTRY:
    raise KeyError(f"unknown algorithm {name!r}; available: {available_algorithms()}")
  return _REGISTRY[name]

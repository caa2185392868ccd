"""What every entry point shares: one-line messages for a researcher's mistakes, quiet libraries.

    if __name__ == "__main__":
      cli.run(main)          # instead of absl.app.run(main)

A misspelled or mistyped `--config.a.b=...` override and the errors that name a config field or a
checkpoint problem (`ConfigError`, `CheckpointError`) print one line, `error: ...`, and exit with
status 2 instead of a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import sys

from absl import app, flags

from selfrl_jax.models.hf_io import CheckpointError as ModelCheckpointError
from selfrl_jax.train.builders import ConfigError
from selfrl_jax.train.checkpoint import CheckpointError as TrainCheckpointError
from selfrl_jax.train.loop import NonFiniteAbort

EXIT_USAGE = 2
_USER_ERRORS = (ConfigError, ModelCheckpointError, TrainCheckpointError, FileNotFoundError)
# Library INFO/WARNING lines that say nothing to a researcher: Orbax progress and tfds builder set-up
# go through absl's logger (our own modules log through their module loggers, which stay on).
_QUIET_LOGGERS = ("absl", "orbax", "tensorflow_datasets", "jax._src.xla_bridge", "datasets")


def _config_spec(argv: list[str]) -> str | None:
  """The `file.py[:arg]` of `--config=file.py[:arg]` (None if absent)."""
  return next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)


def _load_config(argv: list[str]):
  """The config `--config=file.py[:arg]` names, loaded the way config_flags does (None if absent)."""
  spec = _config_spec(argv)
  if spec is None:
    return None
  from experiments.arms import load_config_module  # pylint: disable=import-outside-toplevel
  path, _, arg = spec.partition(":")
  module = load_config_module(os.path.abspath(path))
  return module.get_config(arg) if arg else module.get_config()


def _field_paths(node, prefix: str = "config") -> list[str]:
  """Dotted paths of every field of a config, nested sections included."""
  out = []
  for key in node.keys():
    out.append(f"{prefix}.{key}")
    if hasattr(node[key], "keys"):
      out += _field_paths(node[key], f"{prefix}.{key}")
  return out


def _override_error(argv: list[str]) -> str | None:
  """'config.x.y: no such field ...' for the first `--config.x.y=v` override the config lacks."""
  try:
    config = _load_config(argv)
  except Exception:  # noqa: BLE001 - the config file itself is broken: absl's message says so
    return None
  if config is None:
    return None
  for arg in argv[1:]:
    m = re.match(r"--(config(?:\.\w+)+)(?:=|$)", arg)
    if not m:
      continue
    node, path = config, m.group(1).split(".")[1:]
    for depth, name in enumerate(path):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if name not in keys:
        where = ".".join(["config", *path[:depth]])
        close = [f"{where}.{c}" for c in difflib.get_close_matches(name, keys, n=3)]
        if not close:  # the right name in another section (rl.learning_rate -> optim.learning_rate)
          fields = _field_paths(config)
          names = difflib.get_close_matches(name, {f.rsplit(".", 1)[1] for f in fields}, n=2)
          close = [f for f in fields if f.rsplit(".", 1)[1] in names][:3]
        hint = (f"; did you mean {' or '.join(close)}?" if close else
                f"; {where} has {', '.join(sorted(keys)[:12])}{' ...' if len(keys) > 12 else ''}")
        return f"{m.group(1)}: no such field in {where}{hint}"
      node = node[name]
  return None


def _config_file_error(argv: list[str]) -> str | None:
  spec = _config_spec(argv)
  if spec is None:
    return None
  path = spec.partition(":")[0]
  if not os.path.isfile(path):
    return f"--config={spec}: no such file {path!r} (relative paths start at {os.getcwd()})"
  return None


def _parse(argv: list[str]) -> list[str]:
  missing = _config_file_error(argv)
  if missing:
    print(f"error: {missing}", file=sys.stderr)
    sys.exit(EXIT_USAGE)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:  # a value of the wrong type, an unknown --flag, a missing required flag
    message = _override_error(argv) or str(e)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    message = _override_error(argv) or f"{type(e).__name__}: {e}"
  print(f"error: {message}", file=sys.stderr)
  sys.exit(EXIT_USAGE)


def setup_console() -> None:
  """Library INFO noise off (warnings from our own modules stay); log lines as `12:03:04 message`."""
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  for name in _QUIET_LOGGERS:
    logging.getLogger(name).setLevel(logging.ERROR)
  absl_logging.get_absl_handler().setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))


def run(main) -> None:
  """`absl.app.run(main)` with one-line user errors (see the module docstring) and quiet libraries."""
  def guarded(argv):
    setup_console()
    try:
      return main(argv)
    except _USER_ERRORS as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(EXIT_USAGE)
    except NonFiniteAbort as e:  # a run that failed, not a usage error: status 1, but no traceback
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)
  app.run(guarded, flags_parser=_parse)

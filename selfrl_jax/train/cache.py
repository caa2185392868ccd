"""Build-once artifacts shared by runs: keyed by the settings that determine them, locked, atomic.

The SFT warm start and an algorithm's preparation stage (e.g. a reward classifier trained on the
warm-started policy's own responses) take minutes and are identical across the arms of an ablation.
`cached_build` gives each distinct settings dict one directory under a cache root:

    path = cached_build(root, "sft", settings, build=lambda tmp, partial: save_into(tmp),
                        complete_file="model.safetensors")

- an exclusive `flock` per key: concurrent runs wait for the one building it, then reuse it;
- `build(tmp_dir, partial_dir)` writes into a fresh temporary directory that is renamed into place
  only once complete (a crash never leaves a half-written artifact); `partial_dir` is where it may
  checkpoint its own progress to resume after an interruption (removed once the artifact exists);
- the settings are saved next to the artifact (`settings.json`) so a cache directory says what it is.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from typing import Callable

log = logging.getLogger(__name__)


def settings_key(settings: dict) -> str:
  return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_build(root: str, prefix: str, settings: dict, build: Callable[[str, str], None],
                 complete_file: str, what: str | None = None) -> tuple[str, bool]:
  """(directory of the artifact for `settings`, whether it was built now rather than reused).

  Args:
    root: cache root (one sub-directory per prefix and settings hash).
    prefix: names the artifact kind in directory names (`sft`, `prepare`).
    settings: JSON-able description of everything that determines the artifact.
    build: `build(tmp_dir, partial_dir)` writes the artifact into `tmp_dir`.
    complete_file: a file `build` writes last-or-always; its presence marks a finished artifact.
    what: name for log lines (default: the prefix).
  """
  what = what or prefix
  directory = os.path.join(root, f"{prefix}_{settings_key(settings)}")
  os.makedirs(root, exist_ok=True)
  with open(f"{directory}.lock", "a+") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      log.warning("%s: another run is building %s; waiting for it", what, directory)
      fcntl.flock(lock, fcntl.LOCK_EX)
    if os.path.exists(os.path.join(directory, complete_file)):
      log.warning("%s: reusing %s", what, directory)
      return directory, False
    partial = f"{directory}.partial"
    tmp = f"{directory}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    build(tmp, partial)
    with open(os.path.join(tmp, "settings.json"), "w") as f:
      json.dump(settings, f, indent=2, sort_keys=True, default=str)
    shutil.rmtree(directory, ignore_errors=True)  # a leftover without its complete file
    os.replace(tmp, directory)
    shutil.rmtree(partial, ignore_errors=True)
    return directory, True

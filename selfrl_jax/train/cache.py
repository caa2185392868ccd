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
- the settings are saved next to the artifact (`settings.json`) so a cache directory says what it is;
- every file's SHA-256 is recorded (`MANIFEST.json`) and checked before reuse: a damaged or
  incomplete artifact is moved aside (`<dir>.damaged-<time>`), said so, and built again — a shared
  cache never hands one bad file to every run of an ablation.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from typing import Callable

log = logging.getLogger(__name__)


def settings_key(settings: dict) -> str:
  return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


MANIFEST = "MANIFEST.json"


def _digests(directory: str) -> dict[str, str]:
  out = {}
  for root, _, files in os.walk(directory):
    for name in sorted(files):
      path = os.path.join(root, name)
      rel = os.path.relpath(path, directory)
      if rel == MANIFEST:
        continue
      h = hashlib.sha256()
      with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          h.update(block)
      out[rel] = h.hexdigest()
  return out


def damage(directory: str) -> str | None:
  """Why the artifact in `directory` cannot be trusted (None when every file matches its manifest)."""
  try:
    with open(os.path.join(directory, MANIFEST)) as f:
      recorded = json.load(f)
  except (OSError, ValueError) as e:
    return f"no readable {MANIFEST} ({type(e).__name__}; written by an older version or cut short)"
  found = _digests(directory)
  bad = sorted(k for k in set(recorded) | set(found) if recorded.get(k) != found.get(k))
  if bad:
    return f"{', '.join(bad[:4])} differ{'s' if len(bad) == 1 else ''} from the recorded SHA-256"
  return None


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
      why = damage(directory)
      if why is None:
        log.warning("%s: reusing %s", what, directory)
        return directory, False
      aside = f"{directory}.damaged-{int(time.time())}"
      os.replace(directory, aside)
      log.warning("%s: %s cannot be trusted (%s); moved to %s and building it again", what, directory, why, aside)
    partial = f"{directory}.partial"
    tmp = f"{directory}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    build(tmp, partial)
    with open(os.path.join(tmp, "settings.json"), "w") as f:
      json.dump(settings, f, indent=2, sort_keys=True, default=str)
    with open(os.path.join(tmp, MANIFEST), "w") as f:
      json.dump(_digests(tmp), f, indent=2, sort_keys=True)
    shutil.rmtree(directory, ignore_errors=True)  # a leftover without its complete file
    os.replace(tmp, directory)
    shutil.rmtree(partial, ignore_errors=True)
    log.warning("%s: saved in %s", what, directory)
    return directory, True

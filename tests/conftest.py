"""Shared test set-up: persistent compilation cache, CPU platform, shared data locations."""

import os
import pathlib

# Must be set before jax is imported anywhere.
_CACHE = pathlib.Path(os.environ.get("SELFRL_TEST_CACHE", pathlib.Path(__file__).resolve().parents[1] / ".cache"))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite compiles hundreds of small programs and runs each a few times: LLVM at optimisation level
# 0 compiles them about a third faster on 2 cores (measured, experiments/benchmarks/README.md) and
# leaves XLA's graph passes and float semantics as they are. Set XLA_FLAGS to test with the default.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("SELFRL_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  if not SHARED_DATA.is_dir():
    pytest.skip(f"shared benchmark data not found at {SHARED_DATA} (set SELFRL_SHARED_DATA)")
  return SHARED_DATA

"""The Colab notebooks execute top to bottom (shortened via SELFRL_NOTEBOOK_QUICK=1)."""

from __future__ import annotations

import pathlib
import re

import pytest

nbformat = pytest.importorskip("nbformat", reason="needs nbformat/nbclient (requirements-dev.txt)")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "colab").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch):
  monkeypatch.setenv("SELFRL_NOTEBOOK_QUICK", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(path.parent)}})
  client.execute()
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
  assert re.search(r"held-out \w+ after RL", outputs), outputs[-2000:]

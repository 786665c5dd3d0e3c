"""notebooks/inspect_retrieval.ipynb executes top to bottom (nbclient, a python3 kernel) on the tiny trained run and
shows what it promises: curves, the metrics table, retrieval grids, the worst queries, foreground maps + stripes."""

from __future__ import annotations

import os

import nbformat
import pytest
from nbclient import NotebookClient

import search_fixtures

NOTEBOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "notebooks", "inspect_retrieval.ipynb")


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
  run = search_fixtures.trained_run(tmp_path_factory)
  nb = nbformat.read(NOTEBOOK, as_version=4)
  with pytest.MonkeyPatch.context() as mp:  # the kernel inherits this process's environment
    mp.setenv("TPSEARCH_WORKDIR", run["workdir"])
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}).execute()
  return nb


def _outputs(nb):
  for cell in nb.cells:
    for out in cell.get("outputs", []):
      yield cell, out


def test_notebook_runs_and_shows_every_section(executed):
  errors = [o for _, o in _outputs(executed) if o.get("output_type") == "error"]
  assert not errors
  images = sum("image/png" in o.get("data", {}) for _, o in _outputs(executed))
  assert images >= 5  # curves, 2 retrieval grids, the overlays with stripes, the foreground maps
  text = "".join(o.get("text", "") + o.get("data", {}).get("text/markdown", "") for _, o in _outputs(executed))
  assert "| val |" in text and "| test |" in text  # the metrics table
  assert "rank of first hit" in text  # the worst queries
  assert "pieces: global, coarse_1, coarse_2, part_1, part_2, part_3" in text
  assert "not a part-level model" not in text
  assert "foreground map vs person mask: AUC" in text and "| stripe_0 |" in text  # the binding measures

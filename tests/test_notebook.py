"""The Colab TPU notebook: its cells that need no TPU and no Colab run top to bottom on CPU."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "colab_tpu.ipynb"


@pytest.mark.slow
def test_colab_notebook_cpu_cells_run(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    tags = [set(cell.metadata.get("tags", [])) for cell in notebook.cells]
    assert any("tpu" in t for t in tags) and any("colab" in t for t in tags)
    notebook.cells = [cell for cell, t in zip(notebook.cells, tags) if not t & {"tpu", "colab"}]
    assert sum(cell.cell_type == "code" for cell in notebook.cells) >= 3
    # The kernel imports this checkout's adapter_bert, whatever else is installed.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for out in cell.get("outputs", []))
    assert "TPU runtime: False" in outputs
    assert "batch shapes: [(64, 64)" in outputs

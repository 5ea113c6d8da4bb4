"""examples/quickstart.ipynb, executed cell by cell by a real Jupyter kernel (ipykernel through nbclient), as a
student would run it: every cell without error, and the figures inline as PNG images."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def _mimes(cell) -> set[str]:
    return {mime for out in cell.get("outputs", []) for mime in out.get("data", {})}


def _text(cell, mime: str = "text/plain") -> str:
    return "".join(out.get("text", "") + out.get("data", {}).get(mime, "") for out in cell.get("outputs", []))


def test_the_quickstart_notebook_runs_in_a_kernel_and_shows_its_figures_inline(real_fashion, tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "commit it without outputs"
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    train, curves, predict, explain, segment = (c for c in nb.cells if c.cell_type == "code")
    assert not [out for c in nb.cells for out in c.get("outputs", []) if out.output_type == "error"]

    # The run shows itself: its summary table and key figures, embedded.
    summary = _text(train, "text/html")
    assert "<table>" in summary and summary.count('src="data:image/png;base64,') == 2
    assert "fashion / fast" in summary and "test accuracy" in summary
    # rich renders in Jupyter: progress bars as a live widget, epoch lines as HTML, no escape codes in streams.
    assert "application/vnd.jupyter.widget-view+json" in _mimes(train)
    assert "epoch   4/4" in _text(train, "text/html")
    assert not [out for out in train.outputs if "\x1b[" in out.get("text", "")]
    assert "image/png" in _mimes(curves)
    assert "Ankle boot" in _text(predict)  # the shipped sample is test image 0, an ankle boot
    assert "image/png" in _mimes(explain) and "Ankle boot" in _text(explain)
    assert "image/png" in _mimes(segment) and "'facade'" in _text(segment)
    assert (tmp_path / "explanations" / "fashion-mnist-test-0000_explain.png").is_file()
    assert (tmp_path / "predictions" / "temple_overlay.png").is_file()

"""The person detection notebook runs top to bottom (on a tiny slice, QGT_NOTEBOOK_QUICK=1)."""

import json
import pathlib
import sys

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = pathlib.Path(__file__).resolve().parent.parent / "notebooks" / "qgt_person_detection.ipynb"


@pytest.fixture
def python3_kernel_of_this_interpreter(monkeypatch, tmp_path):
    """Points the 'python3' kernel spec at this interpreter, whatever kernels the machine has installed."""
    kernel_dir = tmp_path / "kernels" / "python3"
    kernel_dir.mkdir(parents=True)
    (kernel_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setenv("QGT_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")


def test_notebook_executes(python3_kernel_of_this_interpreter, tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    text = "".join(output.get("text", "") for output in outputs)
    assert "QGT 2-bit:" in text and "float:" in text
    assert sum("image/png" in output.get("data", {}) for output in outputs) >= 2  # histograms, benchmark plot

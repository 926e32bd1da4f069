"""benchmarks/shipped_model.py and camera_preprocessing.py end to end (as programs: nothing imports
benchmarks): the example's shipped model read back from model_data.cc, run as generated C on the host, scored
against the float teacher and on the sketch's camera path."""

import json
import os
import subprocess
import sys

import pytest

from test_tflm_export_common import repo_root
from tflm_export import c_source


def test_model_data_cc_reads_back_as_the_model_it_holds():
    with open(os.path.join(repo_root(), "arduino", "QGT", "examples", "person_detection", "model_data.cc")) as f:
        shipped = c_source.model_bytes_of(f.read())
    assert shipped[4:8] == b"TFL3" and len(shipped) > 60000
    assert c_source.model_bytes_of(c_source.render(shipped, "m")[1]) == shipped
    with pytest.raises(ValueError, match=r"no kData\[\] array"):
        c_source.model_bytes_of("int x;")


def run_benchmark(name, tmp_path):
    """(the result of ``benchmarks/<name>.py --out=...`` run now, its committed result)."""
    out = tmp_path / name
    done = subprocess.run([sys.executable, os.path.join(repo_root(), "benchmarks", f"{name}.py"), f"--out={out}"],
                          capture_output=True, text=True, timeout=900, cwd=repo_root())
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    with open(os.path.join(repo_root(), "benchmarks", "results", f"{name}.json")) as f:
        return json.loads(out.with_suffix(".json").read_text()), json.load(f)


def test_the_benchmark_scores_the_shipped_model(tmp_path):
    result, committed = run_benchmark("shipped_model", tmp_path)
    for key in ("model_bytes", "person96_test_accuracy", "person96_test_images"):
        assert result[key] == committed[key], key  # the same model, bit-exact C: the same decisions
    assert result["ood"]["agreement"] == committed["ood"]["agreement"]
    assert set(result["provenance"]) == {"commit", "uncommitted_changes", "command", "machine", "wall_s"}


def test_the_camera_benchmark_reproduces_its_committed_rows(tmp_path):
    result, committed = run_benchmark("camera_preprocessing", tmp_path)
    assert result["model_bytes"] == committed["model_bytes"]
    assert [row["path"] for row in result["rows"]] == ["as trained (crop / 255)", "camera gray8 frame",
                                                       "camera rgb565 frame"]
    assert result["rows"] == committed["rows"]  # deterministic frames and bit-exact C: the same numbers

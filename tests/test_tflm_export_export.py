"""tflm_export.export: the whole folder, written whole or not at all; umask, SIGTERM, the LUT note."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from test_tflm_export_common import (TINY_BITS, calibration_images, converted_tiny, live_parent, repo_root,
                                     tiny_model)
from tflm_export import export, files, layout, lut
from tflm_export.tflite_model import ExportError

VARIANT_FILES = ["tiny_int8.tflite", "tiny_lut.tflite", "tiny_packed.tflite"]


def _snapshot(folder):
    """{relative path: bytes} of every file below ``folder``."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = open(path, "rb").read()
    return found


@pytest.fixture(scope="module")
def keras_export(tmp_path_factory):
    """(folder, report, model path, calibration path) of one export of the tiny Keras model at TINY_BITS."""
    folder = tmp_path_factory.mktemp("keras_export")
    model_path, data_path = str(folder / "tiny.keras"), str(folder / "calibration.npy")
    tiny_model().save(model_path)
    np.save(data_path, calibration_images(16))
    report = export.export(model_path, str(folder / "out"), TINY_BITS, calibration=data_path, verify_count=4)
    return folder / "out", report, model_path, data_path


@pytest.fixture
def int8_tflite(tmp_path):
    path = tmp_path / "tiny.tflite"
    path.write_bytes(converted_tiny()[1].tflite)
    return str(path)


def test_a_keras_export_writes_every_variant_and_is_deterministic(keras_export, tmp_path):
    out, report, model_path, data_path = keras_export
    assert sorted(os.listdir(out)) == sorted(["c", "size_report.json", "size_report.md", "tiny_float.tflite"]
                                             + VARIANT_FILES)
    assert sorted(os.listdir(out / "c")) == ["int8", "lut", "packed"]
    assert sorted(os.listdir(out / "c" / "packed")) == ["model_data.cc", "model_data.h"]
    saved = json.loads((out / "size_report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    rows = {row["variant"]: row for row in saved["rows"]}
    assert set(rows) == {"float", "int8", "lut", "packed"}
    # (On a model this small, int8 quantization metadata outweighs the float32 weights it saves.)
    assert rows["packed"]["file_bytes"] < min(rows["int8"]["file_bytes"], rows["float"]["file_bytes"])
    assert rows["int8"]["arena_bytes"] > 0 and rows["packed"]["arena_bytes"] is None
    assert all(set(row) == {"model", "variant", "bits", "file_bytes", "weight_bytes", "param_bytes", "graph_bytes",
                            "arena_bytes"} for row in saved["rows"])
    assert saved["packed_layers"]["bit_exact"] and saved["verification"]["lut"]["bit_exact"]
    assert saved["calibration"] == {"source": data_path, "samples": 16}
    markdown = (out / "size_report.md").read_text()
    assert "| packed |" in markdown and f"Calibration: 16 samples from {data_path}." in markdown
    again = export.export(model_path, str(tmp_path / "again"), TINY_BITS, calibration=data_path, verify_count=4)
    for file_name in VARIANT_FILES:
        assert (out / file_name).read_bytes() == (tmp_path / "again" / file_name).read_bytes()
    assert again["rows"] == report["rows"]


def test_files_and_folders_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        files.write_folder(str(tmp_path / "out"), {"a.txt": "a", os.path.join("c", "b.bin"): b"b"})
        files.write_atomic(str(tmp_path / "single.txt"), "x")
    finally:
        os.umask(previous)
    assert os.stat(tmp_path / "out").st_mode & 0o777 == 0o750
    assert os.stat(tmp_path / "out" / "c").st_mode & 0o777 == 0o750
    assert os.stat(tmp_path / "out" / "a.txt").st_mode & 0o777 == 0o640
    assert os.stat(tmp_path / "out" / "c" / "b.bin").st_mode & 0o777 == 0o640
    assert os.stat(tmp_path / "single.txt").st_mode & 0o777 == 0o640


def test_a_re_export_replaces_the_whole_folder(int8_tflite, tmp_path):
    out = tmp_path / "out"
    export.export(int8_tflite, str(out), default_bits=8, verify_count=1)
    (out / "stale.txt").write_text("left by hand in an export folder")
    report = export.export(int8_tflite, str(out), default_bits=2, verify_count=1)
    assert "stale.txt" not in os.listdir(out) and sorted(os.listdir(out)) == sorted(
        ["c", "size_report.json", "size_report.md"] + VARIANT_FILES)
    assert json.loads((out / "size_report.json").read_text())["default_bits"] == 2 == report["default_bits"]
    assert sorted(os.listdir(tmp_path)) == ["out", "tiny.tflite"]  # no staging or retired folder left


def test_a_failed_verification_leaves_the_previous_export(int8_tflite, tmp_path, monkeypatch):
    out = tmp_path / "out"
    export.export(int8_tflite, str(out), default_bits=8, verify_count=1)
    before = _snapshot(out)
    monkeypatch.setattr(export.verify, "check_packed_layers", lambda *args: {
        "layers": 4, "inputs": 1, "bit_exact": False, "mismatched_layers": ["op 0 (CONV_2D)"]})
    with pytest.raises(ExportError, match=r"verification failed, nothing written(.|\n)*differ: op 0 \(CONV_2D\)"):
        export.export(int8_tflite, str(out), default_bits=2, verify_count=1)
    assert _snapshot(out) == before
    with pytest.raises(ExportError, match="verification failed"):
        export.export(int8_tflite, str(tmp_path / "new"), default_bits=2, verify_count=1)
    assert sorted(os.listdir(tmp_path)) == ["out", "tiny.tflite"]


def test_a_write_failing_half_way_leaves_the_previous_folder(tmp_path, monkeypatch):
    out = tmp_path / "out"
    files.write_folder(str(out), {"old.txt": "old"})
    written = []

    def fsync_then_fail(descriptor):
        written.append(descriptor)
        if len(written) == 2:
            raise OSError("disk full")

    monkeypatch.setattr(files.os, "fsync", fsync_then_fail)
    with pytest.raises(OSError, match="disk full"):
        files.write_folder(str(out), {"new1.txt": "1", "new2.txt": "2", "new3.txt": "3"})
    assert _snapshot(out) == {"old.txt": b"old"}
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_the_output_folder_is_checked_before_any_work(int8_tflite, tmp_path, monkeypatch):
    def no_work(*args):
        raise AssertionError("the export started working before checking its output folder")

    monkeypatch.setattr(export, "_load", no_work)
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        export.export(int8_tflite, str(a_file))
    foreign = tmp_path / "my_project"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="no size_report.json, so it is not a previous export"):
        export.export(int8_tflite, str(foreign))
    assert (foreign / "notes.txt").read_text() == "mine" and a_file.read_text() == "mine"
    for count in ("verify_count", "calibration_count"):
        with pytest.raises(ExportError, match=f"{count} must be a positive integer, got 0"):
            export.export(int8_tflite, str(tmp_path / "out"), **{count: 0})


def test_an_lut_variant_no_smaller_than_int8_gets_a_note_and_one_that_cannot_be_made_is_left_out(
        int8_tflite, tmp_path, monkeypatch):
    report = export.export(int8_tflite, str(tmp_path / "eight"), default_bits=8, verify_count=1)
    rows = {row["variant"]: row["file_bytes"] for row in report["rows"]}
    assert rows["lut"] >= rows["int8"]  # 8-bit codes: the tables cost more than the indices save
    assert report["notes"] == [f"lut: {rows['lut']:,} B, not smaller than the int8 model's {rows['int8']:,} B: the "
                               "LUT tables and decode ops cost more than few-valued weights save here"]
    assert "Notes:" in (tmp_path / "eight" / "size_report.md").read_text()

    def nothing_to_compress(model):
        raise ExportError("no weight tensor has 128 or fewer distinct values: nothing to LUT-compress")

    monkeypatch.setattr(lut, "compress_model", nothing_to_compress)
    report = export.export(int8_tflite, str(tmp_path / "none"), default_bits=8, verify_count=1)
    assert "lut" not in report["verification"] and [row["variant"] for row in report["rows"]] == ["int8", "packed"]
    assert report["notes"] == ["lut: not written (no weight tensor has 128 or fewer distinct values: nothing to "
                               "LUT-compress)"]
    assert sorted(os.listdir(tmp_path / "none" / "c")) == ["int8", "packed"]


_RUN_TFLM_FOR_LONG = """
import sys
from tflm_export import verify
model = open(sys.argv[1], "rb").read()
inputs = verify.random_inputs(model, 100_000)
print("running", flush=True)
verify.run_tflm(model, inputs)
print("finished", flush=True)
"""


def _children(pid):
    """Pids of the live child processes of ``pid`` (Linux /proc)."""
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit() and live_parent(entry) == pid]


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads child processes from /proc")
def test_sigterm_kills_the_tflite_micro_child_and_removes_its_folder(int8_tflite, tmp_path):
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = dict(os.environ, TMPDIR=str(temporary), PYTHONPATH=repo_root())
    parent = subprocess.Popen([sys.executable, "-c", _RUN_TFLM_FOR_LONG, int8_tflite], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline() == "running\n"
        deadline = time.monotonic() + 60
        while not _children(parent.pid) and time.monotonic() < deadline:
            time.sleep(0.005)
        children = _children(parent.pid)
        assert children, "the TFLite-Micro child never started"
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if parent.poll() is None:
            parent.kill()
    assert "finished" not in parent.stdout.read()
    assert not any(os.path.exists(f"/proc/{child}") for child in children)
    assert os.listdir(temporary) == []

"""qgt-export's command line: the shared vocabulary, one-line errors, checks before TensorFlow loads."""

import json
import subprocess
import sys

import numpy as np
import pytest

from qgt import export as export_cli
from test_tflm_export_common import TINY_BITS, calibration_images, converted_tiny, repo_root, tiny_model


def _in_fresh_python(code):
    """stdout of ``code`` run by a new interpreter (one that has not imported TensorFlow yet)."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=repo_root())
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_a_keras_model_exports_through_the_command_line(tmp_path, capsys):
    model_path, data_path = tmp_path / "tiny.keras", tmp_path / "calibration.npy"
    tiny_model().save(model_path)
    np.save(data_path, calibration_images(16))
    layer_bits = ",".join(f"{name}={bits}" for name, bits in TINY_BITS.items())
    assert export_cli.main([f"--model={model_path}", f"--calibration={data_path}", f"--layer_bits={layer_bits}",
                            f"--out_dir={tmp_path / 'out'}", "--verify_count=2"]) == 0
    assert "| packed |" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "size_report.json").read_text())
    assert sorted(set(report["layer_bits"].values())) == sorted(set(TINY_BITS.values()))


def test_bits_is_the_default_width(tmp_path):
    source = tmp_path / "tiny.tflite"
    source.write_bytes(converted_tiny()[1].tflite)
    assert export_cli.main([f"--model={source}", "--bits=2", "--layer_bits=0=8", f"--out_dir={tmp_path / 'out'}",
                            "--verify_count=1"]) == 0
    report = json.loads((tmp_path / "out" / "size_report.json").read_text())
    assert report["default_bits"] == 2 and sorted(report["layer_bits"].values()) == [2, 2, 2, 8]


def test_errors_are_one_line_and_exit_1(tmp_path, capsys):
    garbage = tmp_path / "bad.tflite"
    garbage.write_bytes(b"junk" * 10)
    assert export_cli.main([f"--model={garbage}", f"--out_dir={tmp_path / 'out'}"]) == 1
    assert capsys.readouterr().err.startswith("qgt-export: not a .tflite flatbuffer")
    assert export_cli.main([f"--model={tmp_path / 'none.keras'}", f"--out_dir={tmp_path / 'out'}"]) == 1
    assert "qgt-export: --model" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, message", [("--layer_bits=conv1:2", "is not NAME=BITS"),
                                           ("--verify_count=0", "must be a positive integer"),
                                           ("--calibration_count=-3", "must be a positive integer")])
def test_bad_flags_are_usage_errors(tmp_path, capsys, flag, message):
    with pytest.raises(SystemExit) as exit_:
        export_cli.main(["--model=m.keras", f"--out_dir={tmp_path}", flag])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_the_output_folder_is_checked_before_tensorflow_loads(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    model = tmp_path / "tiny.tflite"
    model.write_bytes(converted_tiny()[1].tflite)
    out = _in_fresh_python(
        "import sys\nfrom qgt import export\n"
        f"code = export.main(['--model={model}', '--out_dir={a_file}'])\n"
        "print(code, 'tensorflow' in sys.modules)")
    assert out.split() == ["1", "False"]

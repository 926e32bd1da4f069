"""qgt-train end to end on 64 person96 images for one epoch, and its errors for bad flags."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tf_keras as keras
from absl import app, flags

from qgt_keras import quantizers, train

FLAGS = flags.FLAGS
QUICK = ["--model=small_cnn", "--image_size=16", "--limit=64", "--test_limit=64", "--epochs=1", "--verbose=0"]


def run_main(args):
    """Parses ``args`` as qgt-train's command line and runs its main in this process."""
    FLAGS.unparse_flags()
    argv = FLAGS(["qgt-train", *args])
    try:
        train.main(argv)
    finally:
        FLAGS.unparse_flags()


def test_end_to_end_writes_every_output(tmp_path):
    run_main([*QUICK, "--method=qgt", "--bits=2", "--bits_per_layer=pw1=4", f"--out_dir={tmp_path}"])
    written = {path.name for path in tmp_path.iterdir()}
    assert {"model.keras", "qgt_model.keras", "calibration.npy", "history.json", "result.json", "report.json",
            "report.md", "weights_vs_grid.png"} <= written
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["layer_bits"] == {"conv1": 8, "dw1": 2, "pw1": 4, "dense": 8}
    assert 0.0 <= result["accuracy"] <= 1.0
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history["loss"]) == 1 and "qgt_loss" in history
    bottlenecks = json.loads((tmp_path / "report.json").read_text())
    assert [row["name"] for row in bottlenecks["layers"]] == ["conv1", "dw1", "pw1", "dense"]
    assert (tmp_path / "report.md").read_text().startswith("| layer |")
    assert (tmp_path / "weights_vs_grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The saved model loads without custom objects and its kernels are on the grid.
    model = keras.models.load_model(tmp_path / "model.keras")
    kernel = model.get_layer("pw1").kernel.numpy()
    np.testing.assert_allclose(quantizers.snap(kernel, 4).numpy(), kernel, rtol=1e-5, atol=1e-7)
    assert np.load(tmp_path / "calibration.npy").shape[1:] == (16, 16, 3)


@pytest.mark.parametrize("args, message", [
    (["--bits_per_layer=conv1=9"], "must be an integer in 1..8"),
    (["--bits_per_layer=conv1"], "is not NAME=BITS"),
    (["--bits_per_layer=conv9=4"], "not quantizable layers"),
    (["--method=ptq", "--budget_bytes=1000"], "--budget_bytes chooses bits per layer for --method=qgt"),
    (["--edge_bits=wide"], "--edge_bits must be"),
    (["--qgt_epochs=3"], "exceeds --epochs"),
    (["--init_from=no/such/weights.h5"], "does not exist"),
])
def test_bad_flag_combinations_are_usage_errors(tmp_path, args, message):
    with pytest.raises(app.UsageError, match=message):
        run_main([*QUICK, f"--out_dir={tmp_path}", *args])


@pytest.mark.parametrize("args", [["--bits=9"], ["--dataset=imagenet"], ["--method=magic"]])
def test_bad_flag_values_are_rejected_by_the_parser(tmp_path, args):
    FLAGS.unparse_flags()
    with pytest.raises(flags.IllegalFlagValueError):
        FLAGS(["qgt-train", f"--out_dir={tmp_path}", *args])
    FLAGS.unparse_flags()


def test_command_line_reports_a_bad_flag():
    completed = subprocess.run([sys.executable, "-m", "qgt_keras.train", "--bits_per_layer=conv1=9", "--out_dir=x"],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode != 0
    assert "must be an integer in 1..8" in completed.stderr

"""qgt-train end to end on 64 person96 images for one epoch, and its errors for bad flags: each one line,
before training starts (before TensorFlow loads where the flags alone tell)."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tf_keras as keras

from qgt import train
from qgt_keras import conversion, datasets, quantizers, recipes

QUICK = ["--architecture=small_cnn", "--image_size=16", "--limit=64", "--test_limit=64", "--epochs=1", "--verbose=0"]


def test_end_to_end_writes_every_output(tmp_path):
    assert train.main([*QUICK, "--method=qgt", "--bits=2", "--layer_bits=pw1=4", f"--out_dir={tmp_path}"]) == 0
    written = {path.name for path in tmp_path.iterdir()}
    assert {"model.keras", "qgt_model.keras", "calibration.npy", "history.json", "result.json", "report.json",
            "report.md", "weights_vs_grid.png"} <= written
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["layer_bits"] == {"conv1": 8, "dw1": 2, "pw1": 4, "dense": 8}
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history["loss"]) == 1 and "qgt_loss" in history
    bottlenecks = json.loads((tmp_path / "report.json").read_text())
    assert [row["name"] for row in bottlenecks["layers"]] == ["conv1", "dw1", "pw1", "dense"]
    assert bottlenecks["examples"] == 256  # the calibration slice of the training data, not the test split
    assert (tmp_path / "report.md").read_text().startswith("| layer |")
    assert (tmp_path / "weights_vs_grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The saved model loads without custom objects, its kernels are on the grid, and its test accuracy is the
    # one reported.
    model = keras.models.load_model(tmp_path / "model.keras")
    kernel = model.get_layer("pw1").kernel.numpy()
    np.testing.assert_allclose(quantizers.snap(kernel, 4).numpy(), kernel, rtol=1e-5, atol=1e-7)
    data = datasets.load_data("person_folder", image_size=16, limit=64, test_limit=64)
    assert result["accuracy"] == pytest.approx(recipes.evaluate(model, data))
    assert np.load(tmp_path / "calibration.npy").shape[1:] == (16, 16, 3)
    qgt_model = keras.models.load_model(tmp_path / "qgt_model.keras")
    x = data.calibration[0][:8]
    np.testing.assert_allclose(qgt_model(x, training=False), model(x, training=False), atol=1e-5)


def test_distill_from_trains_against_the_teacher(tmp_path):
    from qgt_keras import models
    teacher = tmp_path / "teacher.keras"
    models.small_cnn((16, 16, 3)).save(teacher)
    assert train.main([*QUICK, "--method=qgt", "--bits=2", f"--distill_from={teacher}", "--distill_weight=0.5",
                       "--unlabeled_dir=transfer", "--unlabeled_person_share=0", f"--out_dir={tmp_path / 'out'}"]) == 0
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert {"hard_loss", "distillation_loss", "qgt_loss"} <= set(history)
    flags = json.loads((tmp_path / "out" / "result.json").read_text())["flags"]
    assert flags["distill_weight"] == 0.5 and flags["unlabeled_dir"] == "transfer"


def test_freeze_batchnorm_keeps_the_starts_statistics(tmp_path):
    from qgt_keras import models
    start = models.small_cnn((16, 16, 3))
    # Statistics that training on the data would move and a fresh model does not have: --init_from must copy them.
    start.get_layer("conv1_bn").moving_mean.assign(np.full(start.get_layer("conv1_bn").moving_mean.shape, 0.25))
    start.save(tmp_path / "start.keras")
    assert train.main([*QUICK, "--method=float", f"--init_from={tmp_path / 'start.keras'}", "--freeze_batchnorm",
                       f"--out_dir={tmp_path / 'out'}"]) == 0
    trained = keras.models.load_model(tmp_path / "out" / "model.keras")
    for name in ("conv1_bn", "dw1_bn", "pw1_bn"):  # statistics, gamma and beta as they started
        for kept, now in zip(start.get_layer(name).get_weights(), trained.get_layer(name).get_weights()):
            np.testing.assert_array_equal(kept, now)
    assert not np.array_equal(start.get_layer("pw1").kernel.numpy(), trained.get_layer("pw1").kernel.numpy())


def test_anchor_batchnorm_reaches_the_setup(tmp_path, monkeypatch):
    from qgt_keras import models
    teacher = tmp_path / "teacher.keras"
    models.small_cnn((16, 16, 3)).save(teacher)
    anchored = []
    anchor = conversion.anchor_batchnorm

    def recording(model, reference, *args, **kwargs):
        anchored.append(model)
        return anchor(model, reference, *args, **kwargs)

    monkeypatch.setattr(conversion, "anchor_batchnorm", recording)
    assert train.main([*QUICK, "--method=qgt", "--bits=2", f"--distill_from={teacher}", "--anchor_batchnorm",
                       f"--out_dir={tmp_path / 'out'}"]) == 0
    assert len(anchored) == 3  # before training, after its one epoch, after snapping
    assert json.loads((tmp_path / "out" / "result.json").read_text())["flags"]["anchor_batchnorm"] is True


@pytest.fixture
def no_training(monkeypatch):
    """Makes any training an error: the checks under test must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("training started before the flags were checked")

    monkeypatch.setattr(recipes.Setup, "pretrained", refuse)


@pytest.mark.parametrize("args, message", [
    (["--layer_bits=conv1=9"], "--layer_bits width of 'conv1' must be an integer in 1..8"),
    (["--layer_bits=conv9=4"], "not quantizable layers"),
    (["--method=ptq", "--budget_bytes=1000"], "--budget_bytes chooses bits per layer for --method=qgt"),
    (["--budget_bytes=10"], "budget of 10 B is below the smallest reachable size"),
    (["--edge_bits=wide"], "--edge_bits must be"),
    (["--qgt_epochs=3"], "exceeds --epochs"),
    (["--init_from=no/such/weights.h5"], "does not exist"),
    (["--distill_from=no/such/teacher.h5"], "--distill_from file no/such/teacher.h5 does not exist"),
    (["--distill_from=mlperf", "--distill_weight=2"], "need 0 <= --distill_weight <= 1"),
    (["--unlabeled_dir=transfer"], "--unlabeled_dir teaches through the teacher's soft targets: also pass "
                                   "--distill_from"),
    (["--distill_from=mlperf", "--unlabeled_dir=no/such"], "--unlabeled_dir no/such is not a folder"),
    (["--unlabeled_person_share=1"], "--unlabeled_person_share must be in [0, 1)"),
    (["--anchor_batchnorm"], "--anchor_batchnorm anchors BatchNormalization to the teacher: it needs --distill_from"),
    (["--distill_from=mlperf", "--anchor_batchnorm", "--freeze_batchnorm"], "excludes --freeze_batchnorm"),
    (["--architecture=resnet"], "--architecture must be one of mobilenet_v1, mobilenet_28, small_cnn"),
    (["--dataset=imagenet"], "dataset must be one of"),
    (["--ptq_scale=median"], "--ptq_scale must be one of"),
])
def test_bad_flags_are_one_line_errors_before_training(tmp_path, capsys, no_training, args, message):
    assert train.main([*QUICK, f"--out_dir={tmp_path / 'out'}", *args]) == 1
    error = capsys.readouterr().err
    assert error.startswith("qgt-train: ") and message in error and error.count("\n") == 1


def test_missing_data_and_missing_splits(tmp_path, capsys, no_training):
    assert train.main([*QUICK, f"--out_dir={tmp_path / 'out'}", f"--data_dir={tmp_path / 'nowhere'}"]) == 1
    assert "--data_dir" in capsys.readouterr().err
    only_train = tmp_path / "data"
    shutil.copytree(datasets.bundled_person96_dir() / "train" / "person", only_train / "train" / "person")
    assert train.main([*QUICK, f"--out_dir={tmp_path / 'out'}", f"--data_dir={only_train}"]) == 1
    assert f"lacks {only_train / 'test'}" in capsys.readouterr().err


def test_init_from_mlperf_says_where_to_get_the_weights(tmp_path, capsys, monkeypatch, no_training):
    monkeypatch.setenv("QGT_MLPERF_WEIGHTS", str(tmp_path / "vww_96.h5"))
    assert train.main([*QUICK, f"--out_dir={tmp_path / 'out'}", "--init_from=mlperf"]) == 1
    error = capsys.readouterr().err
    assert f"not at {tmp_path / 'vww_96.h5'}: download https://github.com/mlcommons/tiny/" in error


@pytest.mark.parametrize("args", [["--bits=two"], ["--method=magic"], ["--epochs=0"], ["--scale_interval=0"]])
def test_bad_flag_values_are_rejected_by_the_parser(tmp_path, capsys, args):
    with pytest.raises(SystemExit) as exit_:
        train.main([f"--out_dir={tmp_path}", *args])
    assert exit_.value.code == 2 and "error:" in capsys.readouterr().err


def test_an_out_dir_that_is_a_file_fails_before_tensorflow_loads(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    done = subprocess.run([sys.executable, "-c", "import sys\nfrom qgt import train\n"
                           f"code = train.main(['--out_dir={a_file}'])\nprint(code, 'tensorflow' in sys.modules)"],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["1", "False"]
    assert f"qgt-train: --out_dir {a_file} exists and is not a folder" in done.stderr
    assert a_file.read_text() == "mine"


def test_scale_interval_reaches_the_schedule():
    from qgt_keras import recipes
    args = train.build_parser().parse_args(["--out_dir=unused", "--scale_interval=16"])
    assert train._schedule(args, recipes).scale_interval == 16
    assert train._schedule(train.build_parser().parse_args(["--out_dir=unused"]), recipes).scale_interval == 1

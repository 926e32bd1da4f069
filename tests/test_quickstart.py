"""The README's main job, end to end on small images for 2 epochs (a small CNN to keep it quick)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tf_keras as keras

from test_tflm_export_common import repo_root
from qgt_keras import datasets, report


def test_quickstart_trains_reports_and_exports(tmp_path):
    out = tmp_path / "quickstart"
    result = subprocess.run(
        [sys.executable, "-m", "qgt.quickstart", f"--out_dir={out}", "--epochs=2", "--hard_epochs=0",
         "--image_size=32", "--architecture=small_cnn"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Bottlenecks:" in result.stdout and "| packed |" in result.stdout
    results = json.loads((out / "results.json").read_text())
    bottlenecks = json.loads((out / "report.json").read_text())
    assert {row["name"]: row["bits"] for row in bottlenecks["layers"]} == {"conv1": 8, "dw1": 2, "pw1": 2,
                                                                           "dense": 8}
    assert bottlenecks["examples"] == 256  # training images: the test split stays for testing
    # The saved model (snapped, BatchNorm re-estimated) has the test accuracy the table printed.
    model = keras.models.load_model(out / "qgt_model.keras")
    test = datasets.read_image_folder(datasets.bundled_person96_dir() / "test", image_size=(32, 32), batch_size=256)[0]
    x, y = (np.concatenate(parts) for parts in zip(*((a.numpy(), b.numpy()) for a, b in test)))
    accuracy = report.evaluate_batch(model, x, y, keras.losses.SparseCategoricalCrossentropy())[1]
    assert results["qgt"]["snapped_accuracy"] == pytest.approx(accuracy)
    assert f"QGT (end of QGT phase)   {100 * results['qgt']['float_accuracy']:5.1f}%" in result.stdout
    size_report = json.loads((out / "export" / "size_report.json").read_text())
    assert size_report["packed_round_trip"] and size_report["packed_layers"]["bit_exact"]
    assert size_report["calibration"]["source"].endswith("train")
    assert (out / "export" / "c" / "packed" / "model_data.h").exists()
    assert (out / "export" / "c" / "packed" / "qgt_model.c").exists()
    cortex_m4 = results["cortex_m4"]
    if not (shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")):
        assert cortex_m4 is None and "skipped: " in result.stdout
        return
    assert cortex_m4["outputs_equal_tflite_micro"] and cortex_m4["instructions"] > 0
    names = [image["image"] for image in cortex_m4["images"]]
    testdata = os.path.join(repo_root(), "..", "shared", "datasets", "tflm_testdata")
    if all(os.path.isfile(os.path.join(testdata, n)) for n in ("person.bmp", "no_person.bmp")):
        assert names == ["no_person.png", "person.png"]  # TFLM's test images
    else:
        assert len(names) == 2 and all(n.endswith(".jpg") for n in names)  # person96 test crops
    for image in cortex_m4["images"]:
        assert f"{image['image']:16s} person score {image['person_score']:.3f}" in result.stdout
    assert f"one inference: {cortex_m4['instructions']:,} instructions" in result.stdout

"""The README's main job, end to end on small images for 2 epochs."""

import json
import os
import shutil
import subprocess
import sys

from test_tflm_export_common import repo_root


def test_quickstart_trains_reports_and_exports(tmp_path):
    out = tmp_path / "quickstart"
    result = subprocess.run(
        [sys.executable, "-m", "qgt.quickstart", f"--out_dir={out}", "--epochs=2", "--hard_epochs=0",
         "--image_size=32"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "bottleneck" in result.stdout.lower() or "Bottlenecks" in result.stdout
    assert "packed" in result.stdout
    results = json.loads((out / "results.json").read_text())
    assert 0 <= results["qgt"]["snapped_accuracy"] <= 1 and results["packed_weight_bytes"] > 0
    layers = json.loads((out / "report.json").read_text())["layers"]
    assert {row["name"]: row["bits"] for row in layers}["conv1"] == 8 and layers[1]["bits"] == 2
    size_report = json.loads((out / "export" / "size_report.json").read_text())
    assert size_report["packed_round_trip"] and size_report["packed_layers"]["bit_exact"]
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

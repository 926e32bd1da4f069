"""The README's main job, end to end on small images for 2 epochs."""

import json
import subprocess
import sys


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

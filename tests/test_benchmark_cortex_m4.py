"""benchmarks/cortex_m4.py end to end (as a program: nothing imports benchmarks): every width and path built,
run on the emulated Cortex-M4 against TFLite-Micro (the benchmark fails on any output byte that differs),
and the result file the README documents."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from test_tflm_export_common import repo_root

WIDTHS = (1, 2, 4, 8)
RUNTIMES = ("generated_c_dsp", "generated_c_portable")
ROW_FIELDS = {"model", "weights_bits", "runtime", "instructions", "instructions_per_mac", "flash_bytes",
              "model_bytes", "ram_bytes", "commit", "layers"}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    if not (shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")):
        pytest.skip("the Cortex-M4 benchmark needs arm-none-eabi-gcc and qemu-system-arm (.ci/run installs them)")
    out = tmp_path_factory.mktemp("cortex_m4")
    done = subprocess.run([sys.executable, os.path.join(repo_root(), "benchmarks", "cortex_m4.py"),
                           f"--out_dir={out}"], capture_output=True, text=True, timeout=1200, cwd=repo_root())
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert (out / "cortex_m4.md").read_text().startswith("# ") and (out / "cortex_m4.png").stat().st_size > 0
    return json.loads((out / "cortex_m4.json").read_text())


def test_every_width_and_path_is_measured(result):
    rows = {(row["weights_bits"], row["runtime"]): row for row in result["rows"]}
    assert set(rows) == {(bits, runtime) for bits in WIDTHS for runtime in RUNTIMES}
    for row in rows.values():
        assert ROW_FIELDS <= set(row), row.keys()
        # The layers are one inference, counted in a build with a marker call after each op (a few more each).
        layer_instructions = sum(layer["instructions"] for layer in row["layers"])
        assert row["instructions"] - 1000 <= layer_instructions <= 1.01 * row["instructions"]
        assert row["ram_bytes"] >= row["buffer_bytes"] + row["stack_bytes"] > 0
    for bits in WIDTHS:  # the DSP path is the fast one, and the model's constants shrink with the width
        assert rows[bits, "generated_c_dsp"]["instructions"] < rows[bits, "generated_c_portable"]["instructions"] / 3
    assert [rows[bits, "generated_c_dsp"]["model_bytes"] for bits in WIDTHS] == sorted(
        rows[bits, "generated_c_dsp"]["model_bytes"] for bits in WIDTHS)


def test_the_record_names_the_code_and_the_command(result):
    record = result["provenance"]
    assert record["command"].startswith("python benchmarks/cortex_m4.py") and record["wall_s"] > 0
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=repo_root())
    if head.returncode == 0:  # a git checkout: the rows name the commit that produced them
        assert {row["commit"] for row in result["rows"]} == {head.stdout.strip()} == {record["commit"]}

"""The exporter's outputs: LUT variant, C sources (compiled), size breakdown and the qgt-export CLI."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from test_tflm_export_common import (TINY_BITS, calibration_images, converted_tiny, repo_root, rounded_tiny,
                                     tiny_model, with_op_renamed)
from tflm_export import c_source, cli, export, lut, pack, tflite_model, verify
from tflm_export.tflite_model import CorruptModelError, ExportError, UnsupportedOpsError


def test_lut_variant_is_bit_exact_with_the_int8_model_in_tflite_micro():
    _, conversion = converted_tiny()
    compressed = lut.compress_model(conversion.tflite)
    assert tflite_model.op_names(tflite_model.read(compressed)).count(verify.DECODE_OP) == 4
    inputs = verify.quantize_inputs(conversion.tflite, calibration_images(8, seed=3))
    result = verify.compare(compressed, inputs, reference_bytes=conversion.tflite, reference_runtime="tflm")
    assert result["bit_exact"], result


def test_size_breakdown_adds_up_and_shrinks():
    _, conversion = converted_tiny()
    sizes = {name: verify.size_breakdown(data) for name, data in
             (("int8", conversion.tflite), ("packed", pack.pack_model(rounded_tiny())))}
    for size in sizes.values():
        assert size["weight_bytes"] + size["param_bytes"] + size["graph_bytes"] == size["file_bytes"]
    weights = sum(np.prod(tiny_model().get_layer(name).weights[0].shape) for name in TINY_BITS)
    assert sizes["int8"]["weight_bytes"] == weights
    assert sizes["packed"]["weight_bytes"] < weights / 2


@pytest.mark.parametrize("name, expected", [
    ("person_detect", "person_detect"), ("3 weird-name!.tflite", "m_3_weird_name_tflite"), ("", "model"),
    ("ÄÖ", "model")])
def test_identifiers_are_sanitized(name, expected):
    assert c_source.identifier(name) == expected


_MAIN = r"""
#include <cstdio>
#include "model_data.h"

// Records the resolver calls the generated macro makes (TFLite-Micro itself is not needed to compile).
struct FakeResolver {
  int count = 0;
  void Add(const char* name) { std::printf("%s\n", name); ++count; }
%METHODS%
  void AddCustom(const char* name, int) { Add(name); }
};
%REGISTRATIONS%

int main() {
  FakeResolver resolver;
  %NS%_ADD_OPS(resolver);
  int elements = 1;
  for (int i = 0; i < %ns%::kInputRank; ++i) elements *= %ns%::kInputShape[i];
  std::printf("ops %d of %u, bytes %u, first 0x%02x%02x%02x%02x, input %d, arena %u, scale %.9g zp %d\n",
              resolver.count, %ns%::kOpCount, %ns%::kDataLength, %ns%::kData[4], %ns%::kData[5],
              %ns%::kData[6], %ns%::kData[7], elements, %ns%::kArenaSize,
              static_cast<double>(%ns%::kOutputScale), %ns%::kOutputZeroPoint);
  return reinterpret_cast<unsigned long>(%ns%::kData) % 16 == 0 ? 0 : 1;
}
"""


def _compile_and_run(compiler, folder, model_bytes, name, run=True):
    c_source.write(folder, model_bytes, name, arena_bytes=12345, source="in.tflite")
    model = tflite_model.read(model_bytes)
    methods = "\n".join(f"  void {method}() {{ Add(\"{op}\"); }}"
                        for op, method in tflite_model.TFLM_RESOLVER_METHODS.items())
    customs = [n for n in dict.fromkeys(tflite_model.op_names(model)) if n not in tflite_model.TFLM_RESOLVER_METHODS]
    registrations = "\n".join(f"int Register_{n}() {{ return 0; }}" for n in customs)
    namespace = f"{c_source.identifier(name)}_model"
    main = (_MAIN.replace("%METHODS%", methods).replace("%REGISTRATIONS%", registrations)
            .replace("%NS%", namespace.upper()).replace("%ns%", namespace))
    with open(os.path.join(folder, "main.cc"), "w") as f:
        f.write(main)
    flags = ["-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic"]
    if not run:  # a cross compiler: compile only, nothing to run the result on
        for unit in ("model_data", "main"):
            subprocess.run([compiler, *flags, "-mcpu=cortex-m4", "-mthumb", "-c", f"{unit}.cc", "-o", f"{unit}.o"],
                           cwd=folder, check=True, capture_output=True)
        return None
    subprocess.run([compiler, *flags, "main.cc", "model_data.cc", "-o", "app"], cwd=folder, check=True,
                   capture_output=True, text=True)
    return subprocess.run([os.path.join(folder, "app")], check=True, capture_output=True, text=True).stdout


@pytest.mark.parametrize("variant", ["int8", "lut", "packed"])
def test_generated_c_compiles_and_describes_the_model(tmp_path, variant):
    if shutil.which("g++") is None:
        pytest.skip("host g++ not installed")
    _, conversion = converted_tiny()
    data = {"int8": conversion.tflite, "lut": lut.compress_model(conversion.tflite),
            "packed": pack.pack_model(rounded_tiny())}[variant]
    output = _compile_and_run("g++", str(tmp_path), data, f"tiny {variant}")
    model = tflite_model.read(data)
    distinct = list(dict.fromkeys(tflite_model.op_names(model)))
    details = tflite_model.io_details(model)["outputs"][0]
    lines = output.splitlines()
    assert lines[:-1] == distinct
    assert lines[-1] == (f"ops {len(distinct)} of {len(distinct)}, bytes {len(data)}, first 0x54464c33, input 432, "
                         f"arena {13 * 1024}, scale {details['scale']:.9g} zp {details['zero_point']}")


def test_generated_c_cross_compiles_for_cortex_m(tmp_path):
    if shutil.which("arm-none-eabi-g++") is None:
        pytest.skip("arm-none-eabi-g++ not installed (apt package gcc-arm-none-eabi + libstdc++-arm-none-eabi-dev)")
    _compile_and_run("arm-none-eabi-g++", str(tmp_path), pack.pack_model(rounded_tiny()), "tiny",
                     run=False)
    assert (tmp_path / "model_data.o").exists() and (tmp_path / "main.o").exists()


def test_c_sources_are_deterministic_and_atomic(tmp_path):
    data = converted_tiny()[1].tflite
    first = c_source.write(str(tmp_path / "a"), data, "tiny", 1000)
    second = c_source.write(str(tmp_path / "b"), data, "tiny", 1000)
    for a, b in zip(first, second):
        assert open(a, "rb").read() == open(b, "rb").read()
    assert sorted(os.listdir(tmp_path / "a")) == ["model_data.cc", "model_data.h"]  # no temporary left
    header = open(first[0]).read()
    assert header.count("#ifndef") == 1 and header.rstrip().endswith("#endif  // TINY_MODEL_DATA_H_")


def test_cli_exports_a_keras_model(tmp_path):
    model_path, data_path = str(tmp_path / "tiny.keras"), str(tmp_path / "calibration.npy")
    tiny_model().save(model_path)
    np.save(data_path, calibration_images(16))
    out = tmp_path / "out"
    bits = ",".join(f"{name}={b}" for name, b in TINY_BITS.items())
    report = export.export(model_path, str(out), cli.parse_bits(bits.split(",")), calibration=np.load(data_path),
                           verify_count=4)
    assert sorted(os.listdir(out)) == ["c", "size_report.json", "size_report.md", "tiny_float.tflite",
                                       "tiny_int8.tflite", "tiny_lut.tflite", "tiny_packed.tflite"]
    assert sorted(os.listdir(out / "c")) == ["int8", "lut", "packed"]
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
    assert "| packed |" in (out / "size_report.md").read_text()
    again = export.export(model_path, str(tmp_path / "again"), cli.parse_bits(bits.split(",")),
                          calibration=np.load(data_path), verify_count=4)
    for variant in ("int8", "lut", "packed"):
        file_name = f"tiny_{variant}.tflite"
        assert (out / file_name).read_bytes() == (tmp_path / "again" / file_name).read_bytes()
    assert again["rows"] == report["rows"]


def test_calibration_from_an_image_folder(tmp_path):
    folder = os.path.join(repo_root(), "data", "person96", "test")
    if not os.path.isdir(folder):
        pytest.skip("bundled person96 images not found")
    images = export.calibration_images(folder, (12, 12, 1), count=6)
    assert images.shape == (6, 12, 12, 1) and 0.0 <= images.min() < images.max() <= 1.0
    model_path = str(tmp_path / "tiny.keras")
    tiny_model().save(model_path)
    report = export.export(model_path, str(tmp_path / "out"), TINY_BITS, calibration=folder, verify_count=2,
                           calibration_count=8)
    assert report["verification"]["int8"]["inputs"] == 2 and report["packed_layers"]["bit_exact"]


def test_cli_refuses_bad_input(tmp_path):
    garbage = tmp_path / "bad.tflite"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(CorruptModelError):
        export.export(str(garbage), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # nothing half-written
    with pytest.raises(ExportError, match="calibration"):
        keras_path = str(tmp_path / "tiny.keras")
        tiny_model().save(keras_path)
        export.export(keras_path, str(tmp_path / "out"))
    with pytest.raises(Exception, match="NAME=BITS"):
        cli.parse_bits(["conv1:2"])
    bad_ops = tmp_path / "custom.tflite"
    bad_ops.write_bytes(with_op_renamed(converted_tiny()[1].tflite, 1, "FANCY_OP"))
    with pytest.raises(UnsupportedOpsError, match="FANCY_OP"):
        export.export(str(bad_ops), str(tmp_path / "out"))


def test_cli_main_reports_errors_with_exit_code(tmp_path):
    garbage = tmp_path / "bad.tflite"
    garbage.write_bytes(b"junk" * 10)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(cli.__file__)),
                                                        os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "tflm_export.cli", f"--model={garbage}", f"--out={tmp_path / 'o'}"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1
    assert "qgt-export: not a .tflite flatbuffer" in done.stderr


def test_a_model_tflite_micro_rejects_is_an_error_not_a_dead_process():
    _, conversion = converted_tiny()
    model = tflite_model.read(conversion.tflite)
    first_output = int(model.subgraphs[0].operators[0].outputs[0])
    model.subgraphs[0].tensors[first_output].quantization.scale = np.array([1e-30], np.float32)  # degenerate
    with pytest.raises(ExportError, match="TFLite-Micro runtime failed"):
        verify.run_tflm(tflite_model.write(model), verify.random_inputs(conversion.tflite, 1))


def test_failed_verification_writes_only_the_report(tmp_path, monkeypatch):
    source = tmp_path / "tiny_int8.tflite"
    source.write_bytes(converted_tiny()[1].tflite)
    monkeypatch.setattr(export.verify, "check_packed_layers", lambda *args: {
        "layers": 4, "inputs": 1, "bit_exact": False, "mismatched_layers": ["op 0 (CONV_2D)"]})
    with pytest.raises(ExportError, match="verification failed"):
        export.export(str(source), str(tmp_path / "out"), default_bits=4, verify_count=1)
    assert sorted(os.listdir(tmp_path / "out")) == ["size_report.json", "size_report.md"]
    assert "differ: op 0 (CONV_2D)" in (tmp_path / "out" / "size_report.md").read_text()

"""The exporter's outputs: LUT variant, C sources (compiled), size breakdown, TFLite-Micro failures."""

import os
import shutil
import subprocess

import numpy as np
import pytest

from test_tflm_export_common import TINY_BITS, calibration_images, converted_tiny, rounded_tiny, tiny_model
from tflm_export import c_source, lut, pack, tflite_model, toolchain, verify
from tflm_export.tflite_model import ExportError


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
    # model_data.h of a packed model includes the QGT library's qgt_tflm.h (empty without TFLM headers)
    flags = ["-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic", f"-I{toolchain.library_dir()}"]
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


def test_a_model_tflite_micro_rejects_is_an_error_not_a_dead_process():
    _, conversion = converted_tiny()
    model = tflite_model.read(conversion.tflite)
    first_output = int(model.subgraphs[0].operators[0].outputs[0])
    model.subgraphs[0].tensors[first_output].quantization.scale = np.array([1e-30], np.float32)  # degenerate
    with pytest.raises(ExportError, match="TFLite-Micro runtime failed"):
        verify.run_tflm(tflite_model.write(model), verify.random_inputs(conversion.tflite, 1))

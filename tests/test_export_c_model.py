"""The generated C model in qgt-export: written beside model_data in c/packed, verified on the host against
TFLite-Micro and measured on the emulated Cortex-M4 in the size report; a mismatch fails the export, a
missing toolchain is a note, a model the kernels cannot run is a note; the pixel table is the pipeline's."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from test_codegen import SMALL_BITS, _randomized_small_cnn
from test_tflm_export_common import converted_tiny, repo_root
from qgt_keras import datasets
from tflm_export import c_model, export, model_runner, toolchain, verify
from tflm_export.tflite_model import ExportError

PERSON96_TEST = str(datasets.bundled_person96_dir() / "test")


@pytest.fixture(scope="module")
def small_keras(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("small") / "small.keras")
    _randomized_small_cnn().save(path)
    return path


@pytest.fixture(scope="module")
def small_export(small_keras, tmp_path_factory):
    out = tmp_path_factory.mktemp("small_export") / "out"
    report = export.export(small_keras, str(out), SMALL_BITS, calibration=PERSON96_TEST, name="small", verify_count=6,
                           calibration_count=24)
    return out, report


def test_the_export_writes_the_c_model_and_reports_its_footprint(small_export):
    out, report = small_export
    assert sorted(os.listdir(out / "c" / "packed")) == ["model_data.cc", "model_data.h", "qgt_model.c", "qgt_model.h"]
    saved = json.loads((out / "size_report.json").read_text())["c_model"]
    assert saved == json.loads(json.dumps(report["c_model"]))
    assert saved["files"] == ["c/packed/qgt_model.h", "c/packed/qgt_model.c"] and saved["prefix"] == "small_model"
    assert saved["host"] == {"inputs": 6, "bit_exact": True, "mismatched_outputs": 0}
    header = (out / "c" / "packed" / "qgt_model.h").read_text()
    assert f"#define SMALL_MODEL_BUFFER_BYTES {saved['buffer_bytes']}" in header
    assert "extern const int8_t small_model_pixel_to_input[256];" in header
    markdown = (out / "size_report.md").read_text()
    assert "host build (portable C) vs the int8 model in TFLite-Micro: bit-exact on 6 inputs" in markdown
    m4 = saved["cortex_m4"]
    if "note" in m4:
        assert m4["note"] == c_model.NOT_MEASURED
        pytest.skip(m4["note"])
    assert m4["bit_exact"] and m4["instructions"] > 100_000
    assert m4["ram_bytes"] == saved["buffer_bytes"] + m4["stack_bytes"] and 0 < m4["stack_bytes"] < 4096
    assert m4["firmware_flash_bytes"] == m4["kernels_flash_bytes"] + m4["model_code_flash_bytes"] + m4["libc_flash_bytes"]
    assert f"RAM {m4['ram_bytes']:,} B" in markdown and f"{m4['firmware_flash_bytes']:,} B besides" in markdown


def test_the_pixel_table_is_the_training_pipelines_preprocessing(small_export, tmp_path):
    out, _ = small_export
    int8 = (out / "small_int8.tflite").read_bytes()
    table = export.pixel_table(int8)
    # every channel value of real person96 crops: decoded to bytes, and through the training pipeline
    files = sorted(datasets.bundled_person96_dir().glob("test/person/*.jpg"))[:3]
    (tmp_path / "person").mkdir()
    for f in files:
        (tmp_path / "person" / f.name).write_bytes(f.read_bytes())
    dataset, _ = datasets.read_image_folder(tmp_path, batch_size=len(files))
    pipeline = verify.quantize_inputs(int8, next(iter(dataset))[0].numpy())
    pixels = np.stack([tf.io.decode_image(f.read_bytes(), channels=3).numpy() for f in files])
    np.testing.assert_array_equal(table[pixels], pipeline)


def test_the_grayscale_pixel_levels_match_the_pipeline_on_a_real_gray_image(tmp_path):
    bmp = os.path.join(repo_root(), "..", "shared", "datasets", "tflm_testdata", "no_person.bmp")
    if not os.path.exists(bmp):
        pytest.skip("TFLM test image no_person.bmp not found at ../shared/datasets/tflm_testdata/")
    (tmp_path / "any").mkdir()
    Image.open(bmp).save(tmp_path / "any" / "no_person.png")
    dataset, _ = datasets.read_image_folder(tmp_path, grayscale=True, batch_size=1)
    pipeline = next(iter(dataset))[0].numpy()[0, ..., 0]
    pixels = np.asarray(Image.open(bmp).convert("L"))
    np.testing.assert_array_equal(datasets.pixel_levels(grayscale=True)[pixels], pipeline)


def test_a_c_model_that_differs_fails_the_export(small_keras, tmp_path, monkeypatch):
    real = model_runner.run_host

    def off_by_one(*args):
        results = real(*args)
        results.outputs[0, 0] += 1
        return results

    monkeypatch.setattr(model_runner, "run_host", off_by_one)
    with pytest.raises(ExportError, match=r"verification failed(.|\n)*host build .*: differs on 2 inputs \(1 differ\)"):
        export.export(small_keras, str(tmp_path / "out"), SMALL_BITS, calibration=PERSON96_TEST, verify_count=2,
                      calibration_count=8)
    assert not (tmp_path / "out").exists()


def test_a_missing_cross_compiler_is_a_note(small_keras, tmp_path, monkeypatch):
    real = toolchain.require

    def no_arm(tool):
        if tool.startswith("arm-none-eabi"):
            raise toolchain.ToolchainMissing(f"{tool} not found")
        return real(tool)

    monkeypatch.setattr(toolchain, "require", no_arm)
    report = export.export(small_keras, str(tmp_path / "out"), SMALL_BITS, calibration=PERSON96_TEST, verify_count=2,
                           calibration_count=8)
    assert report["c_model"]["cortex_m4"] == {"note": c_model.NOT_MEASURED}
    assert report["c_model"]["host"]["bit_exact"]
    assert "Cortex-M4 (DSP path, qemu mps2-an386): not measured (arm-none-eabi-gcc / qemu-system-arm not found)" in (
        tmp_path / "out" / "size_report.md").read_text()


def test_a_model_the_kernels_cannot_run_gets_a_note_and_no_c_model(tmp_path):
    path = tmp_path / "tiny.tflite"
    path.write_bytes(converted_tiny()[1].tflite)  # global average pooling: MEAN
    report = export.export(str(path), str(tmp_path / "out"), default_bits=4, verify_count=1)
    assert report["c_model"] == {"note": "not written: ops not supported by the generated C model (QGT kernel "
                                         "library): MEAN"}
    assert sorted(os.listdir(tmp_path / "out" / "c" / "packed")) == ["model_data.cc", "model_data.h"]

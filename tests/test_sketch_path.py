"""The person_detection sketch's whole path without the board (tflm_export/sketch_runner.c): camera frame
-> qgt_camera_to_input -> generated C model -> qgt_person_update, on real frames (QCIF frames made from
person96 test crops and TFLM's test images), against Python: tflm_export.camera, the int8 model in the
TFLite-Micro runtime and tflm_export.person. Also the example's shipped model: its sources are what
qgt-export generates from the packed model they carry, and the sketch path runs it on the host and on the
emulated Cortex-M4 with the same results."""

import os
import types

import numpy as np
import pytest

from test_camera import QCIF, person96_crops, tflm_test_images
from test_codegen import SMALL_BITS, _person96, _randomized_small_cnn
from tflm_export import (c_source, camera, codegen, emulator, export, keras_convert, layout, pack, person,
                         sketch_runner, tflite_model, toolchain, verify)

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "arduino", "QGT", "examples", "person_detection")
SHIPPED_NAME = "person"  # qgt-export --name of the shipped model
ON, OFF = 600, 400  # the sketch's kPersonOn / kPersonOff


def _toolchain_or_skip(call):
    try:
        return call()
    except toolchain.ToolchainMissing as missing:
        pytest.skip(str(missing))


def real_frames(fmt):
    """QCIF frames of 6 + 6 person96 test crops and of TFLM's person / no_person images."""
    return [camera.frame_from_image(image, *QCIF, fmt) for image in person96_crops() + tflm_test_images()]


def _model(packed, prefix, folder):
    """Writes the generated C model of ``packed`` into ``folder``; returns what the checks need of it."""
    generated = codegen.generate(packed, prefix, export.pixel_table(packed))
    os.makedirs(folder, exist_ok=True)
    for name, text in generated.files().items():
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)
    return _described(packed, prefix, folder)


def _described(packed, prefix, folder):
    details = tflite_model.io_details(tflite_model.read(packed))
    output = details["outputs"][0]
    return types.SimpleNamespace(
        packed=packed, prefix=prefix, folder=folder, table=export.pixel_table(packed),
        shape=tuple(details["inputs"][0]["shape"][1:]), output_quant=(output["scale"], output["zero_point"]),
        input_bytes=int(np.prod(details["inputs"][0]["shape"])), output_bytes=int(np.prod(output["shape"])))


def _run_host(model, frames, fmt, folder):
    program = _toolchain_or_skip(lambda: sketch_runner.build_host(model.folder, model.prefix, folder))
    return sketch_runner.run_host(program, folder, frames, *QCIF, fmt, model.input_bytes, model.output_bytes, ON, OFF)


def _check_against_python(model, frames, fmt, results, expected_outputs):
    """Inputs equal tflm_export.camera's, scores and decisions tflm_export.person's of the outputs."""
    assert results.statuses == [0] * len(frames)
    inputs = np.stack([camera.to_input(f, *QCIF, fmt, model.table, model.shape) for f in frames])
    np.testing.assert_array_equal(results.inputs, inputs.reshape(len(frames), -1))
    if expected_outputs is not None:
        np.testing.assert_array_equal(results.outputs, expected_outputs)
    detector = person.Detector(codegen.PERSON_INDEX, *model.output_quant, ON, OFF)
    assert list(zip(results.scores, results.present)) == [detector.update(o) for o in results.outputs]
    return inputs


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small randomized CNN (96x96x3, 2 classes) exported as the sketch needs it, with its int8 model."""
    images = _person96(12, grayscale=False)
    int8 = pack.round_parameters(keras_convert.convert_keras(_randomized_small_cnn(), images, SMALL_BITS, 8).tflite)
    model = _model(pack.pack_model(int8), "small_model", str(tmp_path_factory.mktemp("small_model")))
    model.int8 = int8
    return model


@pytest.mark.parametrize("fmt", ["rgb565", "gray8"])
def test_the_sketch_path_matches_python_and_tflite_micro_on_real_frames(small, tmp_path, fmt):
    frames = real_frames(fmt)
    results = _run_host(small, frames, fmt, str(tmp_path))
    inputs = np.stack([camera.to_input(f, *QCIF, fmt, small.table, small.shape) for f in frames])
    expected = verify.run_tflm(small.int8, inputs)[0].reshape(len(frames), -1)
    _check_against_python(small, frames, fmt, results, expected)
    assert len(set(results.scores)) > 3  # frames the model tells apart


def _shipped_packed():
    """The packed model the example carries in model_data.cc (its kData array)."""
    with open(os.path.join(EXAMPLE, "model_data.cc")) as f:
        return c_source.model_bytes_of(f.read())


@pytest.fixture(scope="module")
def shipped():
    return _described(_shipped_packed(), f"{SHIPPED_NAME}_model", EXAMPLE)


def test_the_shipped_sources_are_one_export_of_one_packed_model(shipped):
    generated = codegen.generate(shipped.packed, shipped.prefix, shipped.table,
                                 layout.model_file(SHIPPED_NAME, "packed"))
    for name, text in generated.files().items():
        with open(os.path.join(EXAMPLE, name)) as f:
            assert f.read() == text, f"{name} is not what qgt-export generates from model_data.cc's model"
    with open(os.path.join(EXAMPLE, "model_data.h")) as f:
        assert f"kDataLength = {len(shipped.packed)};" in f.read()


def test_the_sketch_path_runs_the_shipped_model_on_real_frames(shipped, tmp_path):
    frames = real_frames("rgb565")
    results = _run_host(shipped, frames, "rgb565", str(tmp_path))
    _check_against_python(shipped, frames, "rgb565", results, None)


def test_the_shipped_model_gives_the_same_results_on_the_cortex_m4(shipped, tmp_path):
    frames = real_frames("rgb565")[-2:]  # TFLM's person and no_person images
    host = _run_host(shipped, frames, "rgb565", str(tmp_path / "host"))
    elf = _toolchain_or_skip(lambda: sketch_runner.build_cortex_m4(shipped.folder, shipped.prefix,
                                                                  str(tmp_path / "m4")))
    _toolchain_or_skip(emulator.require_qemu)
    m4 = sketch_runner.run_cortex_m4(elf, str(tmp_path / "m4"), frames, *QCIF, "rgb565", shipped.input_bytes,
                                     shipped.output_bytes, ON, OFF)
    np.testing.assert_array_equal(m4.inputs, host.inputs)
    np.testing.assert_array_equal(m4.outputs, host.outputs)
    assert (m4.scores, m4.present) == (host.scores, host.present)
    assert all(pre > 0 and invoke > pre for pre, invoke in m4.instructions)

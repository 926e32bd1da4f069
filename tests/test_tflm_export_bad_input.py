"""Bad input to the exporter: each a clear error naming the thing, and nothing written."""

import os
import shutil
import warnings
import zipfile

import numpy as np
import pytest
import tf_keras as keras

from qgt_keras import conversion, models, serialization
from qgt_keras.regularizers import QGTRegularizer
from test_tflm_export_common import TINY_BITS, calibration_images, converted_tiny, repo_root, tiny_model
from tflm_export import export, keras_convert, lut, pack, snap, tflite_model
from tflm_export.snap import OffGridError
from tflm_export.tflite_model import CorruptModelError, ExportError


def _edited(edit):
    """The tiny int8 model after ``edit(model, first weight op)`` on its unpacked tables (packed as is:
    ``tflite_model.write`` would refuse the damage)."""
    model = tflite_model.read(converted_tiny()[1].tflite)
    edit(model, tflite_model.weight_ops(model)[0])
    return tflite_model.pack_unaligned(model)


def _weight_quantization(model, op):
    return model.subgraphs[0].tensors[op.weights].quantization


@pytest.mark.parametrize("bits", [2, 8])
def test_a_weight_zero_point_is_refused_at_every_width(bits):
    def shift_zero_point(model, op):
        _weight_quantization(model, op).zeroPoint = np.full_like(_weight_quantization(model, op).zeroPoint, 3)

    edited = _edited(shift_zero_point)
    model = tflite_model.read(edited)
    with pytest.raises(OffGridError, match="has zero points \\[3\\]; a symmetric grid needs zero points 0") as error:
        snap.snap_tflite(edited, default_bits=bits)
    assert error.value.tensor == tflite_model.tensor_name(model, tflite_model.weight_ops(model)[0].weights)


def _zero_point_beyond_int8(model, op):
    _weight_quantization(model, op).zeroPoint = np.full_like(_weight_quantization(model, op).zeroPoint, 32768)


def _infinite_scale(model, op):
    _weight_quantization(model, op).scale[0] = np.inf


def _negative_scale(model, op):
    _weight_quantization(model, op).scale[0] = -1.0


def _unknown_builtin_code(model, op):
    model.operatorCodes[model.subgraphs[0].operators[op.op_index].opcodeIndex].builtinCode = 9999


def _short_buffer(model, op):
    model.buffers[model.subgraphs[0].tensors[op.weights].buffer].data = np.zeros(3, np.uint8)


def _name_not_utf8(model, op):
    model.subgraphs[0].tensors[op.weights].name = b"\xff\xfe weights"


def _details_without_table(model, op):
    _weight_quantization(model, op).detailsType = 1


def _no_options(model, op):
    operator = model.subgraphs[0].operators[op.op_index]
    operator.builtinOptionsType, operator.builtinOptions = 0, None


@pytest.mark.parametrize("edit, message", [
    (_zero_point_beyond_int8, r"tensor '.*' \(index \d+\) has zero points 32768..32768, outside its type int8"),
    (_infinite_scale, r"tensor '.*' \(index \d+\) has scales that are not finite and positive: \[inf\]"),
    (_negative_scale, r"has scales that are not finite and positive: \[-1.0\]"),
    (_unknown_builtin_code, "operator code 0 has unknown builtin code 9999"),
    (_short_buffer, r"has 3 bytes of data, its type int8 and shape \[5, 3, 3, 3\] need 135"),
    (_name_not_utf8, r"the name of tensor \d+ is not UTF-8 text"),
    (_details_without_table, "has quantization details of type 1, which TFLite-Micro does not support"),
    (_no_options, r"op 0 \(CONV_2D\) has options of type 0, expected 1"),
])
def test_damaged_tables_are_named_when_read_and_before_written(edit, message):
    with pytest.raises(CorruptModelError, match=message):
        tflite_model.read(_edited(edit))
    model = tflite_model.read(converted_tiny()[1].tflite)
    edit(model, tflite_model.weight_ops(model)[0])
    with pytest.raises(CorruptModelError, match=message):
        tflite_model.write(model)


def test_random_byte_flips_give_a_model_or_an_export_error():
    """Each flip either leaves a valid model (e.g. one weight value changed) or is an ExportError; never an
    unnamed exception, a crash or a silently repaired field."""
    good = converted_tiny()[1].tflite
    rng = np.random.default_rng(7)
    outcomes = {"model": 0, "refused": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the LUT tool's notices on tiny tensors
        for _ in range(24):
            data = bytearray(good)
            position = int(rng.integers(0, len(data)))
            data[position] ^= 1 << int(rng.integers(0, 8))
            try:
                int8 = pack.round_parameters(snap.snap_tflite(bytes(data), default_bits=2))
                pack.pack_model(int8)
                lut.compress_model(int8)
                outcomes["model"] += 1
            except ExportError:
                outcomes["refused"] += 1
    assert outcomes["model"] and outcomes["refused"], outcomes


def test_keras_files_that_are_not_tf_keras_models(tmp_path):
    import keras as keras3
    keras3_file = tmp_path / "keras3.keras"
    keras3.Sequential([keras3.Input((4,)), keras3.layers.Dense(2)]).save(keras3_file)
    with pytest.raises(serialization.ModelFileError, match=r"saved with Keras 3\.\d+.*re-save it with tf_keras"):
        serialization.load_model(keras3_file)
    text = tmp_path / "notes.keras"
    text.write_text("not a model")
    with pytest.raises(serialization.ModelFileError, match="notes.keras is not a Keras model file"):
        serialization.load_model(text)
    with pytest.raises(FileNotFoundError, match="model file .*missing.keras does not exist"):
        serialization.load_model(tmp_path / "missing.keras")


def test_a_model_naming_a_class_qgt_keras_lacks_is_named(tmp_path):
    path = tmp_path / "qgt.keras"
    conversion.quantize_model(models.small_cnn((8, 8, 3)), bits=2).save(path)
    renamed = tmp_path / "renamed.keras"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(renamed, "w") as target:
        for item in source.namelist():
            data = source.read(item)
            target.writestr(item, data.replace(b"qgt_keras>QDense", b"qgt_keras>QFancyDense")
                            if item == "config.json" else data)
    with pytest.raises(serialization.ModelFileError, match="uses qgt_keras>QFancyDense, which this version"):
        serialization.load_model(renamed)


@pytest.fixture(scope="module")
def tiny_keras_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.keras"
    tiny_model().save(path)
    return str(path)


@pytest.mark.parametrize("samples, message", [
    (np.zeros((4, 12, 12, 1), np.float32), r"have shape \(4, 12, 12, 1\); the model input takes \(N, 12, 12, 3\)"),
    (np.zeros((0, 12, 12, 3), np.float32), "hold no sample"),
    (np.full((4, 12, 12, 3), np.nan, np.float32), "hold 1728 non-finite values"),
    (np.array(["a", "b"]), "are of type <U1, expected numbers"),
])
def test_bad_calibration_samples_are_named_and_nothing_is_written(tiny_keras_file, tmp_path, samples, message):
    path = tmp_path / "samples.npy"
    np.save(path, samples)
    with pytest.raises(ExportError, match=rf"calibration samples \({path}\) {message}"):
        export.export(tiny_keras_file, str(tmp_path / "out"), TINY_BITS, calibration=str(path))
    assert not (tmp_path / "out").exists()


def test_calibration_that_is_not_samples(tiny_keras_file, tmp_path):
    text = tmp_path / "samples.npy"
    text.write_text("1, 2, 3")
    with pytest.raises(ExportError, match="calibration file .*samples.npy is not a .npy array"):
        export.export(tiny_keras_file, str(tmp_path / "out"), calibration=str(text))
    with pytest.raises(FileNotFoundError, match="calibration .*nowhere is neither an image folder nor a .npy file"):
        export.export(tiny_keras_file, str(tmp_path / "out"), calibration=str(tmp_path / "nowhere"))
    with pytest.raises(ExportError, match="a Keras model needs calibration samples"):
        export.export(tiny_keras_file, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def _image_folder(tmp_path, readable, corrupt):
    """A one-class image folder with ``readable`` bundled person96 images and ``corrupt`` broken files."""
    source = os.path.join(repo_root(), "data", "person96", "test", "person")
    if not os.path.isdir(source):
        pytest.skip("bundled person96 images not found")
    folder = tmp_path / "images"
    (folder / "person").mkdir(parents=True)
    for name in sorted(os.listdir(source))[:readable]:
        shutil.copy(os.path.join(source, name), folder / "person" / name)
    for index in range(corrupt):
        (folder / "person" / f"broken{index}.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return folder


def test_calibration_images_skipped_as_unreadable_are_counted(tiny_keras_file, tmp_path):
    folder = _image_folder(tmp_path, readable=6, corrupt=2)
    images, skipped = export.calibration_images(str(folder), (12, 12, 1), count=8)
    assert images.shape == (6, 12, 12, 1) and skipped == 2 and 0.0 <= images.min() < images.max() <= 1.0
    report = export.export(tiny_keras_file, str(tmp_path / "out"), TINY_BITS, calibration=str(folder),
                           verify_count=2)
    assert report["calibration"] == {"source": str(folder), "samples": 6, "unreadable_skipped": 2}
    assert "(2 unreadable images skipped)" in (tmp_path / "out" / "size_report.md").read_text()
    assert report["verification"]["int8"]["inputs"] == 2 and report["packed_layers"]["bit_exact"]


def test_a_calibration_folder_of_corrupt_images_is_an_error(tiny_keras_file, tmp_path):
    folder = _image_folder(tmp_path, readable=0, corrupt=3)
    with pytest.raises(ValueError, match=f"no readable image in {folder}"):
        export.export(tiny_keras_file, str(tmp_path / "out"), calibration=str(folder))
    assert not (tmp_path / "out").exists()


def _regularized_model():
    """conv -> depthwise -> dense with a standalone QGTRegularizer(2) on each kernel (the README's use)."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, kernel_regularizer=QGTRegularizer(2), name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, depthwise_regularizer=QGTRegularizer(2), name="dw")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(2, kernel_regularizer=QGTRegularizer(2), name="dense")(x))


def test_a_standalone_regularizer_sets_the_exported_bits():
    model = _regularized_model()
    images = np.random.default_rng(0).random((8, 8, 8, 3), dtype=np.float32)
    with pytest.raises(OffGridError, match="Keras layer 'conv' is off its grid"):
        keras_convert.convert_keras(model, images)
    conversion.snap_weights(model)  # what training with the regularizer ends with
    result = keras_convert.convert_keras(model, images)
    assert {layer: result.bits[tensor] for layer, tensor in result.layer_tensors.items()} == \
        {"conv": 2, "dw": 2, "dense": 2} == conversion.layer_bits(model)


def test_a_qgt_model_off_its_grid_is_refused_unless_resnap_is_asked(tmp_path):
    model = conversion.quantize_model(models.small_cnn((16, 16, 3)), bits=2)
    conversion.snap_weights(model)
    kernel = model.get_layer("pw1").kernel
    kernel.assign(kernel + 0.3 * np.std(kernel.numpy()) * np.random.default_rng(0).normal(size=kernel.shape))
    images = np.random.default_rng(1).random((8, 16, 16, 3), dtype=np.float32)
    with pytest.raises(OffGridError, match=r"Keras layer 'pw1' is off its grid \(2-bit, a weight \d\.\d\d grid "
                                           r"steps from its code.*--resnap") as error:
        keras_convert.convert_keras(model, images)
    assert error.value.tensor == "pw1"
    path = tmp_path / "off_grid.keras"
    model.save(path)
    with pytest.raises(OffGridError, match="pw1"):
        export.export(str(path), str(tmp_path / "out"), calibration=images)
    assert not (tmp_path / "out").exists()
    with pytest.warns(UserWarning, match=r"re-snapping Keras layers that were off their grid: pw1 \(2-bit"):
        result = keras_convert.convert_keras(model, images, resnap=True)
    snap.check_grid(result.tflite, result.bits)


def test_calibration_samples_are_the_first_of_an_array():
    samples, info = export.calibration_samples(calibration_images(10), (12, 12, 3), count=4)
    np.testing.assert_array_equal(samples, calibration_images(10)[:4])
    assert info == {"source": "array", "samples": 4}

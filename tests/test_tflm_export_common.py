"""Shared helpers of the tflm_export tests, and tests of the flatbuffer layer and atomic output."""

import os

import numpy as np
import pytest
import tf_keras as keras

from tflm_export import files, keras_convert, pack, snap, tflite_model
from tflm_export.tflite_model import CorruptModelError, UnsupportedOpsError

TINY_BITS = {"conv1": 2, "dw1": 3, "pw1": 1, "dense": 4}


def repo_root():
    """The folder holding setup.cfg above this file."""
    folder = os.path.dirname(os.path.abspath(__file__))
    while not os.path.exists(os.path.join(folder, "setup.cfg")):
        parent = os.path.dirname(folder)
        if parent == folder:
            raise RuntimeError("repository root (setup.cfg) not found")
        folder = parent
    return folder


def live_parent(pid):
    """The parent pid of process ``pid`` while it runs (not a zombie), else None (reads Linux /proc)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]) if fields[0] != "Z" else None


def reference_model(file_name):
    """Bytes or path of ../shared/reference_models/<file_name> (relative to the repo root); skips when absent."""
    path = os.path.join(repo_root(), "..", "shared", "reference_models", file_name)
    if not os.path.exists(path):
        pytest.skip(f"third-party reference model {file_name} not found at ../shared/reference_models/")
    return path


def read_reference(file_name):
    with open(reference_model(file_name), "rb") as f:
        return f.read()


def tiny_model(seed=0, negative_gamma=False):
    """conv1 (BN, ReLU6) -> dw1 (BN, ReLU) -> pw1 (BN) -> pooling -> dense logits, with BN statistics far
    from the identity so that folding changes every channel's scale."""
    rng = np.random.default_rng(seed)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(5, 3, strides=2, padding="same", use_bias=False, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw1")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(7, 1, name="pw1")(x)
    x = keras.layers.BatchNormalization(name="bn3")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, name="dense")(x)
    model = keras.Model(inputs, outputs)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = (w.shape for w in layer.get_weights())
            sign = -1.0 if negative_gamma else 1.0
            layer.set_weights([sign * rng.uniform(0.5, 2.0, gamma), rng.normal(0, 0.5, beta),
                               rng.normal(0, 0.3, mean), rng.uniform(0.5, 2.0, var)])
        elif layer.weights:  # conv, depthwise and dense: seeded, so every process builds the same model
            layer.set_weights([rng.normal(0, 0.5, w.shape) for w in layer.get_weights()])
    return model


def calibration_images(count=16, seed=1):
    return np.random.default_rng(seed).random((count, 12, 12, 3), dtype=np.float32)


_converted = {}


def converted_tiny():
    """(Keras model, Conversion) of :func:`tiny_model` at TINY_BITS, converted once per test session."""
    if "tiny" not in _converted:
        model = tiny_model()
        _converted["tiny"] = model, keras_convert.convert_keras(model, calibration_images(), TINY_BITS)
    return _converted["tiny"]


def rounded_tiny():
    """The int8 model of :func:`converted_tiny` with its parameters on the packed format's grids,
    every bias in one byte (the tiny layers would otherwise keep 2-byte biases)."""
    if "rounded" not in _converted:
        _converted["rounded"] = pack.round_parameters(converted_tiny()[1].tflite, wide_bias_channels=0)
    return _converted["rounded"]


def with_op_renamed(model_bytes, op_index, custom_code):
    """The model with op ``op_index`` turned into a custom op ``custom_code`` (for unsupported-op tests)."""
    model = tflite_model.read(model_bytes)
    code = tflite_model.schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = tflite_model.schema.BuiltinOperator.CUSTOM
    code.customCode = custom_code
    code.version = 1
    model.operatorCodes.append(code)
    model.subgraphs[0].operators[op_index].opcodeIndex = len(model.operatorCodes) - 1
    return tflite_model.write(model)


@pytest.mark.parametrize("data", [b"", b"not a model at all", b"\x00" * 64])
def test_garbage_is_a_corrupt_model(data):
    with pytest.raises(CorruptModelError, match="not a .tflite"):
        tflite_model.read(data)


def test_truncated_and_scrambled_models_are_corrupt():
    _, conversion = converted_tiny()
    good = conversion.tflite
    with pytest.raises(CorruptModelError):
        tflite_model.read(good[:len(good) // 3])
    scrambled = bytearray(good)
    scrambled[8:40] = bytes(range(200, 232))  # the root table's offsets
    with pytest.raises(CorruptModelError):
        tflite_model.read(bytes(scrambled))


def test_unsupported_ops_are_listed():
    _, conversion = converted_tiny()
    bad = with_op_renamed(conversion.tflite, 0, "MY_SECRET_OP")
    with pytest.raises(UnsupportedOpsError, match="MY_SECRET_OP") as error:
        snap.snap_tflite(bad, default_bits=4)
    assert error.value.ops == ["MY_SECRET_OP"]


def test_old_style_operator_codes_are_normalized():
    _, conversion = converted_tiny()
    model = tflite_model.read(conversion.tflite)
    for code in model.operatorCodes:
        code.builtinCode = 0  # as in models written before schema v3's builtin_code field
    names = tflite_model.op_names(tflite_model.read(tflite_model.write(model)))
    assert names == tflite_model.op_names(tflite_model.read(conversion.tflite))


def test_write_atomic_replaces_whole_file_or_nothing(tmp_path, monkeypatch):
    path = tmp_path / "out.bin"
    files.write_atomic(str(path), b"first")
    files.write_atomic(str(path), "second")
    assert path.read_bytes() == b"second"

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        files.write_atomic(str(path), b"third, never seen")
    assert path.read_bytes() == b"second"
    assert os.listdir(tmp_path) == ["out.bin"]

"""tflm_export.pack (docs/FORMAT.md): the packed model (format version 3), its decoder and its arithmetic."""

import struct

import numpy as np
import pytest

from test_tflm_export_common import calibration_images, converted_tiny, read_reference, rounded_tiny
from test_tflm_export_parameters import bias_widths
from tflm_export import bitpack, convert, pack, tflite_model, verify
from tflm_export.tflite_model import ExportError


def _qgt_ops(model):
    return [op for op in model.subgraphs[0].operators if tflite_model.op_name(model, op) in pack.BUILTIN_OF_CUSTOM]


def test_packed_model_round_trip_and_layout():
    int8 = rounded_tiny()
    packed = pack.pack_model(int8)
    expected, decoded = pack.expected_layers(int8), pack.unpack_model(packed)
    assert [layer.kind for layer in decoded] == ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "FULLY_CONNECTED"]
    assert [layer.weight_bits for layer in decoded] == [2, 4, 1, 4]  # 2, 3, 1, 4-bit grids
    assert all(a.equals(b) for a, b in zip(expected, decoded))  # integer-only multipliers == TFLM's double ones

    model = tflite_model.read(packed)
    names = tflite_model.op_names(model)
    assert not set(names) & set(convert.WEIGHT_OPS)
    assert set(pack.CUSTOM_CODES.values()) <= set(names)
    for op, layer in zip(_qgt_ops(model), decoded):
        assert len(op.inputs) == 2
        blob = model.subgraphs[0].tensors[int(op.inputs[1])]
        assert blob.quantization is None and blob.name is None
        options = bytes(op.customOptions)
        assert len(options) == pack.OPTIONS_BYTES == 21
        assert options[0] == pack.FORMAT_VERSION == 3 and options[5] & pack.FLAG_WORD_ROWS
        # weights first, in rows of whole words; then C biases and C scale codes
        rows, length = pack.weight_rows(layer.kind, layer.options["filter_shape"])
        channels = len(layer.bias)
        assert rows == (1 if layer.kind == "DEPTHWISE_CONV_2D" else channels)
        weight_bytes = rows * bitpack.row_bytes(length, layer.weight_bits)
        assert weight_bytes % 4 == 0
        assert pack.blob_sizes(layer.kind, options) == (weight_bytes, channels * (options[2] + 1))
        assert blob.shape[0] == weight_bytes + channels * (options[2] + 1)
    sizes = verify.size_breakdown(packed), verify.size_breakdown(int8)
    assert sizes[0]["weight_bytes"] < sizes[1]["weight_bytes"] and sizes[0]["param_bytes"] < sizes[1]["param_bytes"]
    assert len(model.subgraphs[0].tensors) < len(tflite_model.read(int8).subgraphs[0].tensors)
    assert set(bias_widths(packed)) == {1}  # after round_parameters every bias fits one byte


def test_packed_layers_compute_what_tflite_micro_computes():
    int8 = rounded_tiny()
    inputs = verify.quantize_inputs(int8, calibration_images(6, seed=7))
    result = verify.check_packed_layers(int8, pack.pack_model(int8), inputs)
    assert result == {"layers": 4, "inputs": 6, "bit_exact": True, "mismatched_layers": []}


def test_a_wrong_parameter_is_caught_by_the_layer_check():
    int8 = rounded_tiny()
    packed_model = tflite_model.read(pack.pack_model(int8))
    op = packed_model.subgraphs[0].operators[0]
    weight_bytes, _ = pack.blob_sizes("CONV_2D", bytes(op.customOptions))
    blob = int(op.inputs[1])
    data = tflite_model.tensor_array(packed_model, blob).copy()
    data[weight_bytes] ^= 0x40  # flip a bit of channel 0's bias
    tflite_model.set_tensor_data(packed_model, blob, data)
    inputs = verify.quantize_inputs(int8, calibration_images(4, seed=7))
    result = verify.check_packed_layers(int8, tflite_model.write(packed_model), inputs)
    assert result["mismatched_layers"] == ["op 0 (CONV_2D)"]


def test_third_party_model_packs_at_two_bits():
    snapped = convert.snap_tflite(read_reference("tflm_person_detect.tflite"), default_bits=2, bits={0: 8})
    rounded = pack.round_parameters(snapped)
    packed = pack.pack_model(rounded)
    decoded = pack.unpack_model(packed)
    assert all(a.equals(b) for a, b in zip(pack.expected_layers(rounded), decoded))
    assert sorted({layer.weight_bits for layer in decoded}) == [2, 8]
    result = verify.check_packed_layers(rounded, packed, verify.random_inputs(rounded, 1))
    assert result["bit_exact"], result
    assert len(packed) <= 65536  # the goal of issue 4


def _with_options(options):
    model = tflite_model.read(pack.pack_model(rounded_tiny()))
    model.subgraphs[0].operators[0].customOptions = np.frombuffer(bytes(options), np.uint8)
    return tflite_model.write(model)


def _good_options():
    return bytearray(bytes(tflite_model.read(pack.pack_model(rounded_tiny())).subgraphs[0].operators[0].customOptions))


@pytest.mark.parametrize("edit, message", [
    (lambda o: o[:5], "custom options of 5 bytes with format version 3"),
    (lambda o: o + b"\x00", "custom options of 22 bytes"),
    (lambda o: bytes([0]) + o[1:], "format version 0"),
    (lambda o: bytes([2]) + o[1:], "version 2 is no longer supported.*re-export with qgt-export"),
    (lambda o: bytes([1]) + o[1:], "version 1 is no longer supported.*re-export with qgt-export"),
    (lambda o: o[:1] + bytes([3]) + o[2:], "unsupported weight bits 3"),
    (lambda o: o[:5] + bytes([o[5] | 0x80]) + o[6:], "flags 0x82: unknown bits"),
    (lambda o: o[:5] + bytes([o[5] & ~pack.FLAG_WORD_ROWS]) + o[6:], "word-aligned-rows bit"),
    (lambda o: o[:6] + bytes([31]) + o[7:], "bias shift 31")])
def test_corrupt_custom_options_are_reported_with_the_op(edit, message):
    with pytest.raises(ExportError, match="op 0 \\(CONV_2D\\): .*" + message):
        pack.unpack_model(_with_options(edit(bytes(_good_options()))))


def test_a_truncated_blob_is_reported():
    model = tflite_model.read(pack.pack_model(rounded_tiny()))
    blob = int(model.subgraphs[0].operators[1].inputs[1])
    tflite_model.set_tensor_data(model, blob, tflite_model.tensor_array(model, blob)[:-1])
    model.subgraphs[0].tensors[blob].shape = [model.subgraphs[0].tensors[blob].shape[0] - 1]
    with pytest.raises(ExportError, match="op 1 \\(DEPTHWISE_CONV_2D\\): blob of"):
        pack.unpack_model(tflite_model.write(model))


def test_scales_off_the_grid_are_refused_and_odd_biases_fall_back_to_wider_ones():
    with pytest.raises(ExportError, match="not on the packed format's log grid.*round_parameters"):
        pack.pack_model(converted_tiny()[1].tflite)
    model = tflite_model.read(rounded_tiny())
    op = convert.weight_ops(model)[0]
    bias = tflite_model.tensor_array(model, op.bias).copy()
    bias[0] = 40001  # odd and beyond what 1 byte holds: needs 4 bytes (documented fallback)
    tflite_model.set_tensor_data(model, op.bias, bias)
    int8 = tflite_model.write(model)
    packed = pack.pack_model(int8)
    decoded = pack.unpack_model(packed)
    assert all(a.equals(b) for a, b in zip(pack.expected_layers(int8), decoded)) and decoded[0].bias[0] == 40001
    assert bias_widths(packed) == [4, 1, 1, 1]


def test_packed_layers_match_tflite_micro_on_edge_shapes():
    """Odd sizes and channel counts, VALID and SAME padding, strides 2 and (1, 2), a 2x3 kernel, depth
    multiplier 2 (dilated: the converter wraps it in SPACE_TO_BATCH_ND), ReLU6 / ReLU / none, 1- to 4-bit
    codes: every decoded layer must reproduce TFLite-Micro."""
    keras = pytest.importorskip("tf_keras")
    rng = np.random.default_rng(11)
    inputs = keras.Input((11, 13, 3))
    x = keras.layers.Conv2D(5, 3, strides=2, padding="valid", activation="relu6", name="conv_valid")(inputs)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", dilation_rate=2, activation="relu",
                                     name="dw_dilated")(x)
    x = keras.layers.Conv2D(3, (2, 3), strides=(1, 2), padding="same", name="conv_odd")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, name="dense")(x)
    model = keras.Model(inputs, outputs)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.normal(0, 0.5, w.shape) for w in layer.get_weights()])
    images = rng.random((8, 11, 13, 3), dtype=np.float32)
    result = convert.convert_keras(model, images, {"conv_valid": 1, "dw_dilated": 2, "conv_odd": 3, "dense": 4})
    int8 = pack.round_parameters(result.tflite)
    packed = pack.pack_model(int8)
    decoded = pack.unpack_model(packed)
    assert [layer.weight_bits for layer in decoded] == [1, 2, 4, 4]
    assert all(a.equals(b) for a, b in zip(pack.expected_layers(int8), decoded))
    check = verify.check_packed_layers(int8, packed, verify.quantize_inputs(int8, images[:4]))
    assert check["bit_exact"], check


def test_strides_beyond_a_byte_are_refused():
    layer = pack.expected_layers(rounded_tiny())[0]
    layer.options["stride_w"] = 256
    with pytest.raises(ExportError, match="exceed the 255"):
        pack._encode_options(layer, pack._Encoding(1, 0, 0, np.zeros(5, np.int64)))

"""tflm_export.pack (docs/FORMAT.md): bit packing, the packed model, its decoder and its arithmetic."""

import struct

import numpy as np
import pytest

from qgt_keras import quantizers
from test_tflm_export_common import calibration_images, converted_tiny, read_reference
from tflm_export import convert, pack, reference, tflite_model, verify
from tflm_export.tflite_model import ExportError


def _random_codes(bits, count, seed):
    rng = np.random.default_rng(seed)
    if bits == 1:
        return rng.choice([-1, 1], count)
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    codes = rng.integers(low, high + 1, count)
    codes[:2] = [low, high][:count]  # both extremes present
    return codes


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("count", [1, 3, 5, 7, 13, 250, 1001])
def test_pack_unpack_round_trip(bits, count):
    codes = _random_codes(bits, count, seed=bits * 1000 + count)
    packed = pack.pack_codes(codes, bits)
    assert len(packed) == -(-count * bits // 8)
    np.testing.assert_array_equal(pack.unpack_codes(packed, bits, count), codes)


def test_bit_order_is_as_documented():
    # 2 bits, first code in the low bits: 1 -> 01, -2 -> 10, 0 -> 00, -1 -> 11 gives 0b11_00_10_01.
    assert pack.pack_codes([1, -2, 0, -1], 2) == bytes([0b11001001])
    assert pack.pack_codes([1, -1, -1, 1, 1], 1) == bytes([0b00011001])
    assert pack.pack_codes([-8, 7, 3], 4) == bytes([0x78, 0x03])


@pytest.mark.parametrize("grid_bits, stored", [(1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (6, 8), (7, 8), (8, 8)])
def test_every_grid_width_has_a_storage_width(grid_bits, stored):
    low, high = quantizers.code_range(grid_bits)
    codes = np.array([low, high] if grid_bits == 1 else [low, 0, high])
    assert pack.storage_bits(codes) == stored
    np.testing.assert_array_equal(pack.unpack_codes(pack.pack_codes(codes, stored), stored, len(codes)), codes)


@pytest.mark.parametrize("codes, bits, message", [
    ([1, 0, -1], 1, "-1 or \\+1"), ([2], 2, "do not fit 2 bits"), ([-9], 4, "do not fit 4 bits"),
    ([1], 3, "storage width")])
def test_bad_codes_are_refused(codes, bits, message):
    with pytest.raises(ExportError, match=message):
        pack.pack_codes(codes, bits)


def test_unpack_refuses_a_wrong_byte_count():
    with pytest.raises(ExportError, match="cannot hold exactly"):
        pack.unpack_codes(b"\x00\x00", 2, 3)


@pytest.mark.parametrize("value", [0.5, 0.99999, 1.0, 3.7, 1e-3, 2.0 ** -20, 0.7071067811865476])
def test_quantize_multiplier_matches_the_real_multiplier(value):
    multiplier, shift = pack.quantize_multiplier(value)
    assert 2 ** 30 <= multiplier < 2 ** 31
    assert abs(multiplier * 2.0 ** (shift - 31) - value) <= value * 2.0 ** -30


def test_rounding_is_tflm_double_rounding():
    # 5 * 0.25 = 1.25: the high multiply rounds 2.5 to 3, the shift rounds 1.5 to 2 (one rounding gives 1).
    # -7 * 0.1875 = -1.3125 -> -1; 6 * 0.125 = 0.75 -> 1.
    got = reference.multiply_by_quantized_multiplier([5, -7, 6], [2 ** 30, 3 * 2 ** 29, 2 ** 30], [-1, -2, -2])
    np.testing.assert_array_equal(got, [2, -1, 1])


def test_packed_model_round_trip_and_layout():
    _, conversion = converted_tiny()
    packed = pack.pack_model(conversion.tflite)
    expected, decoded = pack.expected_layers(conversion.tflite), pack.unpack_model(packed)
    assert [layer.kind for layer in decoded] == ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "FULLY_CONNECTED"]
    assert [layer.weight_bits for layer in decoded] == [2, 4, 1, 4]  # 2, 3, 1, 4-bit grids
    assert all(a.equals(b) for a, b in zip(expected, decoded))

    model = tflite_model.read(packed)
    names = tflite_model.op_names(model)
    assert not set(names) & set(convert.WEIGHT_OPS)
    assert set(pack.CUSTOM_CODES.values()) <= set(names)
    for op in model.subgraphs[0].operators:
        if tflite_model.op_name(model, op) in pack.BUILTIN_OF_CUSTOM:
            assert len(op.inputs) == 2
            blob = model.subgraphs[0].tensors[int(op.inputs[1])]
            assert blob.quantization is None and blob.name is None
            assert len(op.customOptions) == pack.OPTIONS_BYTES == 24
            assert struct.unpack_from("<B", bytes(op.customOptions))[0] == pack.FORMAT_VERSION
    sizes = verify.size_breakdown(packed), verify.size_breakdown(conversion.tflite)
    assert sizes[0]["weight_bytes"] < sizes[1]["weight_bytes"] and sizes[0]["param_bytes"] < sizes[1]["param_bytes"]
    assert len(model.subgraphs[0].tensors) < len(tflite_model.read(conversion.tflite).subgraphs[0].tensors)


def test_packed_layers_compute_what_tflite_micro_computes():
    _, conversion = converted_tiny()
    inputs = verify.quantize_inputs(conversion.tflite, calibration_images(6, seed=7))
    result = verify.check_packed_layers(conversion.tflite, pack.pack_model(conversion.tflite), inputs)
    assert result == {"layers": 4, "inputs": 6, "bit_exact": True, "mismatched_layers": []}


def test_a_wrong_parameter_is_caught_by_the_layer_check():
    _, conversion = converted_tiny()
    packed_model = tflite_model.read(pack.pack_model(conversion.tflite))
    op = packed_model.subgraphs[0].operators[0]
    blob = int(op.inputs[1])
    data = tflite_model.tensor_array(packed_model, blob).copy()
    data[4 * 5] ^= 0x40  # flip a bit of channel 0's bias (conv1 has 5 channels; multipliers come first)
    tflite_model.set_tensor_data(packed_model, blob, data)
    inputs = verify.quantize_inputs(conversion.tflite, calibration_images(4, seed=7))
    result = verify.check_packed_layers(conversion.tflite, tflite_model.write(packed_model), inputs)
    assert result["mismatched_layers"] == ["op 0 (CONV_2D)"]


def test_third_party_model_packs_at_two_bits():
    snapped = convert.snap_tflite(read_reference("tflm_person_detect.tflite"), default_bits=2, bits={0: 8})
    packed = pack.pack_model(snapped)
    decoded = pack.unpack_model(packed)
    assert all(a.equals(b) for a, b in zip(pack.expected_layers(snapped), decoded))
    assert sorted({layer.weight_bits for layer in decoded}) == [2, 8]
    result = verify.check_packed_layers(snapped, packed, verify.random_inputs(snapped, 1))
    assert result["bit_exact"], result
    assert len(packed) < len(snapped) / 3


def test_corrupt_custom_options_are_reported():
    _, conversion = converted_tiny()
    model = tflite_model.read(pack.pack_model(conversion.tflite))
    model.subgraphs[0].operators[0].customOptions = np.zeros(5, np.uint8)
    with pytest.raises(ExportError, match="custom options of 5 bytes"):
        pack.unpack_model(tflite_model.write(model))


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
    packed = pack.pack_model(result.tflite)
    assert [layer.weight_bits for layer in pack.unpack_model(packed)] == [1, 2, 4, 4]
    check = verify.check_packed_layers(result.tflite, packed, verify.quantize_inputs(result.tflite, images[:4]))
    assert check["bit_exact"], check

"""tflm_export.pack (docs/FORMAT.md): bit packing, the packed model, its decoder and its arithmetic."""

import fractions
import struct

import numpy as np
import pytest

from qgt_keras import quantizers
from test_tflm_export_common import calibration_images, converted_tiny, read_reference, rounded_tiny
from tflm_export import keras_convert, pack, reference, snap, tflite_model, verify
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


def _bias_widths(packed):
    """The bias width of every QGT op (custom options byte 2)."""
    model = tflite_model.read(packed)
    return [bytes(op.customOptions)[2] for op in model.subgraphs[0].operators
            if tflite_model.op_name(model, op) in pack.BUILTIN_OF_CUSTOM]


@pytest.mark.parametrize("version", pack.FORMAT_VERSIONS)
def test_packed_model_round_trip_and_layout(version):
    int8 = rounded_tiny() if version == 2 else converted_tiny()[1].tflite  # version 1 packs any int8 model
    packed = pack.pack_model(int8, version=version)
    expected, decoded = pack.expected_layers(int8), pack.unpack_model(packed)
    assert [layer.kind for layer in decoded] == ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "FULLY_CONNECTED"]
    assert [layer.weight_bits for layer in decoded] == [2, 4, 1, 4]  # 2, 3, 1, 4-bit grids
    assert all(a.equals(b) for a, b in zip(expected, decoded))

    model = tflite_model.read(packed)
    names = tflite_model.op_names(model)
    assert not set(names) & set(tflite_model.WEIGHT_OPS)
    assert set(pack.CUSTOM_CODES.values()) <= set(names)
    for op in model.subgraphs[0].operators:
        if tflite_model.op_name(model, op) in pack.BUILTIN_OF_CUSTOM:
            assert len(op.inputs) == 2
            blob = model.subgraphs[0].tensors[int(op.inputs[1])]
            assert blob.quantization is None and blob.name is None
            assert len(op.customOptions) == pack.OPTIONS_BYTES[version] == {1: 24, 2: 21}[version]
            assert struct.unpack_from("<B", bytes(op.customOptions))[0] == version
    sizes = verify.size_breakdown(packed), verify.size_breakdown(int8)
    assert sizes[0]["weight_bytes"] < sizes[1]["weight_bytes"] and sizes[0]["param_bytes"] < sizes[1]["param_bytes"]
    assert len(model.subgraphs[0].tensors) < len(tflite_model.read(int8).subgraphs[0].tensors)
    if version == 2:  # after round_parameters every bias fits one byte
        assert set(_bias_widths(packed)) == {1}


@pytest.mark.parametrize("version", pack.FORMAT_VERSIONS)
def test_packed_layers_compute_what_tflite_micro_computes(version):
    int8 = rounded_tiny() if version == 2 else converted_tiny()[1].tflite
    inputs = verify.quantize_inputs(int8, calibration_images(6, seed=7))
    result = verify.check_packed_layers(int8, pack.pack_model(int8, version=version), inputs)
    assert result == {"layers": 4, "inputs": 6, "bit_exact": True, "mismatched_layers": []}


@pytest.mark.parametrize("version, bias_offset", [(1, 4 * 5), (2, 0)])  # conv1 has 5 channels
def test_a_wrong_parameter_is_caught_by_the_layer_check(version, bias_offset):
    int8 = rounded_tiny() if version == 2 else converted_tiny()[1].tflite
    packed_model = tflite_model.read(pack.pack_model(int8, version=version))
    op = packed_model.subgraphs[0].operators[0]
    blob = int(op.inputs[1])
    data = tflite_model.tensor_array(packed_model, blob).copy()
    data[bias_offset] ^= 0x40  # flip a bit of channel 0's bias
    tflite_model.set_tensor_data(packed_model, blob, data)
    inputs = verify.quantize_inputs(int8, calibration_images(4, seed=7))
    result = verify.check_packed_layers(int8, tflite_model.write(packed_model), inputs)
    assert result["mismatched_layers"] == ["op 0 (CONV_2D)"]


def test_third_party_model_packs_at_two_bits():
    snapped = snap.snap_tflite(read_reference("tflm_person_detect.tflite"), default_bits=2, bits={0: 8})
    rounded = pack.round_parameters(snapped)
    packed = pack.pack_model(rounded)
    decoded = pack.unpack_model(packed)
    assert all(a.equals(b) for a, b in zip(pack.expected_layers(rounded), decoded))
    assert sorted({layer.weight_bits for layer in decoded}) == [2, 8]
    result = verify.check_packed_layers(rounded, packed, verify.random_inputs(rounded, 1))
    assert result["bit_exact"], result
    assert len(packed) <= 65536 < len(pack.pack_model(snapped, version=1))  # the goal of issue 4


@pytest.mark.parametrize("options, message", [
    (np.zeros(5, np.uint8), "custom options of 5 bytes with format version 0"),
    (np.full(24, 2, np.uint8), "custom options of 24 bytes with format version 2"),
    (np.array([2, 3] + [1] * 19, np.uint8), "unsupported weight bits 3")])
def test_corrupt_custom_options_are_reported(options, message):
    model = tflite_model.read(pack.pack_model(rounded_tiny()))
    model.subgraphs[0].operators[0].customOptions = options
    with pytest.raises(ExportError, match=message):
        pack.unpack_model(tflite_model.write(model))


def test_scale_mantissas_are_the_nearest_float32_to_the_powers_of_two():
    for k, mantissa in enumerate(pack.SCALE_MANTISSAS):
        below, above = (np.nextafter(mantissa, np.float32(direction)) for direction in (0, 2))
        # 2^(k/32) lies between the midpoints to both neighbours: compare 32nd powers exactly
        low, high = (fractions.Fraction(float(mantissa)) + fractions.Fraction(float(n)) for n in (below, above))
        assert (low / 2) ** 32 < 2 ** k < (high / 2) ** 32, k


def test_every_scale_code_round_trips_and_scales_snap_to_the_nearest_code():
    codes = np.arange(pack.SCALE_CODES)
    scales = pack.grid_scales(codes, -14)
    assert np.all(np.diff(scales) > 0) and scales[0] == 2.0 ** -14 and scales[-1] < 2.0 ** -6
    exponent, snapped = pack.scale_codes(scales)
    assert exponent == -14 and np.array_equal(snapped, codes)
    rng = np.random.default_rng(3)
    arbitrary = np.exp(rng.uniform(np.log(1e-3), np.log(0.2), 501))
    exponent, nearest = pack.scale_codes(arbitrary)
    snapped = pack.grid_scales(nearest, exponent)
    assert np.max(np.abs(snapped / arbitrary - 1)) <= 2 ** (1 / 64) - 1  # at most 1.09 %
    for neighbour in (nearest - 1, nearest + 1):  # no neighbouring code is nearer
        assert np.all(np.abs(pack.grid_scales(neighbour, exponent) - arbitrary) >= np.abs(snapped - arbitrary))
    # more than 8 octaves below the largest: the grid's bottom (documented clamp)
    exponent, clamped = pack.scale_codes([1.0, 2.0 ** -9])
    assert clamped.tolist() == [pack.SCALE_CODES - 32, 0] and exponent == -7


@pytest.mark.parametrize("bias, codes, expected", [
    ([127, -128, 0], [0, 0, 0], (1, 0)),
    ([128, -128], [0, 0], (1, 1)),                          # 128 needs a unit of 2
    ([128, 1], [0, 0], (2, 0)),                             # odd 1 cannot use a unit of 2: fallback to 2 bytes
    ([-256 * 128, 256 * 127], [0, 0], (1, 8)),
    ([100, 400], [32 * 7, 0], (1, 2)),                      # unit 4 in the bottom octave, 1 in the top one
    ([2 ** 31 - 1, -(2 ** 31)], [255, 0], (4, 0)),
    ([40000, -3], [0, 0], (4, 0))])
def test_bias_encoding_picks_the_narrowest_exact_width(bias, codes, expected):
    assert pack.bias_encoding(bias, codes) == expected
    width, shift = expected
    stored = np.asarray(bias) // pack.bias_quantum(codes, shift)
    assert np.all(np.abs(stored) <= 2 ** (8 * width - 1)) and np.array_equal(
        stored * pack.bias_quantum(codes, shift), bias)


def test_bias_beyond_int32_is_refused():
    with pytest.raises(ExportError, match="does not fit int32"):
        pack.bias_encoding([2 ** 31], [0])


def test_round_parameters_moves_scales_and_biases_a_little_and_keeps_codes():
    original = converted_tiny()[1].tflite
    rounded = rounded_tiny()
    assert pack.round_parameters(rounded, wide_bias_channels=0) == rounded  # already on the grids
    assert 2 in _bias_widths(pack.pack_model(pack.round_parameters(original)))  # narrow layers keep 2 bytes
    before, after = tflite_model.read(original), tflite_model.read(rounded)
    for op in tflite_model.weight_ops(before):
        np.testing.assert_array_equal(tflite_model.tensor_array(before, op.weights),
                                      tflite_model.tensor_array(after, op.weights))
        old, new = tflite_model.tensor_scales(before, op.weights)[0], tflite_model.tensor_scales(after, op.weights)[0]
        assert np.max(np.abs(new / old - 1)) <= 2 ** (1 / 64) - 1
        real_bias = [tflite_model.tensor_array(m, op.bias) * tflite_model.tensor_scales(m, op.bias)[0]
                     for m in (before, after)]
        output_step = tflite_model.tensor_scales(before, op.output)[0][0]
        assert np.max(np.abs(real_bias[1] - real_bias[0])) <= 2 * output_step  # 1-byte biases


def test_version_2_refuses_scales_off_its_grid_and_falls_back_to_wider_biases():
    with pytest.raises(ExportError, match="not on the version-2 log grid.*round_parameters"):
        pack.pack_model(converted_tiny()[1].tflite)
    with pytest.raises(ExportError, match="version must be one of"):
        pack.pack_model(rounded_tiny(), version=3)
    model = tflite_model.read(rounded_tiny())
    op = tflite_model.weight_ops(model)[0]
    bias = tflite_model.tensor_array(model, op.bias).copy()
    bias[0] = 40001  # odd and beyond what 1 byte holds: needs 4 bytes (documented fallback)
    tflite_model.set_tensor_data(model, op.bias, bias)
    int8 = tflite_model.write(model)
    packed = pack.pack_model(int8)
    decoded = pack.unpack_model(packed)
    assert all(a.equals(b) for a, b in zip(pack.expected_layers(int8), decoded)) and decoded[0].bias[0] == 40001
    assert _bias_widths(packed) == [4, 1, 1, 1]


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
    result = keras_convert.convert_keras(model, images, {"conv_valid": 1, "dw_dilated": 2, "conv_odd": 3, "dense": 4})
    int8 = pack.round_parameters(result.tflite)
    packed = pack.pack_model(int8)
    decoded = pack.unpack_model(packed)
    assert [layer.weight_bits for layer in decoded] == [1, 2, 4, 4]
    assert all(a.equals(b) for a, b in zip(pack.expected_layers(int8), decoded))
    check = verify.check_packed_layers(int8, packed, verify.quantize_inputs(int8, images[:4]))
    assert check["bit_exact"], check


def test_version_2_refuses_strides_beyond_a_byte():
    layer = pack.expected_layers(rounded_tiny())[0]
    layer.options["stride_w"] = 256
    with pytest.raises(ExportError, match="exceed the 255 of version 2"):
        pack._encode_options(layer, pack._Encoding(2, 1))

"""tflm_export.keras_convert and snap: grid exactness after BatchNorm folding, TFLM bit-exactness, third-party
models."""

import numpy as np
import pytest

from qgt_keras import quantizers
from test_tflm_export_common import (TINY_BITS, calibration_images, converted_tiny, read_reference,
                                     reference_model, tiny_model)
from tflm_export import keras_convert, pack, snap, tflite_model, verify
from tflm_export.snap import OffGridError
from tflm_export.tflite_model import ExportError


def _weights_by_layer(conversion):
    model = tflite_model.read(conversion.tflite)
    index = {tflite_model.tensor_name(model, i): i for i in range(len(model.subgraphs[0].tensors))}
    return model, {layer: index[tensor] for layer, tensor in conversion.layer_tensors.items()}


def test_weights_are_exactly_the_keras_codes_after_folding():
    keras_model, conversion = converted_tiny()
    model, tensors = _weights_by_layer(conversion)
    for layer_name, bits in TINY_BITS.items():
        layer = keras_model.get_layer(layer_name)
        is_depthwise = layer_name == "dw1"
        kernel = (layer.depthwise_kernel if is_depthwise else layer.kernel).numpy()
        codes, _ = quantizers.quantize(kernel, bits, channel_axes=(2, 3) if is_depthwise else -1)
        codes = codes.numpy()
        expected = {"conv1": lambda c: c.transpose(3, 0, 1, 2), "dw1": lambda c: c.reshape((1,) + c.shape[:2] + (-1,)),
                    "pw1": lambda c: c.transpose(3, 0, 1, 2), "dense": lambda c: c.T}[layer_name](codes)
        stored = tflite_model.tensor_array(model, tensors[layer_name])
        np.testing.assert_array_equal(stored, expected, err_msg=layer_name)
        low, high = quantizers.code_range(bits)
        assert low <= stored.min() and stored.max() <= high


def test_scales_carry_the_batchnorm_factor():
    keras_model, conversion = converted_tiny()
    model, tensors = _weights_by_layer(conversion)
    layer, bn = keras_model.get_layer("pw1"), keras_model.get_layer("bn3")
    _, keras_scale = quantizers.quantize(layer.kernel.numpy(), TINY_BITS["pw1"])
    gamma, _, _, var = bn.get_weights()
    folded = keras_scale.numpy() * np.abs(gamma) / np.sqrt(var + bn.epsilon)
    stored = np.asarray(model.subgraphs[0].tensors[tensors["pw1"]].quantization.scale)
    np.testing.assert_allclose(stored, folded, rtol=1e-3)


def test_converted_model_runs_the_same_in_tflite_micro():
    _, conversion = converted_tiny()
    inputs = verify.quantize_inputs(conversion.tflite, calibration_images(8, seed=5))
    result = verify.compare(conversion.tflite, inputs)
    # Bit-exact except tf.lite's single-rounding per-channel FULLY_CONNECTED (one step, rarely).
    assert verify.agrees_with_tflite(result, conversion.tflite), result
    assert result["arena_bytes"] > 0
    outputs = verify.run_tflite(conversion.tflite, inputs)
    assert len(np.unique(outputs)) > 3  # real outputs, not a saturated constant


def test_check_grid_names_the_offending_tensor():
    _, conversion = converted_tiny()
    dense_tensor = conversion.layer_tensors["dense"]
    with pytest.raises(OffGridError, match="MatMul|dense") as error:
        snap.check_grid(conversion.tflite, {dense_tensor: 2})  # 4-bit codes declared as 2 bits
    assert error.value.tensor == dense_tensor
    model, tensors = _weights_by_layer(conversion)
    binary = tflite_model.tensor_array(model, tensors["pw1"]).copy()
    binary.flat[0] = 0
    tflite_model.set_tensor_data(model, tensors["pw1"], binary)
    with pytest.raises(OffGridError, match="not a 1-bit code"):
        snap.check_grid(tflite_model.write(model), {conversion.layer_tensors["pw1"]: 1})


def test_negative_batchnorm_gamma_negates_codes_or_resnaps_the_channel():
    keras_model = tiny_model(seed=3, negative_gamma=True)
    with pytest.warns(UserWarning, match="re-snapped"):
        result = keras_convert.convert_keras(keras_model, calibration_images(), {"conv1": 2, "pw1": 1})
    model, tensors = _weights_by_layer(result)
    keras_codes = quantizers.quantize(keras_model.get_layer("conv1").kernel.numpy(), 2)[0].numpy()
    keras_codes = keras_codes.transpose(3, 0, 1, 2).reshape(5, -1)
    stored = tflite_model.tensor_array(model, tensors["conv1"]).reshape(5, -1)
    uses_lowest = np.any(keras_codes == -2, axis=1)
    # Channels without -2 keep their (negated) codes; those with it could not, and were re-snapped.
    np.testing.assert_array_equal(stored[~uses_lowest], -keras_codes[~uses_lowest])
    assert result.resnapped[result.layer_tensors["conv1"]] == uses_lowest.sum() > 0
    assert result.layer_tensors["pw1"] not in result.resnapped  # binary codes always negate onto the grid
    snap.check_grid(result.tflite, result.bits)


def _pw1(model_bytes):
    """(model, the weight op of layer pw1) of .tflite ``model_bytes``."""
    model = tflite_model.read(model_bytes)
    ops = tflite_model.weight_ops(model)
    return model, next(op for op in ops if "pw1" in tflite_model.tensor_name(model, op.weights))


def _channel0(model_bytes):
    """(int8 weights, scale) of pw1's output channel 0 in ``model_bytes``."""
    model, op = _pw1(model_bytes)
    return tflite_model.tensor_array(model, op.weights)[0].ravel(), tflite_model.tensor_scales(model, op.weights)[0][0]


def _model_with_a_negligible_channel(bits, codes, size):
    """(tiny_model, its plain int8 conversion) where pw1's kernel is on its b-bit grid and channel 0's
    (``codes`` times ``size`` steps of the raised scale below) is so small next to its bias of 1 that TFLite
    raises the channel's scale until the bias fits int32 (to 2^30 steps). A kernel trained toward zero ends
    like this; with ``size`` below 1/2 the grid scale fitted to such codes would overflow the bias."""
    model, images = tiny_model(), calibration_images()
    int8, op = _pw1(keras_convert.to_int8_tflite(model, images))
    input_scale = tflite_model.tensor_scales(int8, op.input)[0][0]
    layer, bn = model.get_layer("pw1"), model.get_layer("bn3")
    kernel, bias = layer.get_weights()
    kernel = quantizers.dequantize(*quantizers.quantize(kernel, bits)).numpy()  # on the grid: the export keeps it
    gamma, beta, mean, var = bn.get_weights()
    fold = gamma / np.sqrt(var + bn.epsilon)
    beta[0] = 1.0 - (bias[0] - mean[0]) * fold[0]  # the folded bias of channel 0 is 1
    bn.set_weights([gamma, beta, mean, var])
    raised_scale = 1.0 / (input_scale * 2.0 ** 30)
    kernel[0, 0, :, 0] = np.array(codes) * size * raised_scale / fold[0]
    layer.set_weights([kernel, bias])
    return model, keras_convert.to_int8_tflite(model, images)


# (bits, channel 0's codes, their step in units of the converter's raised scale): within one int8 step of
# zero at 2 bits; two steps at 4 bits; all zero at the converter's scale, which the 1-bit grid lacks.
NEGLIGIBLE_CHANNELS = [(2, [-2, 1, 1, 1, 0], 0.35), (4, [7, -4, -4, -4, 0], 0.35), (1, [-1, 1, 1, -1, 1], 0.4)]


@pytest.mark.parametrize("bits, codes, size", NEGLIGIBLE_CHANNELS)
def test_a_kernel_negligible_next_to_its_bias_keeps_the_converters_scale(bits, codes, size):
    model, plain_int8 = _model_with_a_negligible_channel(bits, codes, size)
    converter_codes, converter_scale = _channel0(plain_int8)
    assert np.abs(converter_codes).max() == max(round(abs(c) * size) for c in codes)  # TFLite raised the scale
    images = calibration_images()
    result = keras_convert.convert_keras(model, images, {"pw1": bits})
    channel_codes, scale = _channel0(result.tflite)
    assert scale == pytest.approx(converter_scale)  # the finer scale of the Keras codes cannot hold the bias
    # Re-snapped at that scale: the converter's codes where they are on the grid, the nearest ones where not.
    if bits == 1:
        np.testing.assert_array_equal(channel_codes, codes)
    else:
        np.testing.assert_array_equal(channel_codes, converter_codes)
    snap.check_grid(result.tflite, result.bits)
    inputs = verify.quantize_inputs(result.tflite, images[:4])
    # 1-bit biases are rounded at the step of a +-1 code, twice as coarse as 2-bit ones.
    assert np.abs(verify.run_tflite(result.tflite, inputs).astype(int)
                  - verify.run_tflite(plain_int8, inputs).astype(int)).max() <= (2 if bits == 1 else 1)
    pack.pack_model(pack.round_parameters(result.tflite))  # the packed format holds its scale (raises if not)
    # So does post-training snapping of the int8 model.
    int8, op = _pw1(plain_int8)
    snapped = snap.snap_tflite(plain_int8, bits={tflite_model.tensor_name(int8, op.weights): bits})
    snapped_codes, snapped_scale = _channel0(snapped)
    if bits > 1:  # its int8 codes are on the grid already (1 bit: zeros, which no scale of the grid holds)
        np.testing.assert_array_equal(snapped_codes, converter_codes)
        assert snapped_scale == pytest.approx(converter_scale)
    snap.check_grid(snapped, {tflite_model.tensor_name(int8, op.weights): bits})


def test_a_bias_that_overflows_codes_that_must_stay_is_refused():
    _, plain_int8 = _model_with_a_negligible_channel(2, [-2, 1, 1, 1, 0], 0.35)
    model, op = _pw1(plain_int8)
    codes = tflite_model.channels_last(tflite_model.tensor_array(model, op.weights), tflite_model.channel_axis(op.kind))
    _, scales = snap.dequantized_weights(model, op)
    finer = scales / 4  # channel 0's bias takes 2^30 steps of its scale: 2^32 of these
    with pytest.raises(ExportError, match=r"bias .*pw1.* overflows int32 at the new scale \(channels \[0\]\)"):
        snap.rewrite_weights(model, op, codes, finer, scales)


@pytest.mark.parametrize("bits, message", [({"nope": 2}, "unknown"), ({"conv1": 9}, "1..8")])
def test_bad_bits_are_refused(bits, message):
    with pytest.raises(ValueError, match=message):
        keras_convert.convert_keras(tiny_model(), calibration_images(4), bits)


@pytest.mark.parametrize("file_name", ["tflm_person_detect.tflite", "mlperf_tiny_vww_96_int8.tflite"])
@pytest.mark.parametrize("bits", [4, 2])
def test_third_party_int8_models_snap_and_stay_bit_exact(file_name, bits):
    source = read_reference(file_name)
    snapped = snap.snap_tflite(source, default_bits=bits, bits={0: 8})
    model = tflite_model.read(snapped)
    ops = tflite_model.weight_ops(model)
    for op in ops[1:]:
        codes = tflite_model.tensor_array(model, op.weights)
        assert len(np.unique(codes)) <= 2 ** bits
    result = verify.compare(snapped, verify.random_inputs(snapped, 2))
    assert verify.agrees_with_tflite(result, snapped), result  # snapping makes MLPerf's FC per-channel


def test_third_party_keras_model_converts_on_grid():
    keras = pytest.importorskip("tf_keras")
    model = keras.models.load_model(reference_model("mlperf_tiny_vww_96.h5"), compile=False)
    first = model.layers[1].name
    images = np.random.default_rng(0).random((4, 96, 96, 3), dtype=np.float32)
    result = keras_convert.convert_keras(model, images, {first: 8}, default_bits=4)
    assert sorted(set(result.bits.values())) == [4, 8]
    result_check = verify.compare(result.tflite, verify.quantize_inputs(result.tflite, images[:2]))
    assert result_check["bit_exact"], result_check


def test_snap_tflite_refuses_unknown_keys_and_float_models():
    source = converted_tiny()[1].tflite
    with pytest.raises(ExportError, match="neither a weight tensor name"):
        snap.snap_tflite(source, bits={"no_such_tensor": 2})
    with pytest.raises(ExportError, match="not int8|FLOAT32|expected int8|not quantized"):
        snap.snap_tflite(keras_convert.to_float_tflite(tiny_model()), default_bits=2)


def test_qgt_model_is_stripped_and_keeps_its_codes():
    from qgt_keras import conversion, models
    from qgt_keras.layers import quantized_kernels
    qgt_model = conversion.quantize_model(models.small_cnn((16, 16, 3)), bits=2)
    conversion.set_hard_quantization(qgt_model)  # its forward pass is on the grid: snapping changes nothing
    images = np.random.default_rng(2).random((8, 16, 16, 3), dtype=np.float32)
    result = keras_convert.convert_keras(qgt_model, images)
    assert {layer: result.bits[tensor] for layer, tensor in result.layer_tensors.items()} == \
        conversion.layer_bits(qgt_model)
    model, tensors = _weights_by_layer(result)
    ops = {op.weights: op for op in tflite_model.weight_ops(model)}
    checked = 0
    for entry in quantized_kernels(qgt_model):
        if entry.bits == 8:
            continue
        codes = entry.codes()[0].numpy()  # the layer's own quantizer; BatchNorm gammas start at 1 (no flips)
        expected = keras_convert.keras_codes_to_tflite(ops[tensors[entry.name]].kind, codes)
        np.testing.assert_array_equal(tflite_model.tensor_array(model, tensors[entry.name]), expected,
                                      err_msg=entry.name)
        checked += 1
    assert checked == 2  # dw1 and pw1; conv1 and dense are the 8-bit edge layers

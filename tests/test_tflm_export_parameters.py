"""tflm_export.parameters (docs/FORMAT.md, "Biases"): bias units, the width/shift search, round_parameters."""

import numpy as np
import pytest

from test_tflm_export_common import converted_tiny, rounded_tiny
from tflm_export import convert, pack, parameters, tflite_model
from tflm_export.tflite_model import ExportError


def bias_widths(packed):
    """The bias width of every QGT op (custom options byte 2)."""
    model = tflite_model.read(packed)
    return [bytes(op.customOptions)[2] for op in model.subgraphs[0].operators
            if tflite_model.op_name(model, op) in pack.BUILTIN_OF_CUSTOM]


@pytest.mark.parametrize("bias, codes, expected", [
    ([127, -128, 0], [0, 0, 0], (1, 0)),
    ([128, -128], [0, 0], (1, 1)),                          # 128 needs a unit of 2
    ([128, 1], [0, 0], (2, 0)),                             # odd 1 cannot use a unit of 2: fallback to 2 bytes
    ([-256 * 128, 256 * 127], [0, 0], (1, 8)),
    ([100, 400], [32 * 7, 0], (1, 2)),                      # unit 4 in the bottom octave, 1 in the top one
    ([2 ** 31 - 1, -(2 ** 31)], [255, 0], (4, 0)),
    ([40000, -3], [0, 0], (4, 0))])
def test_bias_encoding_picks_the_narrowest_exact_width(bias, codes, expected):
    assert parameters.bias_encoding(bias, codes) == expected
    width, shift = expected
    assert shift <= parameters.MAX_BIAS_SHIFT
    stored = np.asarray(bias) // parameters.bias_quantum(codes, shift)
    assert np.all(np.abs(stored) <= 2 ** (8 * width - 1)) and np.array_equal(
        stored * parameters.bias_quantum(codes, shift), bias)


def test_bias_beyond_int32_is_refused():
    with pytest.raises(ExportError, match="does not fit int32"):
        parameters.bias_encoding([2 ** 31], [0])


def test_rounded_units_round_halves_up():
    shift, units = parameters.bias_units([3, -3, 5, 255], [0, 0, 0, 0], 1, exact=False)
    assert shift == 2 and units.tolist() == [1, -1, 1, 64]  # 3/4 -> 1, -3/4 -> -1, 5/4 -> 1, 255/4 -> 64
    assert parameters.bias_units([2 ** 30, 1], [0, 0], 1, exact=True) is None


def test_round_parameters_moves_scales_and_biases_a_little_and_keeps_codes():
    original = converted_tiny()[1].tflite
    rounded = rounded_tiny()
    assert parameters.round_parameters(rounded, wide_bias_channels=0) == rounded  # already on the grids
    assert 2 in bias_widths(pack.pack_model(parameters.round_parameters(original)))  # narrow layers keep 2 bytes
    before, after = tflite_model.read(original), tflite_model.read(rounded)
    for op in convert.weight_ops(before):
        np.testing.assert_array_equal(tflite_model.tensor_array(before, op.weights),
                                      tflite_model.tensor_array(after, op.weights))
        old, new = convert._scales(before, op.weights)[0], convert._scales(after, op.weights)[0]
        assert np.max(np.abs(new / old - 1)) <= 2 ** (1 / 64) - 1
        real_bias = [tflite_model.tensor_array(m, op.bias) * convert._scales(m, op.bias)[0] for m in (before, after)]
        output_step = convert._scales(before, op.output)[0][0]
        assert np.max(np.abs(real_bias[1] - real_bias[0])) <= 2 * output_step  # 1-byte biases

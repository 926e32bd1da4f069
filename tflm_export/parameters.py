"""Per-channel parameters of the packed format on its grids (docs/FORMAT.md, "Biases"): bias units tied to
the scale's octave, the one search for a bias width and shift, and :func:`round_parameters`, which puts an
int8 model's weight scales and biases on those grids.
"""

import numpy as np

from tflm_export import convert, tflite_model
from tflm_export.requant import SCALE_STEPS_PER_OCTAVE, grid_scales, scale_codes
from tflm_export.tflite_model import ExportError

BIAS_WIDTHS = (1, 2, 4)
# bias = stored * (int32_t)(1u << s) in C with s <= MAX_BIAS_SHIFT: 1u << 30 is still a positive int32
MAX_BIAS_SHIFT = 30


def bias_quantum(codes, bias_shift):
    """A channel's stored bias counts units of 2^max(0, bias_shift - octave of its scale code).

    Tying the unit to the scale's octave keeps the bias rounding near the same fraction of an output step on
    every channel (one output step is 1 / (input_scale * weight_scale / output_scale) accumulator units).
    """
    return np.left_shift(1, np.maximum(0, bias_shift - np.asarray(codes, np.int64) // SCALE_STEPS_PER_OCTAVE))


def bias_units(bias, codes, width, exact):
    """(bias_shift, stored units) of the smallest shift whose units hold ``bias`` in ``width`` bytes, or None.

    ``exact``: the units must give back ``bias`` exactly; otherwise they are ``bias`` rounded to the nearest
    unit (halves up).
    """
    bias = np.asarray(bias, np.int64)
    limit = 2 ** (8 * width - 1)
    for shift in range(MAX_BIAS_SHIFT + 1):
        quantum = bias_quantum(codes, shift)
        units = (2 * bias + quantum) // (2 * quantum)
        if exact and not np.array_equal(units * quantum, bias):
            continue
        if np.all((-limit <= units) & (units < limit)):
            return shift, units
    return None


def bias_encoding(bias, codes):
    """(bias_bytes, bias_shift) of the narrowest encoding that holds ``bias`` exactly: 1, then 2 bytes with the
    smallest shift that works, else 4 bytes with shift 0, which holds every int32."""
    bias = np.asarray(bias, np.int64)
    if bias.size and (bias.min() < -(2 ** 31) or bias.max() >= 2 ** 31):
        raise ExportError("bias does not fit int32")
    for width in BIAS_WIDTHS[:-1]:
        found = bias_units(bias, codes, width, exact=True)
        if found is not None:
            return width, found[0]
    return BIAS_WIDTHS[-1], 0


def round_parameters(int8_tflite, wide_bias_channels=64):
    """Moves every weight scale of an int8 .tflite onto the log grid and rounds every bias to one byte, or to
    two in layers with at most ``wide_bias_channels`` output channels (see :func:`bias_quantum`); returns the
    new .tflite bytes, which pack with biases of those widths.

    The narrow early layers keep 2-byte biases because a bias error there travels through the whole network:
    on TFLM's person_detect they hold 432 of 2,738 channels and most of the accuracy cost of 1-byte biases.

    Codes stay; each bias is first re-expressed in its channel's new scale (as in
    :func:`tflm_export.convert.snap_tflite`), then rounded to the finest unit in which its layer fits the
    width. This changes the model slightly (scales by at most 1.1 %, 1-byte biases by up to about two output
    steps): docs/FORMAT.md has the measured accuracy cost.
    """
    model = tflite_model.read(int8_tflite)
    for op in convert.weight_ops(model):
        weights = tflite_model.tensor_array(model, op.weights)
        axis = convert._channel_axis(op)
        old_scales = np.broadcast_to(convert._scales(model, op.weights)[0], (weights.shape[axis],))
        exponent, codes = scale_codes(old_scales)
        convert._rewrite(model, op, convert._channels_last(weights, axis), grid_scales(codes, exponent).astype(
            np.float64), old_scales)
        if op.bias < 0:
            continue
        bias = tflite_model.tensor_array(model, op.bias).astype(np.int64)
        width = 2 if len(codes) <= wide_bias_channels else 1
        found = bias_units(bias, codes, width, exact=False)
        name = tflite_model.tensor_name(model, op.bias)
        if found is None:
            raise ExportError(f"bias {name!r} does not fit {width} byte(s) in any unit of the format")
        rounded = found[1] * bias_quantum(codes, found[0])
        if np.any(np.abs(rounded) > 2 ** 31 - 1):
            raise ExportError(f"bias {name!r} overflows int32 when rounded")
        tflite_model.set_tensor_data(model, op.bias, rounded.astype(np.int32))
    return tflite_model.write(model)

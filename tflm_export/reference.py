"""Numpy reference of the ops the QGT kernels compute: what a kernel must return for a decoded
:class:`PackedLayer` (:func:`run_layer`), and for AVERAGE_POOL_2D, SOFTMAX and ARG_MAX.

Integer arithmetic as in TFLite-Micro's reference per-channel kernels: int32 accumulation of
(input - input zero point) * code, plus bias, then ``MultiplyByQuantizedMultiplier`` with TFLM's two
roundings (a rounding doubling high multiply, then a rounding right shift), plus the output zero point,
clamped to the fused activation's range. TFLite's reference per-channel FULLY_CONNECTED rounds once
instead, so it can differ from TFLM by one step; TFLM, which the firmware runs, is what this matches.
SOFTMAX follows TFLite's reference int8 kernel and its gemmlowp fixed-point exp and reciprocal.
"""

import numpy as np

from tflm_export.tflite_model import ExportError

_INT32_MIN = -(2 ** 31)
_ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6"}


def _wrap_int32(x):
    return (x + 2 ** 31) % 2 ** 32 - 2 ** 31


def multiply_by_quantized_multiplier(x, multiplier, shift):
    """TFLM's MultiplyByQuantizedMultiplier, elementwise over int64 arrays holding int32 values."""
    x, multiplier, shift = (np.asarray(v, np.int64) for v in (x, multiplier, shift))
    x = _wrap_int32(x << np.maximum(shift, 0))  # TFLM's x * (1 << left_shift) is an int32 product
    product = x * multiplier
    nudge = np.where(product >= 0, 2 ** 30, 1 - 2 ** 30)
    total = product + nudge
    high = np.where(total >= 0, total // 2 ** 31, -((-total) // 2 ** 31))  # C division truncates
    high = np.where((x == _INT32_MIN) & (multiplier == _INT32_MIN), 2 ** 31 - 1, high)
    exponent = np.maximum(-shift, 0)
    mask = (np.int64(1) << exponent) - 1
    threshold = (mask >> 1) + (high < 0)
    return (high >> exponent) + ((high & mask) > threshold)


def activation_range(activation, output_scale, output_zero_point):
    """(min, max) int8 output range of a fused activation, as TFLM's CalculateActivationRangeQuantized."""
    name = _ACTIVATIONS.get(activation)
    if name is None:
        raise ExportError(f"fused activation {activation} has no reference implementation")

    def quantize(value):  # zero point + round(value / scale), float32 division, rounding away from zero
        q = np.float32(value) / np.float32(output_scale)
        return output_zero_point + int(np.sign(q) * np.floor(np.abs(q) + 0.5))

    low, high = -128, 127
    if name == "RELU":
        low = max(low, quantize(0.0))
    elif name == "RELU6":
        low, high = max(low, quantize(0.0)), min(high, quantize(6.0))
    elif name == "RELU_N1_TO_1":
        low, high = max(low, quantize(-1.0)), min(high, quantize(1.0))
    return low, high


def _same_padding(size, kernel, stride, dilation):
    effective = (kernel - 1) * dilation + 1
    out = (size + stride - 1) // stride
    return out, max((out - 1) * stride + effective - size, 0) // 2


def _output_size_and_padding(size, kernel, stride, dilation, padding):
    if padding == 0:  # SAME
        return _same_padding(size, kernel, stride, dilation)
    return (size - (kernel - 1) * dilation - 1) // stride + 1, 0


def _patches(x, kernel_h, kernel_w, options):
    """(batch, out_h, out_w, kernel_h, kernel_w, channels) input windows; padding contributes zero."""
    batch, height, width, channels = x.shape
    out_h, pad_h = _output_size_and_padding(height, kernel_h, options["stride_h"], options["dilation_h"],
                                            options["padding"])
    out_w, pad_w = _output_size_and_padding(width, kernel_w, options["stride_w"], options["dilation_w"],
                                            options["padding"])
    padded = np.zeros((batch, height + 2 * pad_h + kernel_h * options["dilation_h"],
                       width + 2 * pad_w + kernel_w * options["dilation_w"], channels), np.int64)
    padded[:, pad_h:pad_h + height, pad_w:pad_w + width] = x
    windows = np.empty((batch, out_h, out_w, kernel_h, kernel_w, channels), np.int64)
    for ky in range(kernel_h):
        for kx in range(kernel_w):
            y0, x0 = ky * options["dilation_h"], kx * options["dilation_w"]
            windows[:, :, :, ky, kx] = padded[:, y0:y0 + out_h * options["stride_h"]:options["stride_h"],
                                              x0:x0 + out_w * options["stride_w"]:options["stride_w"]]
    return windows


def run_layer(layer, x, input_zero_point, output_scale, output_zero_point):
    """int8 output of one packed layer (``tflm_export.pack.PackedLayer``) for int8 input ``x``."""
    shifted = np.asarray(x, np.int64) - input_zero_point
    codes = layer.codes.astype(np.int64)
    if layer.kind == "FULLY_CONNECTED":
        flat = shifted.reshape(-1, codes.shape[1])
        acc = flat @ codes.T
        out_shape = (flat.shape[0], codes.shape[0])
    elif layer.kind == "CONV_2D":
        windows = _patches(shifted, codes.shape[1], codes.shape[2], layer.options)
        acc = np.einsum("bhwyxc,oyxc->bhwo", windows, codes)
        out_shape = acc.shape
    elif layer.kind == "DEPTHWISE_CONV_2D":
        multiplier = layer.options["depth_multiplier"]
        windows = _patches(shifted, codes.shape[1], codes.shape[2], layer.options)
        windows = np.repeat(windows, multiplier, axis=-1)  # output channel c * multiplier + m reads channel c
        acc = np.einsum("bhwyxo,yxo->bhwo", windows, codes[0])
        out_shape = acc.shape
    else:
        raise ExportError(f"no reference for {layer.kind}")
    scaled = multiply_by_quantized_multiplier(acc + layer.bias, layer.multiplier, layer.shift)
    low, high = activation_range(layer.options["activation"], output_scale, output_zero_point)
    return np.clip(scaled + output_zero_point, low, high).astype(np.int8).reshape(out_shape)


def average_pool(x, filter_hw, stride_hw, padding, activation):
    """TFLite's reference int8 AVERAGE_POOL_2D of NHWC ``x``: per window the valid values' sum divided by
    their count, rounded half away from zero (C division), clamped to ``activation`` (min, max)."""
    x = np.asarray(x, np.int64)
    batch, height, width, channels = x.shape
    (kh, kw), (sh, sw) = filter_hw, stride_hw
    out_h, pad_h = _output_size_and_padding(height, kh, sh, 1, padding)
    out_w, pad_w = _output_size_and_padding(width, kw, sw, 1, padding)
    out = np.empty((batch, out_h, out_w, channels), np.int64)
    for oy in range(out_h):
        y0 = oy * sh - pad_h
        for ox in range(out_w):
            x0 = ox * sw - pad_w
            window = x[:, max(y0, 0):min(y0 + kh, height), max(x0, 0):min(x0 + kw, width)]
            count = window.shape[1] * window.shape[2]
            total = window.sum(axis=(1, 2))
            half = count // 2
            out[:, oy, ox] = np.where(total > 0, (total + half) // count, -((half - total) // count))
    return np.clip(out, *activation).astype(np.int8)


def argmax(x):
    """Index of the first largest value along the last axis (int32)."""
    return np.argmax(np.asarray(x), axis=-1).astype(np.int32)


# SOFTMAX: TFLite's reference int8 kernel in gemmlowp's fixed point (Q5.26 differences, Q0.31 exp, Q12.19 sums).
_INT32_MAX = 2 ** 31 - 1


def _wrap(x):
    return (x + 2 ** 31) % 2 ** 32 - 2 ** 31


def _high_mul(a, b):
    """SaturatingRoundingDoublingHighMul: (a * b + nudge) / 2^31, truncating."""
    if a == b == _INT32_MIN:
        return _INT32_MAX
    product = a * b
    total = product + (2 ** 30 if product >= 0 else 1 - 2 ** 30)
    return total // 2 ** 31 if total >= 0 else -((-total) // 2 ** 31)


def _divide_pot(x, exponent):
    mask = (1 << exponent) - 1
    return (x >> exponent) + ((x & mask) > (mask >> 1) + (x < 0))


def _multiply_pot(x, exponent):
    threshold = (1 << (31 - exponent)) - 1
    return _INT32_MAX if x > threshold else _INT32_MIN if x < -threshold else x << exponent


def _exp_on_quarter(a):
    """exp(a) for a in [-1/4, 0) in Q0.31: Taylor series around -1/8."""
    constant, third = 1895147668, 715827883
    x = _wrap(a + (1 << 28))
    x2 = _high_mul(x, x)
    x3, x4 = _high_mul(x2, x), _high_mul(x2, x2)
    tail = _divide_pot(_wrap(_high_mul(_wrap(_divide_pot(x4, 2) + x3), third) + x2), 1)
    return _wrap(constant + _high_mul(constant, _wrap(x + tail)))


def _exp_on_negative_values(a):
    """exp(a) of a Q5.26 value a <= 0, in Q0.31."""
    quarter = 1 << 24
    a_mod = _wrap((a & (quarter - 1)) - quarter)
    result = _exp_on_quarter(_multiply_pot(a_mod, 5))
    remainder = _wrap(a_mod - a)
    for k, factor in enumerate((1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242)):
        if remainder & (1 << (24 + k)):
            result = _high_mul(result, factor)
    return _INT32_MAX if a == 0 else result


def _one_over_one_plus_x(x):
    """1 / (1 + x) for x in [0, 1), Q0.31 in and out: Newton-Raphson in Q2.29."""
    total = x + _INT32_MAX
    half = (total + (1 if total >= 0 else -1))
    half = half // 2 if half >= 0 else -((-half) // 2)
    estimate = _wrap(1515870810 + _high_mul(half, -1010580540))
    for _ in range(3):
        error = _wrap((1 << 29) - _high_mul(half, estimate))
        estimate = _wrap(estimate + _multiply_pot(_high_mul(estimate, error), 2))
    return _multiply_pot(estimate, 1)


def softmax_params(input_scale, beta=1.0):
    """(input_multiplier, input_left_shift, diff_min) as TFLite's PreprocessSoftmaxScaling and
    CalculateInputRadius compute them in double precision (double-rounding build: no clamp of the shift)."""
    real = min(float(np.float32(beta)) * float(np.float32(input_scale)) * 2.0 ** 26, 2.0 ** 31 - 1)
    if not real > 1.0:
        raise ExportError(f"softmax input scale {input_scale} times beta {beta} is too small for TFLite's kernel")
    fraction, shift = np.frexp(real)
    multiplier = int(np.floor(float(fraction) * 2 ** 31 + 0.5))
    if multiplier == 2 ** 31:
        multiplier, shift = multiplier // 2, shift + 1
    return multiplier, int(shift), -int(np.floor(31.0 * 2 ** 26 / 2 ** int(shift)))


def softmax(x, input_scale, beta=1.0):
    """TFLite's reference int8 SOFTMAX over the last axis (output scale 1/256, zero point -128)."""
    multiplier, left_shift, diff_min = softmax_params(input_scale, beta)
    x = np.asarray(x)
    rows = x.reshape(-1, x.shape[-1]).astype(np.int64)
    out = np.full(rows.shape, -128, np.int64)
    for r, row in enumerate(rows):
        diffs = [int(v) - int(row.max()) for v in row]
        exps = [_exp_on_negative_values(_high_mul(_wrap(d << left_shift), multiplier)) if d >= diff_min else None
                for d in diffs]
        total = sum(_divide_pot(e, 12) for e in exps if e is not None)
        headroom = 32 - total.bit_length()
        reciprocal = _one_over_one_plus_x(_wrap((total << headroom) - 2 ** 31))
        exponent = (12 - headroom) + 31 - 8
        for i, e in enumerate(exps):
            if e is not None:
                out[r, i] = min(max(_divide_pot(_high_mul(reciprocal, e), exponent) - 128, -128), 127)
    return out.astype(np.int8).reshape(x.shape)

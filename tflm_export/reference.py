"""Numpy reference of the packed ops: what a QGT kernel must compute from a decoded :class:`PackedLayer`.

Integer arithmetic as in TFLite-Micro's reference per-channel kernels: int32 accumulation of
(input - input zero point) * code, plus bias, then ``MultiplyByQuantizedMultiplier`` with TFLM's two
roundings (a rounding doubling high multiply, then a rounding right shift), plus the output zero point,
clamped to the fused activation's range. TFLite's reference per-channel FULLY_CONNECTED rounds once
instead, so it can differ from TFLM by one step; TFLM, which the firmware runs, is what this matches.
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

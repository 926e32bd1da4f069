"""What the Python side needs to know of the QGT kernel library's C contract (arduino/QGT/src/qgt_kernels.h)
without compiling it: the status codes (read from the header, their one definition) and the scratch bytes of
each kernel, for planning static memory at generation time. The scratch formulas mirror the C
``*_scratch_size`` functions; tests/test_kernels_api.py holds them equal on random shapes."""

import os
import re

_HEADER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "arduino", "QGT", "src",
                       "qgt_kernels.h")
CHANNEL_BYTES = 24  # the per-channel requantization record each weight kernel expands into its scratch


def status_codes():
    """{name: value} of qgt_status, read from the library's header."""
    with open(_HEADER) as f:
        return {name: int(value) for name, value in re.findall(r"\b(QGT_(?:OK|ERR_[A-Z]+)) = (\d+)", f.read())}


def _align4(n):
    return (n + 3) // 4 * 4


def _quads(n):
    return -(-n // 4)


def conv_scratch_bytes(out_channels, row_length):
    """qgt_conv2d_scratch_size / qgt_fully_connected_scratch_size: channel records, the 16-bit copies of a
    pixel pair's receptive fields and one gathered int8 field (``row_length`` = kh * kw * in, or in)."""
    return _align4(CHANNEL_BYTES * out_channels) + 16 * _quads(row_length) + 4 * _quads(row_length)


def depthwise_scratch_bytes(input_channels, out_channels, kernel_hw, stride_hw, dilation_hw, output_width):
    """qgt_depthwise_conv2d_scratch_size: channel records, the ring of the window's input rows (padding
    columns included, input channels in groups of 4) and the filter widened to 16 bits (groups of 4)."""
    (kh, kw), (_, sw), (dh, dw) = kernel_hw, stride_hw, dilation_hw
    rows = (kh - 1) * dh + 1
    width = (output_width - 1) * sw + (kw - 1) * dw + 1
    ring = 4 * width * _quads(input_channels) * rows
    return _align4(CHANNEL_BYTES * out_channels) + ring + 8 * _quads(out_channels) * kh * kw

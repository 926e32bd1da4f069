"""The QGT kernel library's C API on the host (portable path, ctypes): the integer-only scale arithmetic
against Python and TFLite's float arithmetic, the layer parser, and each kernel against tflm_export.reference
on edge shapes."""

import ctypes

import numpy as np
import pytest

import kernel_cases
import kernel_ctypes as kc
from tflm_export import kernel_abi, kernel_runner, pack, reference, requant, toolchain

STATUS = kernel_runner.STATUS


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    try:
        return kc.load(toolchain.build_host_library(str(tmp_path_factory.mktemp("qgt_lib"))))
    except toolchain.ToolchainMissing as missing:
        pytest.skip(str(missing))


def test_status_names_come_from_the_header(lib):
    assert STATUS["QGT_OK"] == 0 and len(STATUS) == 11
    for name, value in STATUS.items():
        assert lib.qgt_status_name(value).decode() == name


def test_the_scale_mantissas_are_pythons(lib):
    assert [lib.qgt_scale_mantissa_bits(k) for k in range(32)] == [requant.float32_bits(m)
                                                                   for m in requant.SCALE_MANTISSAS]
    assert lib.qgt_scale_mantissa_bits(32) == 0 and lib.qgt_scale_mantissa_bits(-1) == 0


def _c_table(lib, input_scale, output_scale, exponent):
    f, table = kc.Filter(), kc.QuantParams()
    f.scale_exponent = exponent
    status = lib.qgt_quant_params_init(ctypes.byref(f), requant.float32_bits(input_scale),
                                       requant.float32_bits(output_scale), ctypes.byref(table))
    return status, np.array(table.multiplier[:], np.int64), np.array(table.shift[:], np.int64)


def test_the_multiplier_table_is_integer_exact(lib):
    """C and Python integer tables agree, and the channels they give equal TFLite-Micro's double-precision
    QuantizeMultiplier (clamps included)."""
    rng = np.random.default_rng(8)
    for trial in range(600):
        input_scale = np.float32(2.0 ** rng.uniform(-149 if trial % 5 == 0 else -24, 4))
        output_scale = np.float32(2.0 ** rng.uniform(-40 if trial % 7 == 0 else -14, 4))
        exponent = int(rng.integers(requant.SCALE_EXPONENT_MIN, requant.SCALE_EXPONENT_MAX + 1))
        status, multipliers, shifts = _c_table(lib, input_scale, output_scale, exponent)
        assert status == 0
        python = requant.multiplier_table(requant.float32_bits(input_scale), requant.float32_bits(output_scale),
                                          exponent)
        np.testing.assert_array_equal(multipliers, python[0])
        np.testing.assert_array_equal(shifts, python[1])
    codes = np.arange(requant.SCALE_CODES)
    multiplier, shift = requant.channel_multipliers(python, codes)
    weights = requant.grid_scales(codes, exponent)
    assert [(int(m), int(s)) for m, s in zip(multiplier, shift)] == [
        requant.quantize_multiplier(float(input_scale) * float(w) / float(output_scale)) for w in weights]


@pytest.mark.parametrize("bits, expected", [(0, "QGT_ERR_SCALE"), (0x7F800000, "QGT_ERR_SCALE"),
                                            (0xBF800000, "QGT_ERR_SCALE"), (0x7FC00000, "QGT_ERR_SCALE")])
def test_bad_scales_are_refused(lib, bits, expected):
    f, table = kc.Filter(), kc.QuantParams()
    assert lib.qgt_quant_params_init(ctypes.byref(f), bits, requant.float32_bits(1.0), ctypes.byref(table)) == \
        STATUS[expected]
    f.scale_exponent = -127
    assert lib.qgt_quant_params_init(ctypes.byref(f), requant.float32_bits(1.0), requant.float32_bits(1.0),
                                     ctypes.byref(table)) == STATUS["QGT_ERR_OPTIONS"]


def test_activation_ranges_are_tflites_float32_ones(lib):
    rng = np.random.default_rng(4)
    scales = [np.float32(2.0 ** rng.uniform(-12, 4)) for _ in range(400)] + [np.float32(6 / 255), np.float32(1 / 256),
                                                                             np.float32(0.0234375)]
    for i, scale in enumerate(scales):
        zp, activation = int(rng.integers(-128, 128)), i % 4
        got = kc.Range()
        assert lib.qgt_activation_range(activation, kc.quant(scale, zp), ctypes.byref(got)) == 0
        assert (got.min, got.max) == reference.activation_range(activation, scale, zp), (scale, zp, activation)
    assert lib.qgt_activation_range(4, kc.quant(0.1, 0), ctypes.byref(got)) == STATUS["QGT_ERR_ACTIVATION"]


def test_softmax_parameters_are_tflites_double_ones(lib):
    rng = np.random.default_rng(5)
    output = kc.quant(1 / 256, -128)
    for scale in [np.float32(2.0 ** rng.uniform(-20, 8)) for _ in range(300)] + [np.float32(2.0 ** 5)]:
        params = kc.SoftmaxParams()
        status = lib.qgt_softmax_params_init(requant.float32_bits(scale), requant.float32_bits(1.0), output,
                                             ctypes.byref(params))
        if float(scale) * 2.0 ** 26 <= 1.0:
            assert status == STATUS["QGT_ERR_SCALE"]
            continue
        assert status == 0
        assert (params.input_multiplier, params.input_left_shift, params.diff_min) == reference.softmax_params(scale)


def test_the_parser_fills_views_into_the_blob(lib):
    case = kernel_cases.layer_case(np.random.default_rng(1), "conv", 2, (1, 7, 9, 5), [6, 3, 2, 5], stride=(2, 1),
                                   dilation=(1, 2), padding=0, activation=1)
    options_buffer, options = kc.aligned(case.options)
    blob_buffer, blob = kc.aligned(case.blob)
    layer = kc.Layer()
    assert lib.qgt_layer_parse(0, options, len(case.options), blob, len(case.blob), ctypes.byref(layer)) == 0
    f = layer.filter
    assert (layer.op, layer.activation, layer.padding, layer.stride.w, layer.stride.h, layer.dilation.w,
            layer.dilation.h, layer.depth_multiplier) == (0, 1, 0, 2, 1, 1, 2, 1)
    assert (f.out_channels, f.kernel_h, f.kernel_w, f.in_channels, f.row_length, f.row_bytes, f.weight_bits) == (
        6, 3, 2, 5, 30, 8, 2)
    weight_bytes, _ = pack.blob_sizes("CONV_2D", case.options)
    assert f.weights == blob and f.bias == blob + weight_bytes and f.scale_codes == blob + weight_bytes + 6 * f.bias_bytes
    assert 10 <= f.accumulator_bits <= 30


@pytest.mark.parametrize("offset", [1, 2, 3])
def test_a_misaligned_blob_is_refused(lib, offset):
    case = kernel_cases.layer_case(np.random.default_rng(2), "fully_connected", 4, (1, 1, 1, 10), [3, 10, 1, 1])
    options_buffer, options = kc.aligned(case.options)
    blob_buffer, blob = kc.aligned(case.blob, offset)
    assert lib.qgt_layer_parse(2, options, len(case.options), blob, len(case.blob), ctypes.byref(kc.Layer())) == \
        STATUS["QGT_ERR_BLOB"]


EDGE_SHAPES = [  # kind, input dims, filter shape, stride, dilation, padding (0 SAME, 1 VALID), depth multiplier
    ("conv", (1, 5, 5, 3), [4, 2, 2, 3], (1, 1), (1, 1), 0, 1),      # even kernel, SAME: padding after only
    ("conv", (1, 7, 6, 2), [3, 3, 3, 2], (2, 2), (1, 1), 0, 1),      # stride 2 on odd and even sizes
    ("conv", (2, 6, 7, 1), [5, 3, 3, 1], (1, 2), (2, 1), 1, 1),      # batch 2, dilation, VALID
    ("conv", (1, 4, 4, 7), [9, 1, 1, 7], (1, 1), (1, 1), 0, 1),      # pointwise, K not a multiple of 4
    ("conv", (1, 3, 3, 1), [1, 1, 1, 1], (1, 1), (1, 1), 1, 1),      # K = 1, one output channel
    ("conv", (1, 1, 1, 64), [3, 1, 1, 64], (1, 1), (1, 1), 0, 1),    # one pixel (an odd pixel count)
    ("conv", (1, 5, 5, 4), [2, 5, 5, 4], (3, 3), (1, 1), 0, 1),      # window larger than the stride
    ("depthwise", (1, 6, 6, 8), [1, 3, 3, 8], (1, 1), (1, 1), 0, 1),  # MobileNet's 3x3
    ("depthwise", (1, 7, 7, 5), [1, 3, 3, 5], (2, 2), (1, 1), 0, 1),  # stride 2, partial channel group
    ("depthwise", (1, 5, 6, 3), [1, 2, 3, 9], (1, 2), (2, 1), 0, 3),  # depth multiplier 3, dilation
    ("depthwise", (2, 4, 4, 4), [1, 4, 4, 4], (1, 1), (1, 1), 1, 1),  # VALID, one output pixel, batch 2
    ("depthwise", (1, 9, 3, 16), [1, 5, 1, 16], (1, 1), (2, 1), 0, 1),  # tall dilated filter
    ("fully_connected", (3, 1, 1, 13), [5, 13, 1, 1], (1, 1), (1, 1), 0, 1),
    ("fully_connected", (1, 1, 1, 256), [2, 256, 1, 1], (1, 1), (1, 1), 0, 1),
]


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("kind, dims, shape, stride, dilation, padding, multiplier", EDGE_SHAPES)
def test_kernels_match_the_reference_on_edge_shapes(lib, bits, kind, dims, shape, stride, dilation, padding,
                                                    multiplier):
    rng = np.random.default_rng(bits * 100 + len(shape) + sum(dims))
    for activation, multipliers in ((3, "normal"), (0, "large"), (1, "tiny"), (2, "normal")):
        case = kernel_cases.layer_case(rng, kind, bits, dims, shape, stride, dilation, padding, multiplier, activation,
                                       multipliers)
        builtin = {"conv": "CONV_2D", "depthwise": "DEPTHWISE_CONV_2D", "fully_connected": "FULLY_CONNECTED"}[kind]
        prepared = kc.Prepared(lib, builtin, case.options, case.blob, dims, kc.quant(case.input_scale, case.input_zp),
                               kc.quant(case.output_scale, case.output_zp))
        assert prepared.status == 0
        status, out = prepared.run(case.input)
        assert status == 0
        np.testing.assert_array_equal(out.reshape(case.expected.shape), case.expected)


def test_depthwise_in_place_and_a_short_scratch(lib):
    case = kernel_cases.layer_case(np.random.default_rng(3), "depthwise", 2, (1, 8, 8, 8), [1, 3, 3, 8], (2, 2))
    prepared = kc.Prepared(lib, "DEPTHWISE_CONV_2D", case.options, case.blob, case.dims,
                           kc.quant(case.input_scale, case.input_zp), kc.quant(case.output_scale, case.output_zp))
    needed = prepared.scratch_bytes()
    scratch, scratch_at = kc.aligned(b"\x00" * needed)
    data = np.ascontiguousarray(case.input, np.int8).copy()
    status = prepared.kernel(ctypes.byref(prepared.params), ctypes.byref(prepared.quant),
                             ctypes.byref(prepared.input_dims), data.ctypes.data, ctypes.byref(prepared.layer.filter),
                             ctypes.byref(prepared.output_dims), data.ctypes.data, scratch_at, needed)
    assert status == 0
    np.testing.assert_array_equal(data.reshape(-1)[:case.expected.size], case.expected.reshape(-1))
    assert prepared.run(case.input, needed - 1)[0] == STATUS["QGT_ERR_SCRATCH"]
    status = prepared.kernel(ctypes.byref(prepared.params), ctypes.byref(prepared.quant),
                             ctypes.byref(prepared.input_dims), data.ctypes.data, ctypes.byref(prepared.layer.filter),
                             ctypes.byref(prepared.output_dims), data.ctypes.data, None, needed)
    assert status == STATUS["QGT_ERR_SCRATCH"]


def test_the_python_scratch_sizes_are_the_c_ones(lib):
    rng = np.random.default_rng(6)
    for _ in range(200):
        kind = str(rng.choice(["conv", "depthwise", "fully_connected"]))
        bits = int(rng.choice([1, 2, 4, 8]))
        multiplier, stride, dilation = 1, (1, 1), (1, 1)
        if kind == "fully_connected":
            dims = (int(rng.integers(1, 4)), 1, 1, int(rng.integers(1, 300)))
            shape = [int(rng.integers(1, 40)), dims[3], 1, 1]
        else:
            kh, kw = (int(v) for v in rng.integers(1, 6, 2))
            stride, dilation = tuple(int(v) for v in rng.integers(1, 4, 2)), tuple(int(v) for v in rng.integers(1, 3, 2))
            in_c = int(rng.integers(1, 70))
            dims = (1, int(rng.integers(kh * dilation[1], 30)), int(rng.integers(kw * dilation[0], 30)), in_c)
            if kind == "depthwise":
                multiplier = int(rng.integers(1, 3))
                shape = [1, kh, kw, in_c * multiplier]
            else:
                shape = [int(rng.integers(1, 70)), kh, kw, in_c]
        case = kernel_cases.layer_case(rng, kind, bits, dims, shape, stride, dilation, 0, multiplier)
        builtin = {"conv": "CONV_2D", "depthwise": "DEPTHWISE_CONV_2D", "fully_connected": "FULLY_CONNECTED"}[kind]
        prepared = kc.Prepared(lib, builtin, case.options, case.blob, dims, kc.quant(case.input_scale, case.input_zp),
                               kc.quant(case.output_scale, case.output_zp))
        assert prepared.status == 0
        if kind == "depthwise":
            expected = kernel_abi.depthwise_scratch_bytes(dims[3], shape[3], shape[1:3], stride[::-1], dilation[::-1],
                                                          prepared.output_dims.w)
        else:
            expected = kernel_abi.conv_scratch_bytes(shape[0], int(np.prod(shape[1:])))
        assert prepared.scratch_bytes() == expected, (kind, dims, shape, stride, dilation)

"""Random and bad-input kernel cases for tflm_export.kernel_runner, with their expected results from
tflm_export.reference."""

import dataclasses
import math
import struct

import numpy as np

from tflm_export import pack, reference, requant
from tflm_export.kernel_runner import ANY_ERROR, KINDS, Case

_BUILTIN = {"conv": "CONV_2D", "depthwise": "DEPTHWISE_CONV_2D", "fully_connected": "FULLY_CONNECTED"}


def _codes(rng, bits, shape):
    if bits == 1:
        return rng.choice(np.array([-1, 1]), shape)
    return rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), shape)


def _f32(value):
    return float(np.float32(value))


def _in_place_ok(in_dims, out_dims, kernel_h, stride_h, dilation_h, pad_h):
    """The depthwise kernel's in-place condition (qgt_depthwise.c)."""
    n, h, w, c = in_dims
    _, out_h, out_w, out_c = out_dims
    for b in range(n):
        for oy in range(out_h):
            following = oy * stride_h - pad_h + (kernel_h - 1) * dilation_h + 1
            first_unread = (b * h + min(max(following, 0), h)) * w * c
            if (b * out_h + oy + 1) * out_w * out_c > first_unread:
                return False
    return True


def layer_case(rng, kind, bits, dims, filter_shape, stride=(1, 1), dilation=(1, 1), padding=0, depth_multiplier=1,
               activation=3, multipliers="normal"):
    """A conv / depthwise / fully connected case of the given geometry (``dims``: input n, h, w, c; fully
    connected: rows, 1, 1, in; ``filter_shape`` in TFLite layout) with random codes, zero points, scales and
    biases, and its expected output from tflm_export.reference. ``multipliers``: "normal" (outputs spread
    over int8), "large" (saturating outputs, left shifts), "tiny" (QuantizeMultiplier's clamp to zero) or
    "ties" (inputs at or near the zero point, small biases, right shifts of 1 to 3 bits: small accumulators whose
    rounding right shift often falls exactly half way, of either sign)."""
    input_zp, output_zp = (int(v) for v in rng.integers(-128, 128, 2))
    input_scale, output_scale = _f32(2.0 ** rng.uniform(-7, -2)), _f32(2.0 ** rng.uniform(-6, 1))
    options = {"activation": activation, "padding": 0, "keep_num_dims": False, "stride_w": 0, "stride_h": 0,
               "dilation_w": 0, "dilation_h": 0, "depth_multiplier": 0, "filter_shape": list(filter_shape)}
    if kind == "fully_connected":
        codes = _codes(rng, bits, tuple(filter_shape[:2]))
        channels, taps = filter_shape[0], filter_shape[1]
        x = rng.integers(-128, 128, (dims[0], filter_shape[1]))
    else:
        options.update(padding=padding, stride_w=stride[0], stride_h=stride[1], dilation_w=dilation[0],
                       dilation_h=dilation[1], depth_multiplier=depth_multiplier if kind == "depthwise" else 0)
        codes = _codes(rng, bits, tuple(filter_shape))
        channels = filter_shape[3] if kind == "depthwise" else filter_shape[0]
        taps = filter_shape[1] * filter_shape[2] * (1 if kind == "depthwise" else filter_shape[3])
        x = rng.integers(-128, 128, dims)
    spread = math.sqrt(taps) * 74 * max(1.0, 2.0 ** (bits - 1) / 2)  # typical |accumulator|
    real = {"normal": 60 / spread * 2.0 ** rng.uniform(-1.5, 1.5), "large": 60 / spread * 2.0 ** rng.uniform(3, 12),
            "tiny": 2.0 ** -36, "ties": 2.0 ** rng.uniform(-4, -1.5)}[multipliers]
    weight_scales = real * output_scale / input_scale * 2.0 ** rng.uniform(-1, 1, channels)
    exponent, scale_codes = requant.scale_codes(weight_scales)
    bias_scale = spread * float(rng.choice([0.5, 4, 400]))
    bias = np.clip(np.round(rng.normal(0, bias_scale, channels)), -(2 ** 24), 2 ** 24).astype(np.int64)
    if multipliers == "ties":
        nudge = rng.integers(-2, 3, x.shape) * (rng.random(x.shape) < 0.3)
        x = np.clip(input_zp + nudge, -128, 127)
        bias = rng.integers(-8, 9, channels).astype(np.int64)
    multipliers, shifts = requant.layer_multipliers(input_scale, output_scale, scale_codes, exponent)
    layer = pack.PackedLayer(0, _BUILTIN[kind], bits, codes.astype(np.int8), multipliers, bias.astype(np.int32),
                             shifts, options)
    option_bytes, blob = pack.encode_layer(layer, exponent, scale_codes)
    expected = reference.run_layer(layer, x, input_zp, output_scale, output_zp)
    return Case(kind, tuple(dims), x.astype(np.int8), input_scale, input_zp, output_scale, output_zp,
                options=option_bytes, blob=blob, expected=expected,
                label=f"{bits}-bit {list(filter_shape)} stride {stride} dilation {dilation} in {tuple(dims)}")


def random_layer_case(rng, kind):
    """A random conv / depthwise / fully connected case: shapes, strides, padding, dilation, depth
    multiplier, 1/2/4/8-bit codes, odd sizes, activations, scales from tiny to saturating, biases of 1, 2 and 4
    bytes, sometimes in place or overlapped, sometimes with a scratch buffer too small."""
    bits = int(rng.choice([1, 2, 4, 8]))
    activation, padding = int(rng.integers(0, 4)), int(rng.integers(0, 2))
    stride, dilation, multiplier = (1, 1), (1, 1), 1
    if kind == "fully_connected":
        rows, depth, channels = int(rng.integers(1, 4)), int(rng.integers(1, 90)), int(rng.integers(1, 11))
        dims, shape = (rows, 1, 1, depth), [channels, depth, 1, 1]
        padding = 0
    else:
        kh, kw = (int(v) for v in rng.integers(1, 5, 2))
        stride = tuple(int(v) for v in rng.integers(1, 4, 2))
        if rng.random() < 0.3:
            dilation = tuple(int(v) for v in rng.integers(1, 4, 2))
        in_c = int(rng.integers(1, 13))
        multiplier = int(rng.integers(1, 4)) if kind == "depthwise" and rng.random() < 0.4 else 1
        channels = in_c * multiplier if kind == "depthwise" else int(rng.integers(1, 13))
        h, w = (int(rng.integers((k - 1) * d + 1 if padding else 1, (k - 1) * d + 10))
                for k, d in ((kh, dilation[1]), (kw, dilation[0])))
        dims = (int(rng.choice([1, 1, 2])), h, w, in_c)
        shape = [1, kh, kw, channels] if kind == "depthwise" else [channels, kh, kw, in_c]
    case = layer_case(rng, kind, bits, dims, shape, stride, dilation, padding, multiplier, activation,
                      multipliers=str(rng.choice(["normal"] * 16 + ["large"] * 2 + ["tiny", "ties"])))
    if rng.random() < 0.25:
        case.layout = 1
        out = case.expected.shape
        out_dims = out if kind != "fully_connected" else (out[0], 1, 1, out[1])
        pointwise = kind == "fully_connected" or (kind == "conv" and shape[1:3] == [1, 1] and stride == (1, 1))
        if kind == "depthwise":
            pad_h = reference._output_size_and_padding(dims[1], shape[1], stride[1], dilation[1], padding)[1]
            legal = _in_place_ok(dims, out_dims, shape[1], stride[1], dilation[1], pad_h)
        else:
            legal = pointwise
        if not legal:
            case.expected, case.expected_status = None, "QGT_ERR_ARGUMENT"
    elif rng.random() < 0.03:
        case.scratch_delta = -int(rng.integers(1, 5))
        case.expected, case.expected_status = None, "QGT_ERR_SCRATCH"
    return case


def random_pool_case(rng):
    dims = (int(rng.choice([1, 2])), *(int(v) for v in rng.integers(1, 10, 2)), int(rng.integers(1, 20)))
    kh, kw = int(rng.integers(1, dims[1] + 1)), int(rng.integers(1, dims[2] + 1))
    sh, sw = (int(v) for v in rng.integers(1, 4, 2))
    padding, activation = int(rng.integers(0, 2)), int(rng.integers(0, 4))
    scale, zp = _f32(2.0 ** rng.uniform(-6, 0)), int(rng.integers(-128, 128))
    x = rng.integers(-128, 128, dims)
    expected = reference.average_pool(x, (kh, kw), (sh, sw), padding, reference.activation_range(activation, scale, zp))
    return Case("average_pool", dims, x.astype(np.int8), scale, zp, scale, zp, extra=(padding, sw, sh, kw, kh, activation),
                expected=expected, label=f"{kh}x{kw}/{sh}x{sw} in {dims}")


def random_softmax_case(rng):
    rows, depth = int(rng.integers(1, 4)), int(rng.integers(1, 40))
    scale = _f32(2.0 ** rng.uniform(-7, 0))
    x = rng.integers(-128, 128, (rows, 1, 1, depth))
    if rng.random() < 0.3:
        x[..., rng.integers(0, depth)] = 127  # a clear maximum
    return Case("softmax", (rows, 1, 1, depth), x.astype(np.int8), scale, 0, 1 / 256, -128,
                extra=(requant.float32_bits(1.0), 0, 0, 0, 0, 0), expected=reference.softmax(x, scale),
                label=f"{rows}x{depth} scale {scale:.3g}")


def random_argmax_case(rng):
    rows, depth = int(rng.integers(1, 5)), int(rng.integers(1, 30))
    x = rng.integers(-128, 128, (rows, 1, 1, depth))
    if depth > 2:
        x[0, 0, 0, :2] = 127  # ties: the first index wins
    return Case("argmax", (rows, 1, 1, depth), x.astype(np.int8), expected=reference.argmax(x), label=f"{rows}x{depth}")


def mobilenet_like_case(rng, kind):
    """A 3 x 3 depthwise or pointwise case of the shapes the DSP path's fast loops take (MobileNet's), at the
    whole int8 clamp range that selects them (activation NONE): depthwise stride 1, 2 or 3, dilated rows, odd
    widths and channel counts, sometimes in place; pointwise input channels that fill whole weight words and
    leave partial ones, odd output channel counts, odd pixel counts. Multipliers normal, large or "ties"."""
    bits = int(rng.choice([1, 2, 2, 4, 8, 8]))
    multipliers = str(rng.choice(["normal"] * 4 + ["large", "ties", "ties"]))
    h, w = (int(v) for v in rng.integers(1, 12, 2))
    if kind == "depthwise":
        channels, stride = int(rng.integers(1, 21)), int(rng.choice([1, 1, 2, 2, 3]))
        dilation = (1, int(rng.choice([1, 1, 1, 2])))
        padding = int(rng.integers(0, 2)) if h >= 1 + 2 * dilation[1] and w >= 3 else 0
        case = layer_case(rng, "depthwise", bits, (int(rng.choice([1, 1, 2])), h, w, channels), [1, 3, 3, channels],
                          (stride, stride), dilation, padding, 1, 0, multipliers)
        if rng.random() < 0.3:
            pad_h = reference._output_size_and_padding(h, 3, stride, dilation[1], padding)[1]
            out = case.expected.shape
            case.layout = 1
            if not _in_place_ok(case.dims, out, 3, stride, dilation[1], pad_h):
                case.expected, case.expected_status = None, "QGT_ERR_ARGUMENT"
        return case
    in_c, out_c = int(rng.integers(1, 81)), int(rng.integers(1, 21))
    return layer_case(rng, "conv", bits, (1, h, w, in_c), [out_c, 1, 1, in_c], activation=0, multipliers=multipliers)


def first_conv_case(rng):
    """A conv over a gray or RGB image (1 or 3 input channels) with 3-wide filter rows, which the DSP path runs
    channel pair by channel pair with whole-word loads per window row when the filter is 3 x 3 and the
    requantization fast (MobileNet's first conv: stride 2, SAME): filter heights 1 to 5 (the others take the
    general path), strides 1 to 3, dilated rows, both paddings, inputs from narrower than the loaded words to 13
    wide, odd channel counts, mostly the whole int8 clamp range and sometimes a clamped one."""
    bits = int(rng.choice([1, 2, 4, 8]))
    kh = int(rng.choice([1, 2, 3, 3, 3, 3, 4, 5]))
    in_c = int(rng.choice([1, 3]))
    stride = tuple(int(v) for v in rng.integers(1, 4, 2))
    dilation = (1, int(rng.choice([1, 1, 2])))
    padding = int(rng.integers(0, 2))
    h = int(rng.integers((kh - 1) * dilation[1] + 1, (kh - 1) * dilation[1] + 10))
    w = int(rng.integers(3, 14))
    activation = int(rng.choice([0, 0, 0, 1, 3]))
    multipliers = str(rng.choice(["normal"] * 4 + ["large", "ties"]))
    return layer_case(rng, "conv", bits, (int(rng.choice([1, 1, 2])), h, w, in_c),
                      [int(rng.integers(1, 13)), kh, 3, in_c], stride, dilation, padding, activation=activation,
                      multipliers=multipliers)


def property_cases(seed, layers=1050, others=150, mobilenet_like=150, first_conv=80):
    """``layers`` random conv / depthwise / fully connected cases, ``mobilenet_like`` and ``first_conv`` cases
    of the DSP path's fast loops and ``others`` pool, softmax, argmax ones."""
    rng = np.random.default_rng(seed)
    cases = [random_layer_case(rng, KINDS[i % 3]) for i in range(layers)]
    cases += [mobilenet_like_case(rng, ("depthwise", "conv")[i % 2]) for i in range(mobilenet_like)]
    makers = (random_pool_case, random_softmax_case, random_argmax_case)
    cases += [makers[i % 3](rng) for i in range(others)]
    return cases + [first_conv_case(rng) for _ in range(first_conv)]


# --- bad input --------------------------------------------------------------------------------------------

def _edited(data, offset, value):
    data = bytearray(data)
    data[offset] = value & 0xFF
    return bytes(data)


def bad_input_cases():
    """Cases the library must refuse with the given status, without reading or writing out of bounds."""
    rng = np.random.default_rng(99)
    base = random_layer_case(rng, "conv")
    while base.expected is None or base.layout:
        base = random_layer_case(rng, "conv")
    good_options, good_blob = base.options, base.blob
    cases = []

    def variant(label, status, **changes):
        case = dataclasses.replace(base, expected=None, expected_status=status, label=label, **changes)
        cases.append(case)

    for version in (1, 2, 4, 0):
        variant(f"version {version}", "QGT_ERR_VERSION", options=_edited(good_options, 0, version))
    variant("unknown flag", "QGT_ERR_FLAGS", options=_edited(good_options, 5, good_options[5] | 0x10))
    variant("no word-rows flag", "QGT_ERR_FLAGS", options=_edited(good_options, 5, good_options[5] & ~2))
    variant("3-bit weights", "QGT_ERR_OPTIONS", options=_edited(good_options, 1, 3))
    variant("3-byte biases", "QGT_ERR_OPTIONS", options=_edited(good_options, 2, 3))
    variant("bias shift 31", "QGT_ERR_OPTIONS", options=_edited(good_options, 6, 31))
    variant("scale exponent -127", "QGT_ERR_OPTIONS", options=_edited(good_options, 7, -127))
    variant("activation 4", "QGT_ERR_ACTIVATION", options=_edited(good_options, 3, 4))
    variant("options truncated", "QGT_ERR_OPTIONS", options=good_options[:-1])
    variant("options too long", "QGT_ERR_OPTIONS", options=good_options + b"\x00")
    variant("no options", ANY_ERROR, options=b"")
    variant("zero filter dimension", "QGT_ERR_SHAPE", options=_edited(_edited(good_options, 13, 0), 14, 0))
    variant("blob truncated", "QGT_ERR_BLOB", blob=good_blob[:-1])
    variant("blob too long", "QGT_ERR_BLOB", blob=good_blob + b"\x00" * 4)
    variant("empty blob", "QGT_ERR_BLOB", blob=b"")
    n, h, w, c = base.dims
    variant("input channels differ from the filter", "QGT_ERR_SHAPE", dims=(n, h, w, c + 1))
    variant("zero height", "QGT_ERR_SHAPE", dims=(n, 0, w, c))
    variant("negative width", "QGT_ERR_SHAPE", dims=(n, h, -w, c))
    variant("dims whose product overflows", "QGT_ERR_SHAPE", dims=(n, 65536, 65536, c))
    out = base.expected.shape
    variant("output channels differ from the filter", "QGT_ERR_SHAPE", override=(out[0], out[1], out[2], out[3] + 1))
    variant("output batch differs", "QGT_ERR_SHAPE", override=(out[0] + 1, out[1], out[2], out[3]))
    variant("scratch one byte short", "QGT_ERR_SCRATCH", scratch_delta=-1)
    variant("input zero point out of range", "QGT_ERR_ARGUMENT", input_zp=200)
    variant("NaN output scale", "QGT_ERR_SCALE", output_scale=float("nan"))
    variant("zero input scale", "QGT_ERR_SCALE", input_scale=0.0)

    # a bias whose stored value times its unit leaves int32: 127 * 2^30
    layer = pack.PackedLayer(0, "FULLY_CONNECTED", 8, np.ones((1, 4), np.int8), np.zeros(1, np.int32),
                             np.array([1], np.int32), np.zeros(1, np.int8),
                             {"activation": 0, "padding": 0, "keep_num_dims": False, "stride_w": 0, "stride_h": 0,
                              "dilation_w": 0, "dilation_h": 0, "depth_multiplier": 0, "filter_shape": [1, 4, 1, 1]})
    options, blob = pack.encode_layer(layer, -10, [0])
    blob = blob[:4] + bytes([127]) + blob[5:]
    cases.append(Case("fully_connected", (1, 1, 1, 4), np.zeros(4, np.int8), 0.1, 0, 0.1, 0,
                      options=_edited(options, 6, 30), blob=blob, expected_status="QGT_ERR_RANGE", label="bias overflow"))
    # a layer whose worst-case accumulator plus bias exceeds int32: 100 codes of -128 and a bias near 2^31
    layer.codes, layer.options["filter_shape"] = np.full((1, 100), -128, np.int8), [1, 100, 1, 1]
    layer.bias = np.array([2 ** 31 - 1000], np.int32)
    options, blob = pack.encode_layer(layer, -10, [0])
    cases.append(Case("fully_connected", (1, 1, 1, 100), np.zeros(100, np.int8), 0.1, 0, 0.1, 0, options=options,
                      blob=blob, expected_status="QGT_ERR_RANGE", label="accumulator overflow"))
    # VALID padding with an input smaller than the filter
    layer = pack.PackedLayer(0, "DEPTHWISE_CONV_2D", 2, np.ones((1, 5, 5, 3), np.int8), np.zeros(3, np.int32),
                             np.zeros(3, np.int32), np.zeros(3, np.int8),
                             {"activation": 0, "padding": 1, "keep_num_dims": False, "stride_w": 1, "stride_h": 1,
                              "dilation_w": 1, "dilation_h": 1, "depth_multiplier": 1, "filter_shape": [1, 5, 5, 3]})
    options, blob = pack.encode_layer(layer, -10, [0, 0, 0])
    cases.append(Case("depthwise", (1, 2, 2, 3), np.zeros(12, np.int8), 0.1, 0, 0.1, 0, options=options, blob=blob,
                      expected_status="QGT_ERR_SHAPE", label="VALID, input smaller than filter"))
    # softmax and pooling parameters TFLite refuses
    x = np.zeros((1, 1, 1, 8), np.int8)
    one = (requant.float32_bits(1.0), 0, 0, 0, 0, 0)
    cases.append(Case("softmax", (1, 1, 1, 8), x, 0.1, 0, 0.5, -128, extra=one, expected_status="QGT_ERR_SCALE",
                      label="output scale not 1/256"))
    cases.append(Case("softmax", (1, 1, 1, 8), x, 1e-9, 0, 1 / 256, -128, extra=one, expected_status="QGT_ERR_SCALE",
                      label="input scale too small"))
    cases.append(Case("softmax", (1, 1, 1, 600), np.zeros(600, np.int8), 0.1, 0, 1 / 256, -128, extra=one,
                      expected_status="QGT_ERR_SHAPE", label="depth beyond TFLite's limit"))
    cases.append(Case("average_pool", (1, 4, 4, 3), np.zeros(48, np.int8), 0.1, 0, 0.1, 0, extra=(1, 1, 1, 2, 2, 0),
                      override=(1, 6, 3, 3), expected_status="QGT_ERR_SHAPE", label="window beyond the input"))
    cases.append(Case("argmax", (1, 1, 1, 0), np.zeros(0, np.int8), expected_status="QGT_ERR_SHAPE", label="empty"))
    return cases

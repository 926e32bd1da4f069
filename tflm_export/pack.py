"""The packed model: b-bit weights and compact per-channel parameters in QGT custom ops (docs/FORMAT.md).

:func:`pack_model` turns an int8 .tflite (from :mod:`tflm_export.keras_convert`) into the packed variant: every
CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED op becomes the custom op QGT_CONV_2D,
QGT_DEPTHWISE_CONV_2D or QGT_FULLY_CONNECTED with one constant input, a blob of per-channel parameters
followed by the bit-packed codes. Version 2 (the default) stores per channel a bias of 1 byte where it can
and a 1-byte code of the weight scale on a fixed log grid; the kernel computes the multipliers in Prepare.
It needs an int8 model whose parameters lie on those grids: :func:`round_parameters` puts them there (a
small, measured change of the model, so that int8, LUT and packed variants still compute the same thing).
Version 1 stores int32 multiplier, bias and shift and packs any int8 model unchanged. The float scales and
int64 zero points of weight and bias tensors are dropped, and with them the bias tensors.
:func:`unpack_model` is the decoder; :func:`expected_layers` computes what it must return from the int8
model, so a round trip can be checked. docs/FORMAT.md is the specification; keep the two in step.
"""

import dataclasses
import math
import struct

import numpy as np
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

from tflm_export import snap, tflite_model
from tflm_export.tflite_model import ExportError

FORMAT_VERSION = 2
FORMAT_VERSIONS = (1, 2)
CUSTOM_CODES = {"CONV_2D": "QGT_CONV_2D", "DEPTHWISE_CONV_2D": "QGT_DEPTHWISE_CONV_2D",
                "FULLY_CONNECTED": "QGT_FULLY_CONNECTED"}
BUILTIN_OF_CUSTOM = {custom: builtin for builtin, custom in CUSTOM_CODES.items()}
STORAGE_WIDTHS = (1, 2, 4, 8)
# version, weight_bits, bias_bytes, activation, padding, flags, [version 2: bias_shift, scale_exponent,]
# stride w/h, dilation w/h, depth multiplier (uint16 in version 1, uint8 in version 2), filter shape (4 dims,
# TFLite layout). Little-endian.
OPTIONS_FORMATS = {1: "<6B5H4H", 2: "<6BBb5B4H"}
OPTIONS_BYTES = {version: struct.calcsize(fmt) for version, fmt in OPTIONS_FORMATS.items()}
BIAS_WIDTHS = (1, 2, 4)
# Version 2 weight scales: SCALE_MANTISSAS[code % 32] * 2^(scale_exponent + code // 32), 8 octaves per layer.
SCALE_STEPS_PER_OCTAVE = 32
SCALE_CODES = 256
SCALE_MANTISSAS = np.array([2.0 ** (k / SCALE_STEPS_PER_OCTAVE) for k in range(SCALE_STEPS_PER_OCTAVE)],
                           np.float32)  # the float32 nearest to 2^(k/32); a kernel holds this table
_MAX_BIAS_SHIFT = 31
_FLAG_KEEP_NUM_DIMS = 1
_UINT16_MAX = 0xFFFF


def storage_bits(codes):
    """Smallest width in 1, 2, 4, 8 that holds ``codes`` (1 bit: only -1 and +1)."""
    codes = np.asarray(codes)
    if codes.size == 0:
        return 8
    low, high = int(codes.min()), int(codes.max())
    if set(np.unique(codes).tolist()) <= {-1, 1}:
        return 1
    for bits in (2, 4, 8):
        if -(2 ** (bits - 1)) <= low and high <= 2 ** (bits - 1) - 1:
            return bits
    raise ExportError(f"codes in [{low}, {high}] do not fit int8")


def pack_codes(codes, bits):
    """Packs integer codes into bytes, ``8 // bits`` per byte, first code in the least significant bits.

    A code's field is its low ``bits`` bits in two's complement; 1 bit stores +1 as 1 and -1 as 0.
    The last byte is padded with zero bits.
    """
    if bits not in STORAGE_WIDTHS:
        raise ExportError(f"storage width must be one of {STORAGE_WIDTHS}, got {bits}")
    codes = np.asarray(codes).reshape(-1).astype(np.int64)
    if bits == 1:
        if not np.all(np.abs(codes) == 1):
            raise ExportError("1-bit codes must be -1 or +1")
        fields = (codes > 0).astype(np.uint8)
    else:
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        if codes.size and (codes.min() < low or codes.max() > high):
            raise ExportError(f"codes in [{codes.min()}, {codes.max()}] do not fit {bits} bits")
        fields = (codes & (2 ** bits - 1)).astype(np.uint8)
    per_byte = 8 // bits
    fields = np.concatenate([fields, np.zeros(-len(fields) % per_byte, np.uint8)]).reshape(-1, per_byte)
    shifts = (np.arange(per_byte) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(fields << shifts, axis=1).astype(np.uint8).tobytes()


def unpack_codes(data, bits, count):
    """Inverse of :func:`pack_codes`: ``count`` int8 codes."""
    if bits not in STORAGE_WIDTHS:
        raise ExportError(f"storage width must be one of {STORAGE_WIDTHS}, got {bits}")
    raw = np.frombuffer(bytes(data), np.uint8)
    per_byte = 8 // bits
    if len(raw) != math.ceil(count / per_byte):
        raise ExportError(f"{len(raw)} bytes cannot hold exactly {count} codes of {bits} bits")
    shifts = (np.arange(per_byte) * bits).astype(np.uint8)
    fields = ((raw[:, None] >> shifts) & (2 ** bits - 1)).reshape(-1)[:count].astype(np.int16)
    if bits == 1:
        return np.where(fields == 1, 1, -1).astype(np.int8)
    return np.where(fields >= 2 ** (bits - 1), fields - 2 ** bits, fields).astype(np.int8)


def quantize_multiplier(real_multiplier):
    """(int32 multiplier, shift) with real = multiplier * 2^(shift - 31), as TFLite-Micro computes them."""
    if real_multiplier == 0:
        return 0, 0
    fraction, shift = math.frexp(real_multiplier)
    fixed = int(math.floor(abs(fraction) * 2 ** 31 + 0.5)) * (1 if fraction > 0 else -1)  # std::round
    if abs(fixed) == 2 ** 31:
        fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        return 2 ** 31 - 1, 30
    return fixed, shift


def grid_scales(codes, exponent):
    """float32 weight scales of version-2 scale ``codes`` (0..255) in a layer with ``scale_exponent``."""
    codes = np.asarray(codes, np.int64)
    return np.ldexp(SCALE_MANTISSAS[codes % SCALE_STEPS_PER_OCTAVE],
                    exponent + codes // SCALE_STEPS_PER_OCTAVE).astype(np.float32)


def scale_codes(scales):
    """(scale_exponent, codes): the nearest version-2 grid scales of positive ``scales``.

    The top octave holds the largest scale; a scale more than 8 octaves below it gets code 0 (the scale
    moves up to the grid's bottom, see docs/FORMAT.md).
    """
    steps = np.log2(np.asarray(scales, np.float64)) * SCALE_STEPS_PER_OCTAVE
    exponent = int(np.floor(np.round(steps.max()) / SCALE_STEPS_PER_OCTAVE)) - (
        SCALE_CODES // SCALE_STEPS_PER_OCTAVE - 1)
    codes = np.clip(np.round(steps) - exponent * SCALE_STEPS_PER_OCTAVE, 0, SCALE_CODES - 1).astype(np.int64)
    # log rounding can miss the float32 neighbour that is nearer; take the nearer of the two candidates
    for other in (np.maximum(codes - 1, 0), np.minimum(codes + 1, SCALE_CODES - 1)):
        nearer = (np.abs(grid_scales(other, exponent) - scales) < np.abs(grid_scales(codes, exponent) - scales))
        codes = np.where(nearer, other, codes)
    return exponent, codes


def bias_quantum(codes, bias_shift):
    """Version 2: a channel's stored bias counts units of 2^max(0, bias_shift - octave of its scale code).

    Tying the unit to the scale's octave keeps the bias rounding near the same fraction of an output step on
    every channel (one output step is 1 / (input_scale * weight_scale / output_scale) accumulator units).
    """
    return np.left_shift(1, np.maximum(0, bias_shift - np.asarray(codes, np.int64) // SCALE_STEPS_PER_OCTAVE))


def bias_encoding(bias, codes):
    """(bias_bytes, bias_shift) of the narrowest version-2 encoding that holds ``bias`` exactly.

    Falls back to wider biases (2, then 4 bytes) where 1 byte cannot hold the values; 4 bytes with shift 0
    holds every int32.
    """
    bias = np.asarray(bias, np.int64)
    if bias.size and (bias.min() < -(2 ** 31) or bias.max() >= 2 ** 31):
        raise ExportError("bias does not fit int32")
    for width in BIAS_WIDTHS[:-1]:
        limit = 2 ** (8 * width - 1)
        for shift in range(_MAX_BIAS_SHIFT + 1):
            quantum = bias_quantum(codes, shift)
            if np.all(bias % quantum == 0) and np.all((-limit <= bias // quantum) & (bias // quantum < limit)):
                return width, shift
    return BIAS_WIDTHS[-1], 0


def round_parameters(int8_tflite, wide_bias_channels=64):
    """Moves every weight scale of an int8 .tflite onto the version-2 log grid and rounds every bias to one
    byte, or to two in layers with at most ``wide_bias_channels`` output channels (see :func:`bias_quantum`);
    returns the new .tflite bytes, which pack with biases of those widths.

    The narrow early layers keep 2-byte biases because a bias error there travels through the whole network:
    on TFLM's person_detect they hold 432 of 2,738 channels and most of the accuracy cost of 1-byte biases.

    Codes stay; each bias is first re-expressed in its channel's new scale (as in
    :func:`tflm_export.snap.snap_tflite`), then rounded to the finest unit in which its layer fits the
    width. This changes the model slightly (scales by at most 1.1 %, 1-byte biases by up to about two output
    steps): docs/FORMAT.md has the measured accuracy cost.
    """
    model = tflite_model.read(int8_tflite)
    for op in tflite_model.weight_ops(model):
        weights = tflite_model.tensor_array(model, op.weights)
        axis = tflite_model.channel_axis(op.kind)
        old_scales = np.broadcast_to(tflite_model.tensor_scales(model, op.weights)[0], (weights.shape[axis],))
        exponent, codes = scale_codes(old_scales)
        snap.rewrite_weights(model, op, tflite_model.channels_last(weights, axis), grid_scales(codes, exponent).astype(
            np.float64), old_scales)
        if op.bias < 0:
            continue
        bias = tflite_model.tensor_array(model, op.bias).astype(np.int64)
        limit = 2 ** (16 - 1) if len(codes) <= wide_bias_channels else 2 ** (8 - 1)
        for shift in range(_MAX_BIAS_SHIFT + 1):
            quantum = bias_quantum(codes, shift)
            units = np.floor(bias / quantum + 0.5).astype(np.int64)
            if units.min() >= -limit and units.max() < limit:
                break
        if np.any(np.abs(units * quantum) > 2 ** 31 - 1):
            raise ExportError(f"bias {tflite_model.tensor_name(model, op.bias)!r} overflows int32 when rounded")
        tflite_model.set_tensor_data(model, op.bias, (units * quantum).astype(np.int32))
    return tflite_model.write(model)


@dataclasses.dataclass
class PackedLayer:
    """One conv / depthwise / fully connected layer as the packed format describes it."""
    op_index: int
    kind: str  # the builtin op it replaces: CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED
    weight_bits: int
    codes: np.ndarray  # int8, TFLite weight layout
    multiplier: np.ndarray  # int32 per output channel
    bias: np.ndarray  # int32 per output channel
    shift: np.ndarray  # int8 per output channel
    options: dict

    def equals(self, other):
        return (self.op_index == other.op_index and self.kind == other.kind
                and self.weight_bits == other.weight_bits and self.options == other.options
                and all(np.array_equal(getattr(self, f), getattr(other, f))
                        for f in ("codes", "multiplier", "bias", "shift")))


def _options(model, op, kind, codes):
    """The op's builtin options as the fields of the custom options block."""
    builtin = model.subgraphs[0].operators[op.op_index].builtinOptions
    shape = list(codes.shape) + [1] * (4 - codes.ndim)
    if max(shape) > _UINT16_MAX:
        raise ExportError(f"op {op.op_index}: weight shape {list(codes.shape)} exceeds 16-bit dimensions")
    options = {"activation": int(builtin.fusedActivationFunction), "padding": 0, "keep_num_dims": False,
               "stride_w": 0, "stride_h": 0, "dilation_w": 0, "dilation_h": 0, "depth_multiplier": 0,
               "filter_shape": shape}
    if kind == "FULLY_CONNECTED":
        options["keep_num_dims"] = bool(builtin.keepNumDims)
        return options
    options.update(padding=int(builtin.padding), stride_w=int(builtin.strideW), stride_h=int(builtin.strideH),
                   dilation_w=int(builtin.dilationWFactor), dilation_h=int(builtin.dilationHFactor))
    if kind == "DEPTHWISE_CONV_2D":
        options["depth_multiplier"] = int(builtin.depthMultiplier)
    return options


def _bias_bytes(bias):
    for width in (1, 2, 4):
        limit = 2 ** (8 * width - 1)
        if bias.size == 0 or (-limit <= bias.min() and bias.max() < limit):
            return width
    raise ExportError("bias does not fit int32")


def _weight_scales(model, op, channels):
    return np.broadcast_to(tflite_model.tensor_scales(model, op.weights)[0].astype(np.float32), (channels,))


def _multipliers(model, input_tensor, output_tensor, weight_scales):
    """(int32 multipliers, int8 shifts) per channel, computed as TFLite-Micro's Prepare does (in double)."""
    input_scale = float(np.float32(tflite_model.tensor_scales(model, input_tensor)[0][0]))
    output_scale = float(np.float32(tflite_model.tensor_scales(model, output_tensor)[0][0]))
    pairs = [quantize_multiplier(input_scale * float(s) / output_scale) for s in weight_scales]
    return np.array([m for m, _ in pairs], np.int32), np.array([s for _, s in pairs], np.int8)


def expected_layers(int8_tflite):
    """The :class:`PackedLayer` of every weight op of an int8 model (what the packed model must hold)."""
    model = tflite_model.read(int8_tflite)
    layers = []
    for op in tflite_model.weight_ops(model):
        codes = tflite_model.tensor_array(model, op.weights)
        if codes.dtype != np.int8:
            raise ExportError(f"weight tensor {tflite_model.tensor_name(model, op.weights)!r} is not int8")
        channels = codes.shape[tflite_model.channel_axis(op.kind)]
        multiplier, shift = _multipliers(model, op.input, op.output, _weight_scales(model, op, channels))
        bias = (tflite_model.tensor_array(model, op.bias).astype(np.int32) if op.bias >= 0
                else np.zeros(channels, np.int32))
        layers.append(PackedLayer(op.op_index, op.kind, storage_bits(codes), codes, multiplier, bias, shift,
                                  _options(model, op, op.kind, codes)))
    return layers


@dataclasses.dataclass
class _Encoding:
    """How a layer's parameters are stored; bias_shift, scale_exponent and scale_codes are version 2's."""
    version: int
    bias_bytes: int
    bias_shift: int = 0
    scale_exponent: int = 0
    scale_codes: np.ndarray = None


def _encoding(model, op, layer, version):
    """The parameter encoding of ``layer`` (of ``op`` in ``model``) in ``version``; raises ExportError when
    version 2 cannot hold its weight scales exactly."""
    if version == 1:
        return _Encoding(1, _bias_bytes(layer.bias))
    scales = _weight_scales(model, op, len(layer.bias))
    exponent, codes = scale_codes(scales)
    if not -128 <= exponent <= 127 or not np.array_equal(grid_scales(codes, exponent), scales):
        raise ExportError(f"weight scales of {tflite_model.tensor_name(model, op.weights)!r} are not on the "
                          "version-2 log grid: apply pack.round_parameters to the int8 model, or pack version 1")
    return _Encoding(2, *bias_encoding(layer.bias, codes), exponent, codes)


def _encode_options(layer, encoding):
    o = layer.options
    small = [o[key] for key in ("stride_w", "stride_h", "dilation_w", "dilation_h", "depth_multiplier")]
    if encoding.version == 2 and max(small) > 0xFF:
        raise ExportError(f"op {layer.op_index}: strides, dilations and depth multiplier {small} exceed the 255 "
                          "of version 2; pack version 1")
    extra = [encoding.bias_shift, encoding.scale_exponent] if encoding.version == 2 else []
    return struct.pack(OPTIONS_FORMATS[encoding.version], encoding.version, layer.weight_bits,
                       encoding.bias_bytes, o["activation"], o["padding"],
                       _FLAG_KEEP_NUM_DIMS if o["keep_num_dims"] else 0, *extra, o["stride_w"], o["stride_h"],
                       o["dilation_w"], o["dilation_h"], o["depth_multiplier"], *o["filter_shape"])


def _encode_blob(layer, encoding):
    """Version 1: multiplier int32[C] | bias int<bias_bytes>[C] | shift int8[C] | packed weights;
    version 2: bias int<bias_bytes>[C] | scale code uint8[C] | packed weights (docs/FORMAT.md)."""
    bias_type = {1: "<i1", 2: "<i2", 4: "<i4"}[encoding.bias_bytes]
    weights = pack_codes(layer.codes, layer.weight_bits)
    if encoding.version == 1:
        return (layer.multiplier.astype("<i4").tobytes() + layer.bias.astype(bias_type).tobytes()
                + layer.shift.astype(np.int8).tobytes() + weights)
    stored_bias = layer.bias.astype(np.int64) // bias_quantum(encoding.scale_codes, encoding.bias_shift)
    return stored_bias.astype(bias_type).tobytes() + encoding.scale_codes.astype(np.uint8).tobytes() + weights


def _opcode_index(model, custom_code):
    for index, code in enumerate(model.operatorCodes):
        if code.builtinCode == schema.BuiltinOperator.CUSTOM and code.customCode in (custom_code, custom_code.encode()):
            return index
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode = custom_code
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _drop_unused_opcodes(model):
    ops = model.subgraphs[0].operators
    used = sorted({op.opcodeIndex for op in ops})
    new_index = {old: new for new, old in enumerate(used)}
    model.operatorCodes = [model.operatorCodes[i] for i in used]
    for op in ops:
        op.opcodeIndex = new_index[op.opcodeIndex]


def _store_bytes(model, index, data):
    """Makes tensor ``index`` a plain UINT8 [len(data)] constant holding ``data``."""
    tensor = model.subgraphs[0].tensors[index]
    tensor.type = schema.TensorType.UINT8
    tensor.shape = [len(data)]
    tensor.quantization = None
    tflite_model.set_tensor_data(model, index, np.frombuffer(data, np.uint8))


def _drop_unused_tensors_and_buffers(model):
    """Removes tensors no op or graph input/output uses, then buffers no tensor or metadata uses (0 stays)."""
    graph = model.subgraphs[0]
    used = {int(i) for op in graph.operators for i in list(op.inputs) + list(op.outputs) if i >= 0}
    used |= {int(i) for i in list(graph.inputs) + list(graph.outputs)}
    new_index = {old: new for new, old in enumerate(sorted(used))}
    graph.tensors = [graph.tensors[i] for i in sorted(used)]
    for op in graph.operators:
        op.inputs = [new_index[int(i)] if i >= 0 else -1 for i in op.inputs]
        op.outputs = [new_index[int(i)] for i in op.outputs]
    graph.inputs = [new_index[int(i)] for i in graph.inputs]
    graph.outputs = [new_index[int(i)] for i in graph.outputs]
    for signature in model.signatureDefs or []:
        for entry in (signature.inputs or []) + (signature.outputs or []):
            entry.tensorIndex = new_index[entry.tensorIndex]
    kept = sorted({0} | {t.buffer for t in graph.tensors} | {m.buffer for m in model.metadata or []})
    new_buffer = {old: new for new, old in enumerate(kept)}
    model.buffers = [model.buffers[i] for i in kept]
    for tensor in graph.tensors:
        tensor.buffer = new_buffer[tensor.buffer]
    for entry in model.metadata or []:
        entry.buffer = new_buffer[entry.buffer]


def _strip_for_firmware(model):
    """Drops what TFLite-Micro never reads: names, signatures, shape signatures, float min/max ranges."""
    model.description = None
    model.signatureDefs = None
    for tensor in model.subgraphs[0].tensors:
        tensor.name = None
        tensor.shapeSignature = None
        if tensor.quantization is not None:
            tensor.quantization.min = tensor.quantization.max = None


def pack_model(int8_tflite, strip=True, version=FORMAT_VERSION):
    """The packed variant of an int8 .tflite (bytes); see docs/FORMAT.md.

    ``version`` 2 needs weight scales on its log grid (:func:`round_parameters`); version 1 packs any int8
    model. ``strip`` drops tensor names, signature definitions, shape signatures and float min/max ranges,
    which TFLite-Micro never reads.
    """
    if version not in FORMAT_VERSIONS:
        raise ExportError(f"packed format version must be one of {FORMAT_VERSIONS}, got {version}")
    model = tflite_model.read(int8_tflite)
    tflite_model.check_tflm_ops(model)
    for layer, op in zip(expected_layers(int8_tflite), tflite_model.weight_ops(model)):
        for tensor in (op.weights, op.bias):
            if tensor >= 0 and tflite_model.consumers(model, tensor) != [op.op_index]:
                raise ExportError(f"tensor {tflite_model.tensor_name(model, tensor)!r} is shared by several "
                                  "ops; the packed format needs one weight and bias tensor per op")
        encoding = _encoding(model, op, layer, version)
        _store_bytes(model, op.weights, _encode_blob(layer, encoding))
        operator = model.subgraphs[0].operators[op.op_index]
        operator.opcodeIndex = _opcode_index(model, CUSTOM_CODES[op.kind])
        operator.inputs = [op.input, op.weights]  # the bias tensor is left unused and dropped below
        operator.builtinOptionsType = schema.BuiltinOptions.NONE
        operator.builtinOptions = None
        operator.customOptions = np.frombuffer(_encode_options(layer, encoding), np.uint8).copy()
        operator.customOptionsFormat = schema.CustomOptionsFormat.FLEXBUFFERS  # the schema's only value
    _drop_unused_opcodes(model)
    _drop_unused_tensors_and_buffers(model)
    if strip:
        _strip_for_firmware(model)
    return tflite_model.write(model)


def _decode_options(kind, options, where):
    """The custom options block as a dict (see docs/FORMAT.md), with the filter shape of ``kind``."""
    version = options[0] if options else None
    if version not in FORMAT_VERSIONS or len(options) != OPTIONS_BYTES[version]:
        raise ExportError(f"{where}: custom options of {len(options)} bytes with format version {version}; "
                          f"expected {', '.join(f'version {v} in {n} bytes' for v, n in OPTIONS_BYTES.items())}")
    fields = list(struct.unpack(OPTIONS_FORMATS[version], options))
    version, bits, bias_bytes, activation, padding, flags = fields[:6]
    bias_shift, scale_exponent = fields[6:8] if version == 2 else (0, 0)
    stride_w, stride_h, dilation_w, dilation_h, depth_multiplier, *shape = fields[-9:]
    if bits not in STORAGE_WIDTHS or bias_bytes not in BIAS_WIDTHS or bias_shift > _MAX_BIAS_SHIFT:
        raise ExportError(f"{where}: unsupported weight bits {bits}, bias width {bias_bytes} or bias shift "
                          f"{bias_shift}")
    return {"version": version, "weight_bits": bits, "bias_bytes": bias_bytes, "bias_shift": bias_shift,
            "scale_exponent": scale_exponent, "activation": activation, "padding": padding,
            "keep_num_dims": bool(flags & _FLAG_KEEP_NUM_DIMS), "stride_w": stride_w, "stride_h": stride_h,
            "dilation_w": dilation_w, "dilation_h": dilation_h, "depth_multiplier": depth_multiplier,
            "filter_shape": shape[:2] + [1, 1] if kind == "FULLY_CONNECTED" else shape}


def _channels(kind, shape):
    return shape[3] if kind == "DEPTHWISE_CONV_2D" else shape[0]


def blob_sizes(kind, options):
    """(weight bytes, parameter bytes) of a QGT op's blob, from its custom options bytes."""
    decoded = _decode_options(kind, options, kind)
    shape = decoded["filter_shape"]
    per_channel = decoded["bias_bytes"] + (5 if decoded["version"] == 1 else 1)
    return math.ceil(int(np.prod(shape)) * decoded["weight_bits"] / 8), _channels(kind, shape) * per_channel


def unpack_model(packed_tflite):
    """Decodes every QGT op of a packed model back into :class:`PackedLayer` objects."""
    model = tflite_model.read(packed_tflite)
    layers = []
    for index, op in enumerate(model.subgraphs[0].operators):
        kind = BUILTIN_OF_CUSTOM.get(tflite_model.op_name(model, op))
        if kind is None:
            continue
        where = f"op {index} ({kind})"
        raw_options = bytes(np.asarray(op.customOptions, np.uint8)) if op.customOptions is not None else b""
        options = _decode_options(kind, raw_options, where)
        version, bits, bias_bytes, bias_shift, scale_exponent = (options.pop(key) for key in (
            "version", "weight_bits", "bias_bytes", "bias_shift", "scale_exponent"))
        shape = options["filter_shape"]
        channels = _channels(kind, shape)
        weight_bytes, param_bytes = blob_sizes(kind, raw_options)
        blob = bytes(tflite_model.tensor_array(model, int(op.inputs[1])))
        if len(blob) != weight_bytes + param_bytes:
            raise ExportError(f"{where}: blob of {len(blob)} bytes, expected {param_bytes} of parameters and "
                              f"{weight_bytes} of weights")
        codes = unpack_codes(blob[param_bytes:], bits, int(np.prod(shape)))
        codes = codes.reshape(shape[:2] if kind == "FULLY_CONNECTED" else shape)
        if version == 1:
            bias_start, bias_end = 4 * channels, (4 + bias_bytes) * channels
            multiplier = np.frombuffer(blob[:bias_start], "<i4").astype(np.int32)
            shift = np.frombuffer(blob[bias_end:param_bytes], np.int8).copy()
        else:
            bias_start, bias_end = 0, bias_bytes * channels
            scale_code = np.frombuffer(blob[bias_end:param_bytes], np.uint8).astype(np.int64)
            multiplier, shift = _multipliers(model, int(op.inputs[0]), int(op.outputs[0]),
                                             grid_scales(scale_code, scale_exponent))
        bias = np.frombuffer(blob[bias_start:bias_end], f"<i{bias_bytes}").astype(np.int64)
        if version == 2:
            bias = bias * bias_quantum(scale_code, bias_shift)
        layers.append(PackedLayer(index, kind, bits, codes, multiplier, bias.astype(np.int32), shift, options))
    return layers

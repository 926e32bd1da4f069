"""The packed model: b-bit weights and compact per-channel parameters in QGT custom ops (docs/FORMAT.md).

:func:`pack_model` turns an int8 .tflite (from :mod:`tflm_export.convert`) into the packed variant: every
CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED op becomes the custom op QGT_CONV_2D,
QGT_DEPTHWISE_CONV_2D or QGT_FULLY_CONNECTED with one constant input, a blob of per-channel parameters
(int32 multiplier, bias, shift) followed by the bit-packed codes. The float scales and int64 zero points of
weight and bias tensors are dropped, and with them the bias tensors. :func:`unpack_model` is the decoder;
:func:`expected_layers` computes what it must return from the int8 model, so a round trip can be checked.
docs/FORMAT.md is the specification; keep the two in step.
"""

import dataclasses
import math
import struct

import numpy as np
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

from tflm_export import convert, tflite_model
from tflm_export.tflite_model import ExportError

FORMAT_VERSION = 1
CUSTOM_CODES = {"CONV_2D": "QGT_CONV_2D", "DEPTHWISE_CONV_2D": "QGT_DEPTHWISE_CONV_2D",
                "FULLY_CONNECTED": "QGT_FULLY_CONNECTED"}
BUILTIN_OF_CUSTOM = {custom: builtin for builtin, custom in CUSTOM_CODES.items()}
STORAGE_WIDTHS = (1, 2, 4, 8)
# version, weight_bits, bias_bytes, activation, padding, flags, stride w/h, dilation w/h, depth multiplier,
# filter shape (4 dims, TFLite layout). Little-endian, 24 bytes.
OPTIONS_FORMAT = "<6B5H4H"
OPTIONS_BYTES = struct.calcsize(OPTIONS_FORMAT)
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


def expected_layers(int8_tflite):
    """The :class:`PackedLayer` of every weight op of an int8 model (what the packed model must hold)."""
    model = tflite_model.read(int8_tflite)
    layers = []
    for op in convert.weight_ops(model):
        codes = tflite_model.tensor_array(model, op.weights)
        if codes.dtype != np.int8:
            raise ExportError(f"weight tensor {tflite_model.tensor_name(model, op.weights)!r} is not int8")
        channels = codes.shape[convert._channel_axis(op)]
        weight_scales = np.broadcast_to(convert._scales(model, op.weights)[0].astype(np.float32), (channels,))
        input_scale = float(np.float32(convert._scales(model, op.input)[0][0]))
        output_scale = float(np.float32(convert._scales(model, op.output)[0][0]))
        pairs = [quantize_multiplier(input_scale * float(s) / output_scale) for s in weight_scales]
        bias = (tflite_model.tensor_array(model, op.bias).astype(np.int32) if op.bias >= 0
                else np.zeros(channels, np.int32))
        layers.append(PackedLayer(
            op.op_index, op.kind, storage_bits(codes), codes,
            np.array([m for m, _ in pairs], np.int32), bias, np.array([s for _, s in pairs], np.int8),
            _options(model, op, op.kind, codes)))
    return layers


def _encode_options(layer, bias_bytes):
    o = layer.options
    return struct.pack(OPTIONS_FORMAT, FORMAT_VERSION, layer.weight_bits, bias_bytes, o["activation"],
                       o["padding"], _FLAG_KEEP_NUM_DIMS if o["keep_num_dims"] else 0, o["stride_w"],
                       o["stride_h"], o["dilation_w"], o["dilation_h"], o["depth_multiplier"],
                       *o["filter_shape"])


def _encode_blob(layer, bias_bytes):
    """multiplier int32[C] | bias int<bias_bytes>[C] | shift int8[C] | packed weights (docs/FORMAT.md)."""
    bias = layer.bias.astype({1: "<i1", 2: "<i2", 4: "<i4"}[bias_bytes])
    return (layer.multiplier.astype("<i4").tobytes() + bias.tobytes() + layer.shift.astype(np.int8).tobytes()
            + pack_codes(layer.codes, layer.weight_bits))


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


def pack_model(int8_tflite, strip=True):
    """The packed variant of an int8 .tflite (bytes); see docs/FORMAT.md.

    ``strip`` drops tensor names, signature definitions, shape signatures and float min/max ranges,
    which TFLite-Micro never reads.
    """
    model = tflite_model.read(int8_tflite)
    tflite_model.check_tflm_ops(model)
    for layer, op in zip(expected_layers(int8_tflite), convert.weight_ops(model)):
        for tensor in (op.weights, op.bias):
            if tensor >= 0 and tflite_model.consumers(model, tensor) != [op.op_index]:
                raise ExportError(f"tensor {tflite_model.tensor_name(model, tensor)!r} is shared by several "
                                  "ops; the packed format needs one weight and bias tensor per op")
        bias_bytes = _bias_bytes(layer.bias)
        _store_bytes(model, op.weights, _encode_blob(layer, bias_bytes))
        operator = model.subgraphs[0].operators[op.op_index]
        operator.opcodeIndex = _opcode_index(model, CUSTOM_CODES[op.kind])
        operator.inputs = [op.input, op.weights]  # the bias tensor is left unused and dropped below
        operator.builtinOptionsType = schema.BuiltinOptions.NONE
        operator.builtinOptions = None
        operator.customOptions = np.frombuffer(_encode_options(layer, bias_bytes), np.uint8).copy()
        operator.customOptionsFormat = schema.CustomOptionsFormat.FLEXBUFFERS  # the schema's only value
    _drop_unused_opcodes(model)
    _drop_unused_tensors_and_buffers(model)
    if strip:
        _strip_for_firmware(model)
    return tflite_model.write(model)


def _decode_options(kind, options, where):
    """The custom options block as a dict (see docs/FORMAT.md), with the filter shape of ``kind``."""
    if len(options) != OPTIONS_BYTES:
        raise ExportError(f"{where}: custom options of {len(options)} bytes, expected {OPTIONS_BYTES}")
    (version, bits, bias_bytes, activation, padding, flags, stride_w, stride_h, dilation_w, dilation_h,
     depth_multiplier, *shape) = struct.unpack(OPTIONS_FORMAT, options)
    if version != FORMAT_VERSION or bits not in STORAGE_WIDTHS or bias_bytes not in (1, 2, 4):
        raise ExportError(f"{where}: unsupported version {version}, bits {bits} or bias width {bias_bytes}")
    return {"weight_bits": bits, "bias_bytes": bias_bytes, "activation": activation, "padding": padding,
            "keep_num_dims": bool(flags & _FLAG_KEEP_NUM_DIMS), "stride_w": stride_w, "stride_h": stride_h,
            "dilation_w": dilation_w, "dilation_h": dilation_h, "depth_multiplier": depth_multiplier,
            "filter_shape": shape[:2] + [1, 1] if kind == "FULLY_CONNECTED" else shape}


def blob_sizes(kind, options):
    """(weight bytes, parameter bytes) of a QGT op's blob, from its custom options bytes."""
    decoded = _decode_options(kind, options, kind)
    shape = decoded["filter_shape"]
    channels = shape[3] if kind == "DEPTHWISE_CONV_2D" else shape[0]
    return (math.ceil(int(np.prod(shape)) * decoded["weight_bits"] / 8),
            channels * (5 + decoded["bias_bytes"]))


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
        bits, bias_bytes = options.pop("weight_bits"), options.pop("bias_bytes")
        shape = options["filter_shape"]
        channels = shape[3] if kind == "DEPTHWISE_CONV_2D" else shape[0]
        weight_bytes, param_bytes = blob_sizes(kind, raw_options)
        blob = bytes(tflite_model.tensor_array(model, int(op.inputs[1])))
        if len(blob) != weight_bytes + param_bytes:
            raise ExportError(f"{where}: blob of {len(blob)} bytes, expected {param_bytes} of parameters and "
                              f"{weight_bytes} of weights")
        bias_end = (4 + bias_bytes) * channels
        codes = unpack_codes(blob[param_bytes:], bits, int(np.prod(shape)))
        layers.append(PackedLayer(
            index, kind, bits, codes.reshape(shape[:2] if kind == "FULLY_CONNECTED" else shape),
            np.frombuffer(blob[:4 * channels], "<i4").astype(np.int32),
            np.frombuffer(blob[4 * channels:bias_end], f"<i{bias_bytes}").astype(np.int32),
            np.frombuffer(blob[bias_end:param_bytes], np.int8).copy(), options))
    return layers

"""The packed model: b-bit weights and compact per-channel parameters in QGT custom ops (docs/FORMAT.md).

:func:`pack_model` turns an int8 .tflite (from :mod:`tflm_export.convert`, with its parameters on the
format's grids: :func:`round_parameters`) into the packed variant, format version 3: every CONV_2D,
DEPTHWISE_CONV_2D and FULLY_CONNECTED op becomes the custom op QGT_CONV_2D, QGT_DEPTHWISE_CONV_2D or
QGT_FULLY_CONNECTED with one constant input, a blob of the bit-packed codes in word-padded rows
(:mod:`tflm_export.bitpack`) followed by per channel a bias of 1 byte where it can
(:mod:`tflm_export.parameters`) and a 1-byte code of the weight scale on a fixed log grid
(:mod:`tflm_export.requant`). The float scales and int64 zero points of weight and bias tensors are dropped,
and with them the bias tensors. :func:`unpack_model` is the decoder (it derives multipliers as a kernel
does, with integers only); :func:`expected_layers` computes what it must return from the int8 model (with
TFLite-Micro's double-precision arithmetic), so a round trip can be checked. docs/FORMAT.md is the
specification; keep the two in step.
"""

import dataclasses
import struct

import numpy as np
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

from tflm_export import bitpack, convert, requant, tflite_model
from tflm_export.parameters import BIAS_WIDTHS, MAX_BIAS_SHIFT, bias_encoding, bias_quantum, round_parameters
from tflm_export.tflite_model import ExportError

__all__ = ["FORMAT_VERSION", "CUSTOM_CODES", "BUILTIN_OF_CUSTOM", "OPTIONS_BYTES", "PackedLayer", "pack_model",
           "unpack_model", "expected_layers", "encode_layer", "blob_sizes", "weight_rows", "round_parameters"]

FORMAT_VERSION = 3
CUSTOM_CODES = {"CONV_2D": "QGT_CONV_2D", "DEPTHWISE_CONV_2D": "QGT_DEPTHWISE_CONV_2D",
                "FULLY_CONNECTED": "QGT_FULLY_CONNECTED"}
BUILTIN_OF_CUSTOM = {custom: builtin for builtin, custom in CUSTOM_CODES.items()}
# version, weight_bits, bias_bytes, activation, padding, flags, bias_shift, scale_exponent, stride w/h,
# dilation w/h, depth multiplier, filter shape (4 dims, TFLite layout). Little-endian, unaligned.
OPTIONS_FORMAT = "<6BBb5B4H"
OPTIONS_BYTES = struct.calcsize(OPTIONS_FORMAT)
FLAG_KEEP_NUM_DIMS = 1
FLAG_WORD_ROWS = 2  # version 3: rows padded to whole 32-bit words; set in every op
KNOWN_FLAGS = FLAG_KEEP_NUM_DIMS | FLAG_WORD_ROWS
_UINT8_MAX, _UINT16_MAX = 0xFF, 0xFFFF


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


def weight_rows(kind, shape):
    """(rows, codes per row) of a filter shape in TFLite layout: one row per output channel of a conv or fully
    connected layer ([out, kh, kw, in], [out, in, 1, 1]); a depthwise filter [1, kh, kw, C] is one row."""
    shape = [int(d) for d in shape]
    if kind == "DEPTHWISE_CONV_2D":
        return 1, int(np.prod(shape))
    return shape[0], int(np.prod(shape[1:]))


def _channels(kind, shape):
    return shape[3] if kind == "DEPTHWISE_CONV_2D" else shape[0]


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


def _weight_scales(model, op, channels):
    return np.broadcast_to(convert._scales(model, op.weights)[0].astype(np.float32), (channels,))


def _activation_scales(model, op):
    return (np.float32(convert._scales(model, op.input)[0][0]), np.float32(convert._scales(model, op.output)[0][0]))


def expected_layers(int8_tflite):
    """The :class:`PackedLayer` of every weight op of an int8 model (what the packed model must hold), with
    multipliers computed as TFLite-Micro's Prepare does (in double precision)."""
    model = tflite_model.read(int8_tflite)
    layers = []
    for op in convert.weight_ops(model):
        codes = tflite_model.tensor_array(model, op.weights)
        if codes.dtype != np.int8:
            raise ExportError(f"weight tensor {tflite_model.tensor_name(model, op.weights)!r} is not int8")
        channels = codes.shape[convert._channel_axis(op)]
        input_scale, output_scale = _activation_scales(model, op)
        pairs = [requant.quantize_multiplier(float(input_scale) * float(s) / float(output_scale))
                 for s in _weight_scales(model, op, channels)]
        multiplier, shift = np.array([m for m, _ in pairs], np.int32), np.array([s for _, s in pairs], np.int8)
        bias = (tflite_model.tensor_array(model, op.bias).astype(np.int32) if op.bias >= 0
                else np.zeros(channels, np.int32))
        layers.append(PackedLayer(op.op_index, op.kind, bitpack.storage_bits(codes), codes, multiplier, bias,
                                  shift, _options(model, op, op.kind, codes)))
    return layers


@dataclasses.dataclass
class _Encoding:
    """How a layer's parameters are stored."""
    bias_bytes: int
    bias_shift: int
    scale_exponent: int
    scale_codes: np.ndarray


def _scale_grid(model, op, layer):
    """(scale_exponent, scale codes) of ``layer`` (of ``op`` in ``model``); raises ExportError when the grid
    cannot hold its weight scales exactly."""
    scales = _weight_scales(model, op, len(layer.bias))
    exponent, codes = requant.scale_codes(scales)
    name = tflite_model.tensor_name(model, op.weights)
    if not requant.SCALE_EXPONENT_MIN <= exponent <= requant.SCALE_EXPONENT_MAX:
        raise ExportError(f"weight scales of {name!r} ({scales.min():g} .. {scales.max():g}) leave the normal "
                          f"float32 range the format's scale_exponent covers")
    if not np.array_equal(requant.grid_scales(codes, exponent), scales):
        raise ExportError(f"weight scales of {name!r} are not on the packed format's log grid: apply "
                          "pack.round_parameters to the int8 model")
    return exponent, codes


def encode_layer(layer, scale_exponent, scale_codes):
    """(custom options, blob) of a :class:`PackedLayer` whose weight scales are the grid scales of
    ``scale_codes`` (0..255) and ``scale_exponent``; its biases are stored in the narrowest exact width."""
    if not requant.SCALE_EXPONENT_MIN <= scale_exponent <= requant.SCALE_EXPONENT_MAX:
        raise ExportError(f"op {layer.op_index}: scale_exponent {scale_exponent} outside "
                          f"[{requant.SCALE_EXPONENT_MIN}, {requant.SCALE_EXPONENT_MAX}]")
    scale_codes = np.asarray(scale_codes, np.int64)
    encoding = _Encoding(*bias_encoding(layer.bias, scale_codes), scale_exponent, scale_codes)
    return _encode_options(layer, encoding), _encode_blob(layer, encoding)


def _encode_options(layer, encoding):
    o = layer.options
    small = [o[key] for key in ("stride_w", "stride_h", "dilation_w", "dilation_h", "depth_multiplier")]
    if max(small) > _UINT8_MAX:
        raise ExportError(f"op {layer.op_index}: strides, dilations and depth multiplier {small} exceed the 255 "
                          "the format holds")
    flags = FLAG_WORD_ROWS | (FLAG_KEEP_NUM_DIMS if o["keep_num_dims"] else 0)
    return struct.pack(OPTIONS_FORMAT, FORMAT_VERSION, layer.weight_bits, encoding.bias_bytes, o["activation"],
                       o["padding"], flags, encoding.bias_shift, encoding.scale_exponent, *small, *o["filter_shape"])


def _encode_blob(layer, encoding):
    """Packed weight rows | bias int<bias_bytes>[C] | scale code uint8[C] (docs/FORMAT.md)."""
    rows, length = weight_rows(layer.kind, layer.options["filter_shape"])
    weights = bitpack.pack_rows(layer.codes.reshape(rows, length), layer.weight_bits)
    stored_bias = layer.bias.astype(np.int64) // bias_quantum(encoding.scale_codes, encoding.bias_shift)
    return (weights + stored_bias.astype(f"<i{encoding.bias_bytes}").tobytes()
            + encoding.scale_codes.astype(np.uint8).tobytes())


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
    """The packed variant (format version 3) of an int8 .tflite (bytes); see docs/FORMAT.md.

    Needs weight scales on the format's log grid (:func:`round_parameters`). ``strip`` drops tensor names,
    signature definitions, shape signatures and float min/max ranges, which TFLite-Micro never reads.
    """
    model = tflite_model.read(int8_tflite)
    tflite_model.check_tflm_ops(model)
    for layer, op in zip(expected_layers(int8_tflite), convert.weight_ops(model)):
        for tensor in (op.weights, op.bias):
            if tensor >= 0 and tflite_model.consumers(model, tensor) != [op.op_index]:
                raise ExportError(f"tensor {tflite_model.tensor_name(model, tensor)!r} is shared by several "
                                  "ops; the packed format needs one weight and bias tensor per op")
        options, blob = encode_layer(layer, *_scale_grid(model, op, layer))
        _store_bytes(model, op.weights, blob)
        operator = model.subgraphs[0].operators[op.op_index]
        operator.opcodeIndex = _opcode_index(model, CUSTOM_CODES[op.kind])
        operator.inputs = [op.input, op.weights]  # the bias tensor is left unused and dropped below
        operator.builtinOptionsType = schema.BuiltinOptions.NONE
        operator.builtinOptions = None
        operator.customOptions = np.frombuffer(options, np.uint8).copy()
        operator.customOptionsFormat = schema.CustomOptionsFormat.FLEXBUFFERS  # the schema's only value
    _drop_unused_opcodes(model)
    _drop_unused_tensors_and_buffers(model)
    if strip:
        _strip_for_firmware(model)
    return tflite_model.write(model)


def _decode_options(kind, options, where):
    """The custom options block as a dict (see docs/FORMAT.md), with the filter shape of ``kind``."""
    version = options[0] if options else None
    if version in (1, 2):
        raise ExportError(f"{where}: packed format version {version} is no longer supported (kernels read "
                          f"version {FORMAT_VERSION} only); re-export with qgt-export")
    if version != FORMAT_VERSION or len(options) != OPTIONS_BYTES:
        raise ExportError(f"{where}: custom options of {len(options)} bytes with format version {version}; "
                          f"expected version {FORMAT_VERSION} in {OPTIONS_BYTES} bytes")
    (version, bits, bias_bytes, activation, padding, flags, bias_shift, scale_exponent, stride_w, stride_h,
     dilation_w, dilation_h, depth_multiplier, *shape) = struct.unpack(OPTIONS_FORMAT, options)
    if flags & ~KNOWN_FLAGS or not flags & FLAG_WORD_ROWS:
        raise ExportError(f"{where}: flags 0x{flags:02x}: unknown bits, or the word-aligned-rows bit (0x02) "
                          "missing")
    if bits not in bitpack.STORAGE_WIDTHS or bias_bytes not in BIAS_WIDTHS or bias_shift > MAX_BIAS_SHIFT:
        raise ExportError(f"{where}: unsupported weight bits {bits}, bias width {bias_bytes} or bias shift "
                          f"{bias_shift}")
    return {"weight_bits": bits, "bias_bytes": bias_bytes, "bias_shift": bias_shift,
            "scale_exponent": scale_exponent, "activation": activation, "padding": padding,
            "keep_num_dims": bool(flags & FLAG_KEEP_NUM_DIMS), "stride_w": stride_w, "stride_h": stride_h,
            "dilation_w": dilation_w, "dilation_h": dilation_h, "depth_multiplier": depth_multiplier,
            "filter_shape": shape[:2] + [1, 1] if kind == "FULLY_CONNECTED" else shape}


def blob_sizes(kind, options):
    """(weight bytes, parameter bytes) of a QGT op's blob, from its custom options bytes."""
    decoded = _decode_options(kind, options, kind)
    shape = decoded["filter_shape"]
    rows, length = weight_rows(kind, shape)
    return rows * bitpack.row_bytes(length, decoded["weight_bits"]), _channels(kind, shape) * (decoded["bias_bytes"] + 1)


def unpack_model(packed_tflite):
    """Decodes every QGT op of a packed model back into :class:`PackedLayer` objects; multipliers and shifts
    come from the scale codes and the activation scales, integer-only (:func:`requant.layer_multipliers`)."""
    model = tflite_model.read(packed_tflite)
    layers = []
    for index, op in enumerate(model.subgraphs[0].operators):
        kind = BUILTIN_OF_CUSTOM.get(tflite_model.op_name(model, op))
        if kind is None:
            continue
        where = f"op {index} ({kind})"
        raw_options = bytes(np.asarray(op.customOptions, np.uint8)) if op.customOptions is not None else b""
        options = _decode_options(kind, raw_options, where)
        bits, bias_bytes, bias_shift, scale_exponent = (options.pop(key) for key in (
            "weight_bits", "bias_bytes", "bias_shift", "scale_exponent"))
        shape = options["filter_shape"]
        channels = _channels(kind, shape)
        weight_bytes, param_bytes = blob_sizes(kind, raw_options)
        blob = bytes(tflite_model.tensor_array(model, int(op.inputs[1])))
        if len(blob) != weight_bytes + param_bytes:
            raise ExportError(f"{where}: blob of {len(blob)} bytes, expected {weight_bytes} of weights and "
                              f"{param_bytes} of parameters")
        rows, length = weight_rows(kind, shape)
        codes = bitpack.unpack_rows(blob[:weight_bytes], bits, rows, length)
        codes = codes.reshape(shape[:2] if kind == "FULLY_CONNECTED" else shape)
        bias_end = weight_bytes + bias_bytes * channels
        scale_code = np.frombuffer(blob[bias_end:], np.uint8).astype(np.int64)
        stored_bias = np.frombuffer(blob[weight_bytes:bias_end], f"<i{bias_bytes}").astype(np.int64)
        input_scale, output_scale = (np.float32(model.subgraphs[0].tensors[int(t)].quantization.scale[0])
                                     for t in (op.inputs[0], op.outputs[0]))
        multiplier, shift = requant.layer_multipliers(input_scale, output_scale, scale_code, scale_exponent)
        bias = stored_bias * bias_quantum(scale_code, bias_shift)
        layers.append(PackedLayer(index, kind, bits, codes, multiplier, bias.astype(np.int32), shift, options))
    return layers

"""Reading, inspecting and writing .tflite flatbuffers through the TFLite schema's object API.

Every edit in this package goes through ``schema_py_generated`` (the TFLite schema compiled for Python,
shipped in the tflite-micro wheel): a model is unpacked into ``ModelT`` objects, edited as Python objects
and packed again. Buffers are then re-aligned by tflite-micro's C++ alignment tool, because the Python
flatbuffers builder ignores the schema's ``force_align: 16`` on buffer data.
"""

import dataclasses
import os
import tempfile

import flatbuffers
import numpy as np
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema
from tflite_micro.tensorflow.lite.micro.tools import tflite_flatbuffer_align_wrapper

FILE_IDENTIFIER = b"TFL3"
_MAX_TENSOR_ELEMENTS = 2 ** 31  # a flatbuffer is at most 2 GiB; no tensor of a TFLite-Micro model comes near
WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
SCHEMA_VERSION = 3

BUILTIN_NAMES = {code: name for name, code in vars(schema.BuiltinOperator).items()
                 if not name.startswith("_")}
_WEIGHT_OP_OPTIONS = {"CONV_2D": schema.BuiltinOptions.Conv2DOptions,
                      "DEPTHWISE_CONV_2D": schema.BuiltinOptions.DepthwiseConv2DOptions,
                      "FULLY_CONNECTED": schema.BuiltinOptions.FullyConnectedOptions}
_WEIGHT_RANKS = {"CONV_2D": 4, "DEPTHWISE_CONV_2D": 4, "FULLY_CONNECTED": 2}
_TENSOR_DTYPES = {
    schema.TensorType.FLOAT32: np.float32, schema.TensorType.INT32: np.int32,
    schema.TensorType.UINT8: np.uint8, schema.TensorType.INT64: np.int64,
    schema.TensorType.INT16: np.int16, schema.TensorType.INT8: np.int8,
}

# Ops with a kernel in TFLite-Micro's MicroMutableOpResolver, by builtin name: the resolver method that adds
# each (used for the generated C sources). Ops outside this table are refused, since firmware cannot run them.
TFLM_RESOLVER_METHODS = {
    "ADD": "AddAdd", "AVERAGE_POOL_2D": "AddAveragePool2D", "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd",
    "CONCATENATION": "AddConcatenation",
    "CONV_2D": "AddConv2D", "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D", "DEQUANTIZE": "AddDequantize",
    "FULLY_CONNECTED": "AddFullyConnected", "HARD_SWISH": "AddHardSwish", "LEAKY_RELU": "AddLeakyRelu",
    "LOGISTIC": "AddLogistic", "MAX_POOL_2D": "AddMaxPool2D", "MEAN": "AddMean", "MUL": "AddMul",
    "PAD": "AddPad", "PADV2": "AddPadV2", "QUANTIZE": "AddQuantize", "RELU": "AddRelu", "RELU6": "AddRelu6",
    "RESHAPE": "AddReshape", "SHAPE": "AddShape", "SOFTMAX": "AddSoftmax", "SPACE_TO_BATCH_ND": "AddSpaceToBatchNd",
    "SQUEEZE": "AddSqueeze",
    "STRIDED_SLICE": "AddStridedSlice", "SUB": "AddSub", "TANH": "AddTanh", "TRANSPOSE": "AddTranspose",
}


class ExportError(ValueError):
    """A model the exporter cannot handle; the message says which part and why."""


class CorruptModelError(ExportError):
    """The bytes are not a readable .tflite flatbuffer."""


class UnsupportedOpsError(ExportError):
    """The model holds ops the target cannot run; ``ops`` lists them."""

    def __init__(self, ops, what="TFLite-Micro"):
        self.ops = sorted(set(ops))
        super().__init__(f"ops not supported by {what}: {', '.join(self.ops)}")


def read(data):
    """Unpacks .tflite bytes into a ``schema.ModelT``; raises CorruptModelError when they are not a model."""
    data = bytes(data)
    if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:
        raise CorruptModelError(
            f"not a .tflite flatbuffer: {len(data)} bytes without the {FILE_IDENTIFIER!r} identifier")
    try:
        model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    except Exception as error:  # the generated reader raises whatever a bad offset triggers
        raise CorruptModelError(f"corrupt .tflite flatbuffer: {type(error).__name__}: {error}") from error
    _check_structure(model)
    normalize_operator_codes(model)
    _repair_quantized_dimensions(model)
    _check_contents(model)
    return model


def _check_structure(model):
    """Catches damage the lazy flatbuffer reader lets through (truncated or scrambled tables)."""
    if model.version != SCHEMA_VERSION:
        raise CorruptModelError(f"corrupt .tflite: schema version {model.version}, expected {SCHEMA_VERSION}")
    if not model.subgraphs or not model.buffers or not model.subgraphs[0].operators:
        raise CorruptModelError("corrupt .tflite: no subgraph, no buffer table or no operator in subgraph 0")
    codes = model.operatorCodes or []
    for entry in model.metadata or []:
        if not 0 <= entry.buffer < len(model.buffers):
            raise CorruptModelError(f"corrupt .tflite: metadata points at buffer {entry.buffer} of "
                                    f"{len(model.buffers)}")
    for graph in model.subgraphs:
        tensors = graph.tensors or []
        for tensor in tensors:
            if not 0 <= tensor.buffer < len(model.buffers):
                raise CorruptModelError(f"corrupt .tflite: tensor {_name(tensor)!r} points at buffer "
                                        f"{tensor.buffer} of {len(model.buffers)}")
        for op in graph.operators or []:
            if not 0 <= op.opcodeIndex < len(codes):
                raise CorruptModelError(f"corrupt .tflite: operator code {op.opcodeIndex} of {len(codes)}")
            for index in list(_as_list(op.inputs)) + list(_as_list(op.outputs)):
                if not -1 <= index < len(tensors):
                    raise CorruptModelError(f"corrupt .tflite: operator uses tensor {index} of {len(tensors)}")


def _check_contents(model):
    """Checks what the tables say, so that damage is named here instead of surfacing later as a wrong model
    or a stray exception: texts in UTF-8, known builtin codes, graph and signature tensors that exist,
    non-negative shapes, buffers of the size their tensor's type and shape need, finite positive scales and
    zero points in range."""
    texts = [(model.description, "the model description")]
    texts += [(entry.name, "a metadata name") for entry in model.metadata or []]
    for signature in model.signatureDefs or []:
        texts += [(signature.signatureKey, "a signature key")]
        entries = (signature.inputs or []) + (signature.outputs or [])
        texts += [(entry.name, "a signature tensor name") for entry in entries]
    texts += [(graph.name, "a subgraph name") for graph in model.subgraphs]
    for text, what in texts:
        _decoded(text, what)
    for position, code in enumerate(model.operatorCodes or []):
        if code.builtinCode == schema.BuiltinOperator.CUSTOM:
            _decoded(code.customCode, f"the custom code of operator code {position}")
        elif code.builtinCode not in BUILTIN_NAMES:
            raise CorruptModelError(f"corrupt .tflite: operator code {position} has unknown builtin code "
                                    f"{code.builtinCode}")
    for position, graph in enumerate(model.subgraphs):
        tensors = graph.tensors or []
        graph_io = _as_list(graph.inputs) + _as_list(graph.outputs)
        if any(not 0 <= index < len(tensors) for index in graph_io):
            raise CorruptModelError(f"corrupt .tflite: subgraph {position} has inputs and outputs {graph_io} of "
                                    f"{len(tensors)} tensors")
        for index, tensor in enumerate(tensors):
            _check_tensor(model, index, tensor)
        for index, op in enumerate(graph.operators or []):
            for kind, value, enum in ((op.builtinOptionsType, op.builtinOptions, schema.BuiltinOptions),
                                      (op.builtinOptions2Type, op.builtinOptions2, schema.BuiltinOptions2)):
                if kind not in _enum_values(enum) or (kind != 0) != (value is not None):
                    raise CorruptModelError(f"corrupt .tflite: op {index} of subgraph {position} has options "
                                            f"of type {kind} {'without' if value is None else 'with'} a table")
    weight_ops(model)  # checks their inputs, options and weight ranks
    for signature in model.signatureDefs or []:
        named = [entry.tensorIndex for entry in (signature.inputs or []) + (signature.outputs or [])]
        in_range = 0 <= signature.subgraphIndex < len(model.subgraphs)
        graph = model.subgraphs[signature.subgraphIndex] if in_range else None
        if graph is None or not set(named) <= set(_as_list(graph.inputs) + _as_list(graph.outputs)):
            raise CorruptModelError(f"corrupt .tflite: a signature names tensors {named} of subgraph "
                                    f"{signature.subgraphIndex}, not all inputs or outputs of it")


def _check_tensor(model, index, tensor):
    what = f"tensor {_decoded(tensor.name, f'the name of tensor {index}')!r} (index {index})"
    shape = _as_list(tensor.shape)
    if any(d < 0 for d in shape) or np.prod(shape, dtype=np.float64) > _MAX_TENSOR_ELEMENTS:
        raise CorruptModelError(f"corrupt .tflite: {what} has shape {shape}")
    dtype = _TENSOR_DTYPES.get(tensor.type)
    data = model.buffers[tensor.buffer].data
    if dtype is not None and data is not None:
        needed = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if len(data) != needed:
            raise CorruptModelError(f"corrupt .tflite: {what} has {len(data)} bytes of data, its type "
                                    f"{np.dtype(dtype).name} and shape {shape} need {needed}")
    if tensor.sparsity is not None:
        raise CorruptModelError(f"corrupt .tflite: {what} is sparse, which TFLite-Micro does not support")
    _check_quantization(tensor.quantization, what, dtype, shape)


def _check_quantization(q, what, dtype, shape):
    if q is None:
        return
    if q.detailsType != schema.QuantizationDetails.NONE or q.details is not None:
        raise CorruptModelError(f"corrupt .tflite: {what} has quantization details of type {q.detailsType}, "
                                "which TFLite-Micro does not support")
    if q.scale is None or len(q.scale) == 0:
        return
    scales = np.asarray(q.scale, np.float64)
    if not np.all(np.isfinite(scales) & (scales > 0)):
        raise CorruptModelError(f"corrupt .tflite: {what} has scales that are not finite and positive: "
                                f"{scales[~(np.isfinite(scales) & (scales > 0))][:4].tolist()}")
    zero_points = np.asarray(q.zeroPoint if q.zeroPoint is not None else np.zeros(len(scales)), np.int64)
    if len(zero_points) != len(scales):
        raise CorruptModelError(f"corrupt .tflite: {what} has {len(scales)} scales and {len(zero_points)} zero points")
    if dtype is not None and np.dtype(dtype).kind in "iu":
        limits = np.iinfo(dtype)
        if zero_points.min() < limits.min or zero_points.max() > limits.max:
            raise CorruptModelError(f"corrupt .tflite: {what} has zero points {zero_points.min()}.."
                                    f"{zero_points.max()}, outside its type {np.dtype(dtype).name}")
    # (The channel count need not match: a LUT-compressed tensor keeps its scales on a flat byte array.)
    if len(scales) > 1 and not 0 <= q.quantizedDimension < max(len(shape), 1):
        raise CorruptModelError(f"corrupt .tflite: {what} has {len(scales)} scales along dimension "
                                f"{q.quantizedDimension} of a rank-{len(shape)} tensor")


def _decoded(text, what):
    """``text`` (bytes or str or None) as str; CorruptModelError naming ``what`` when it is not UTF-8."""
    if isinstance(text, bytes):
        try:
            return text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise CorruptModelError(f"corrupt .tflite: {what} is not UTF-8 text ({error.reason} at byte "
                                    f"{error.start})") from error
    return str(text or "")


def _as_list(values):
    return [] if values is None else [int(v) for v in values]


def _name(tensor):
    return _decoded(tensor.name, "a tensor name")


def normalize_operator_codes(model):
    """Sets ``builtinCode`` from the schema-v3 ``deprecatedBuiltinCode`` where only the old field is filled.

    Old models (TFLM's person_detect) carry only the int8 ``deprecated_builtin_code``; tools that read only
    the new field see every op as code 0 (ADD). Writing both fields makes every later reader agree.
    """
    for code in model.operatorCodes or []:
        code.builtinCode = max(code.builtinCode, code.deprecatedBuiltinCode)
        code.deprecatedBuiltinCode = min(code.builtinCode, schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)


def _repair_quantized_dimensions(model):
    """Points per-channel quantization of rank-1 tensors at axis 0.

    TFLM's person_detect stores depthwise biases with quantized_dimension 3 (copied from the weights);
    TFLite-Micro ignores it, tf.lite.Interpreter refuses the model.
    """
    for tensor in model.subgraphs[0].tensors or []:
        q = tensor.quantization
        if q is not None and q.scale is not None and len(_as_list(tensor.shape)) == 1:
            q.quantizedDimension = 0


def write(model):
    """Packs a ``schema.ModelT`` into aligned .tflite bytes (deterministic for the same model).

    The model is checked as :func:`read` checks one first: the C++ alignment tool crashes the process on
    some damage (an options or quantization-details type without its table).
    """
    _check_structure(model)
    _check_contents(model)
    return _align(pack_unaligned(model))


def pack_unaligned(model):
    """The flatbuffer bytes of a ``schema.ModelT`` as Python's builder packs them: not aligned, not checked."""
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def _align(data):
    # The C++ tool works on files only.
    with tempfile.TemporaryDirectory() as folder:
        unaligned, aligned = os.path.join(folder, "in.tflite"), os.path.join(folder, "out.tflite")
        with open(unaligned, "wb") as f:
            f.write(data)
        tflite_flatbuffer_align_wrapper.align_tflite_model(unaligned, aligned)
        with open(aligned, "rb") as f:
            return f.read()


def op_name(model, op):
    """Builtin name of ``op`` ("CONV_2D"), or the custom code of a custom op."""
    code = model.operatorCodes[op.opcodeIndex]
    if code.builtinCode == schema.BuiltinOperator.CUSTOM:
        return _decoded(code.customCode, "a custom code")
    return BUILTIN_NAMES.get(code.builtinCode, f"BUILTIN_{code.builtinCode}")


def op_names(model):
    """Names of the ops of subgraph 0 in execution order."""
    return [op_name(model, op) for op in model.subgraphs[0].operators or []]


def check_tflm_ops(model):
    """Raises UnsupportedOpsError listing every op with no TFLite-Micro kernel (or several subgraphs)."""
    if len(model.subgraphs) != 1:
        raise UnsupportedOpsError([f"{len(model.subgraphs)} subgraphs (control flow)"])
    unsupported = [name for name in op_names(model) if name not in TFLM_RESOLVER_METHODS]
    if unsupported:
        raise UnsupportedOpsError(unsupported)


def tensor_name(model, index):
    return _name(model.subgraphs[0].tensors[index])


def tensor_array(model, index):
    """The constant data of tensor ``index`` of subgraph 0 as a numpy array of its type and shape."""
    tensor = model.subgraphs[0].tensors[index]
    dtype = _TENSOR_DTYPES.get(tensor.type)
    if dtype is None:
        raise ExportError(f"tensor {_name(tensor)!r} has unsupported type {tensor.type}")
    data = model.buffers[tensor.buffer].data
    if data is None:
        raise ExportError(f"tensor {_name(tensor)!r} holds no constant data")
    raw = np.asarray(data, dtype=np.uint8).tobytes()  # its size matches the shape (read checks it)
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(_as_list(tensor.shape))


def set_tensor_data(model, index, array):
    """Stores ``array``'s little-endian bytes as the data of tensor ``index``, in a buffer of its own."""
    tensor = model.subgraphs[0].tensors[index]
    raw = np.ascontiguousarray(array).astype(np.asarray(array).dtype.newbyteorder("<")).tobytes()
    shared = sum(t.buffer == tensor.buffer for t in model.subgraphs[0].tensors) > 1
    if shared or tensor.buffer == 0:
        model.buffers.append(schema.BufferT())
        tensor.buffer = len(model.buffers) - 1
    model.buffers[tensor.buffer].data = np.frombuffer(raw, dtype=np.uint8).copy()


def tensor_scales(model, index):
    """(float64 scales, quantized dimension) of tensor ``index`` of subgraph 0; ExportError if it has none."""
    q = model.subgraphs[0].tensors[index].quantization
    if q is None or q.scale is None or len(q.scale) == 0:
        raise ExportError(f"tensor {tensor_name(model, index)!r} is not quantized")
    return np.asarray(q.scale, np.float64), int(q.quantizedDimension)


@dataclasses.dataclass(frozen=True)
class WeightOp:
    """A conv / depthwise / fully connected op of subgraph 0 and the tensors it reads and writes."""
    op_index: int
    kind: str
    input: int
    weights: int
    bias: int  # -1 when the op has no bias
    output: int


def weight_ops(model):
    """The :class:`WeightOp` of every op in :data:`WEIGHT_OPS`, in execution order."""
    found = []
    for index, op in enumerate(model.subgraphs[0].operators or []):
        kind = op_name(model, op)
        if kind in WEIGHT_OPS:
            inputs, outputs = _as_list(op.inputs), _as_list(op.outputs)
            if len(inputs) < 2 or min(inputs[:2]) < 0 or len(outputs) != 1 or outputs[0] < 0:
                raise CorruptModelError(f"corrupt .tflite: op {index} ({kind}) has inputs {inputs} and outputs "
                                        f"{outputs}; it needs an input, weights, an optional bias and one output")
            _check_weight_op_options(index, kind, op)
            rank = len(_as_list(model.subgraphs[0].tensors[inputs[1]].shape))
            if rank != _WEIGHT_RANKS[kind]:
                raise CorruptModelError(f"corrupt .tflite: op {index} ({kind}) has rank-{rank} weights, expected "
                                        f"rank {_WEIGHT_RANKS[kind]}")
            found.append(WeightOp(index, kind, inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else -1,
                                  int(op.outputs[0])))
    return found


def _check_weight_op_options(index, kind, op):
    where = f"corrupt .tflite: op {index} ({kind})"
    options = op.builtinOptions
    if op.builtinOptionsType != _WEIGHT_OP_OPTIONS[kind] or options is None:
        raise CorruptModelError(f"{where} has options of type {op.builtinOptionsType}, expected "
                                f"{_WEIGHT_OP_OPTIONS[kind]}")
    if options.fusedActivationFunction not in _enum_values(schema.ActivationFunctionType):
        raise CorruptModelError(f"{where} has unknown fused activation {options.fusedActivationFunction}")
    if kind == "FULLY_CONNECTED":
        return
    if options.padding not in _enum_values(schema.Padding):
        raise CorruptModelError(f"{where} has unknown padding {options.padding}")
    steps = [options.strideW, options.strideH, options.dilationWFactor, options.dilationHFactor]
    if min(steps) < 1:
        raise CorruptModelError(f"{where} has strides and dilations {steps}; each must be at least 1")
    if kind == "DEPTHWISE_CONV_2D" and options.depthMultiplier < 0:
        raise CorruptModelError(f"{where} has depth multiplier {options.depthMultiplier}")


def _enum_values(enum):
    return {value for name, value in vars(enum).items() if not name.startswith("_")}


def channel_axis(kind):
    """The output-channel axis of a TFLite weight tensor of op ``kind``: depthwise (1, kh, kw, channels)
    keeps its channels last, conv (out, kh, kw, in) and fully connected (out, in) first."""
    return 3 if kind == "DEPTHWISE_CONV_2D" else 0


def channels_last(w, axis):
    """(elements, channels) view of a TFLite weight array with output channels on ``axis``."""
    return np.moveaxis(w, axis, -1).reshape(-1, w.shape[axis])


def from_channels_last(w2d, shape, axis):
    """Inverse of :func:`channels_last`: the (elements, channels) array back in ``shape``."""
    moved = list(shape[:axis]) + list(shape[axis + 1:]) + [shape[axis]]
    return np.moveaxis(w2d.reshape(moved), -1, axis)


def consumers(model, tensor_index):
    """Indices of the subgraph-0 ops that read tensor ``tensor_index``."""
    return [k for k, op in enumerate(model.subgraphs[0].operators or []) if tensor_index in _as_list(op.inputs)]


def io_details(model):
    """Shape, type and (scale, zero point) of the model's inputs and outputs, as plain Python values."""
    graph = model.subgraphs[0]

    def describe(index):
        tensor = graph.tensors[index]
        q = tensor.quantization
        has_q = q is not None and q.scale is not None and len(q.scale) == 1
        return {"name": _name(tensor), "shape": _as_list(tensor.shape),
                "dtype": np.dtype(_TENSOR_DTYPES.get(tensor.type, np.uint8)).name,
                "scale": float(q.scale[0]) if has_q else None,
                "zero_point": int(q.zeroPoint[0]) if has_q else None}

    return {"inputs": [describe(i) for i in _as_list(graph.inputs)],
            "outputs": [describe(i) for i in _as_list(graph.outputs)]}

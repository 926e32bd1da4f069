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
WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
SCHEMA_VERSION = 3

BUILTIN_NAMES = {code: name for name, code in vars(schema.BuiltinOperator).items()
                 if not name.startswith("_")}
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
    return model


def _check_structure(model):
    """Catches damage the lazy flatbuffer reader lets through (truncated or scrambled tables)."""
    if model.version != SCHEMA_VERSION:
        raise CorruptModelError(f"corrupt .tflite: schema version {model.version}, expected {SCHEMA_VERSION}")
    if not model.subgraphs or not model.buffers:
        raise CorruptModelError("corrupt .tflite: no subgraph or no buffer table")
    codes = model.operatorCodes or []
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


def _as_list(values):
    return [] if values is None else [int(v) for v in values]


def _name(tensor):
    return tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name or "")


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
    """Packs a ``schema.ModelT`` into aligned .tflite bytes (deterministic for the same model)."""
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return _align(bytes(builder.Output()))


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
        return code.customCode.decode() if isinstance(code.customCode, bytes) else str(code.customCode)
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
    shape = _as_list(tensor.shape)
    raw = np.asarray(data, dtype=np.uint8).tobytes()
    if len(raw) != int(np.prod(shape)) * np.dtype(dtype).itemsize:
        raise CorruptModelError(f"corrupt .tflite: tensor {_name(tensor)!r} has {len(raw)} bytes for shape {shape}")
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(shape)


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
            inputs = _as_list(op.inputs)
            found.append(WeightOp(index, kind, inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else -1,
                                  int(op.outputs[0])))
    return found


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

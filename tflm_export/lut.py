"""The LUT variant: standard TFLite-Micro compression (TFLM_DECODE ops), for a stock TFLM build.

Each weight tensor of a conv / depthwise / fully connected op becomes b-bit indices into tables of its
distinct int8 values, decoded into the arena by a TFLM_DECODE op before its consumer. Tables follow the
tensor's quantization: one per channel for per-channel tensors, one per tensor otherwise. Both other
choices failed when measured: per-channel tables on a per-tensor-quantized fully connected weight gave
wrong outputs, and per-tensor tables on all of person_detect's per-channel tensors gave all-zero outputs in
TFLite-Micro. Before compressing, the model's operator codes are normalized (tflite_model.read): on models
with only the old deprecated_builtin_code field the tool rewrote every op to SOFTMAX.
"""

import math
import warnings

import numpy as np
from tflite_micro.tensorflow.lite.micro import compression
from tflite_micro.tensorflow.lite.micro.compression import spec

from tflm_export import tflite_model
from tflm_export.tflite_model import ExportError

MAX_INDEX_BITS = 7  # the tool's limit; 8-bit indices would save nothing over int8


def index_bits(codes, axis=None):
    """Bits of a LUT index over the distinct values of ``codes``, per slice along ``axis`` (at least 1)."""
    slices = [codes] if axis is None else [np.take(codes, i, axis=axis) for i in range(codes.shape[axis])]
    distinct = max(len(np.unique(s)) for s in slices)
    return max(1, math.ceil(math.log2(max(distinct, 1))))


def compress_model(int8_tflite):
    """LUT-compressed bytes of an int8 model; tensors with over 128 distinct values stay uncompressed."""
    model = tflite_model.read(int8_tflite)
    tflite_model.check_tflm_ops(model)
    builder = compression.SpecBuilder()
    compressed = 0
    for op in tflite_model.weight_ops(model):
        scales, axis = tflite_model.tensor_scales(model, op.weights)
        per_channel = len(scales) > 1
        bits = index_bits(tflite_model.tensor_array(model, op.weights), axis if per_channel else None)
        if bits <= MAX_INDEX_BITS:
            mode = spec.PerChannel(axis=axis) if per_channel else spec.PerTensor()
            builder.add_tensor(subgraph=0, tensor=op.weights).with_lut(index_bitwidth=bits, mode=mode)
            compressed += 1
    if not compressed:
        raise ExportError("no weight tensor has 128 or fewer distinct values: nothing to LUT-compress")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tool warns when a tiny tensor grows; sizes are reported anyway
        return bytes(compression.compress(tflite_model.write(model), builder.build()))

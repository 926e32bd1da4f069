"""Weights of an int8 .tflite on their b-bit grids: snapping, rewriting a weight op, checking the grid.

The grid is ``qgt_keras.quantizers``' (code q times a per-output-channel scale). An int8 TFLite weight
tensor is already codes times a per-channel scale, so a b-bit layer is stored exactly when its int8 values
are its b-bit codes and its TFLite scales are its grid scales.

:func:`snap_tflite` snaps an existing int8 model (third-party, post-training): each weight tensor is
dequantized and snapped to the b-bit grid of its op, and its int32 bias re-expressed in the new scale
(:func:`rewrite_weights`). Ops with 8 bits are left untouched: any int8 tensor in [-127, 127] is on the
8-bit grid. :func:`check_grid` verifies the result.
"""

import numpy as np

from qgt_keras import quantizers
from tflm_export import tflite_model
from tflm_export.tflite_model import ExportError

_INT32 = np.iinfo(np.int32)


class OffGridError(ExportError):
    """A weight tensor (or Keras layer) holds values that are not codes of its b-bit grid; ``tensor`` names
    it."""

    def __init__(self, tensor, message, what="weight tensor"):
        self.tensor = tensor
        super().__init__(f"{what} {tensor!r} {message}")


def dequantized_weights(model, op):
    """(elements, channels) float weights of weight op ``op`` and their per-channel int8 scales.

    Refuses what an int8 grid cannot be: a weight tensor that is not int8, or has a non-zero zero point.
    """
    codes = tflite_model.tensor_array(model, op.weights)
    name = tflite_model.tensor_name(model, op.weights)
    if codes.dtype != np.int8:
        raise ExportError(f"weight tensor {name!r} is {codes.dtype}, expected int8 (full-integer model)")
    scales, _ = tflite_model.tensor_scales(model, op.weights)
    zero_points = model.subgraphs[0].tensors[op.weights].quantization.zeroPoint
    if zero_points is not None and np.any(np.asarray(zero_points) != 0):
        raise OffGridError(name, f"has zero points {sorted(set(np.asarray(zero_points).tolist()))[:4]}; a "
                                 "symmetric grid needs zero points 0")
    axis = tflite_model.channel_axis(op.kind)
    channels = codes.shape[axis]
    if len(scales) not in (1, channels):
        raise ExportError(f"weight tensor {name!r} has {len(scales)} scales for {channels} channels")
    scales = np.broadcast_to(scales, (channels,)).astype(np.float64)
    return tflite_model.channels_last(codes, axis).astype(np.float64) * scales, scales


def rewrite_weights(model, op, codes2d, new_scales, old_scales, bits=None):
    """Stores per-channel ``codes2d`` (elements, channels) and scales as ``op``'s weights; rescales its bias.

    TFLite's converter raises a channel's scale until its int32 bias fits (to 2^30 steps), so a channel whose
    weights are negligible next to its bias (a kernel trained toward zero) may have a grid scale too fine to
    hold the bias. Given the ``bits`` of the grid, such a channel keeps the converter's scale instead and its
    weights are re-snapped to the grid at that scale: its bias takes about 2^30 of those steps and its weights
    a few, which move by at most one, a change negligible next to the bias. Without ``bits`` (codes that must
    stay), such a channel is an ExportError.
    """
    graph = model.subgraphs[0]
    tensor = graph.tensors[op.weights]
    axis = tflite_model.channel_axis(op.kind)
    shape = [int(s) for s in tensor.shape]
    codes2d, new_scales = np.array(codes2d), np.array(new_scales, np.float64)  # copies: raised channels change
    if op.bias >= 0:
        bias = tflite_model.tensor_array(model, op.bias).astype(np.float64)
        rescaled = np.round(bias * old_scales / new_scales.astype(np.float32).astype(np.float64))
        overflows = np.abs(rescaled) > _INT32.max
        if overflows.any():
            if bits is None:
                raise ExportError(f"bias {tflite_model.tensor_name(model, op.bias)!r} overflows int32 at the new "
                                  f"scale (channels {np.flatnonzero(overflows)[:8].tolist()})")
            weights = codes2d[:, overflows] * new_scales[overflows]
            raised, _ = quantizers.quantize(weights, bits, scale=old_scales[overflows].astype(np.float32))
            codes2d[:, overflows] = raised.numpy()
            new_scales[overflows], rescaled[overflows] = old_scales[overflows], bias[overflows]
    tflite_model.set_tensor_data(model, op.weights,
                                 tflite_model.from_channels_last(codes2d, shape, axis).astype(np.int8))
    tensor.quantization.scale = new_scales.astype(np.float32)
    tensor.quantization.zeroPoint = np.zeros(len(new_scales), np.int64)
    tensor.quantization.quantizedDimension = axis
    if op.bias < 0:
        return
    input_scale = tflite_model.tensor_scales(model, op.input)[0][0]
    tflite_model.set_tensor_data(model, op.bias, rescaled.astype(np.int32))
    bias_q = graph.tensors[op.bias].quantization
    bias_q.scale = (input_scale * new_scales).astype(np.float32)
    bias_q.zeroPoint = np.zeros(len(new_scales), np.int64)
    bias_q.quantizedDimension = 0


def check_grid(tflite_bytes, bits):
    """Raises OffGridError naming the first weight tensor whose int8 values are not b-bit codes.

    ``bits`` maps weight tensor names to their grid's bits. Codes must lie in
    ``qgt_keras.quantizers.code_range(bits)``; 1-bit tensors must hold only -1 and +1, and every tensor needs
    zero points 0 and positive scales.
    """
    model = tflite_model.read(tflite_bytes)
    graph = model.subgraphs[0]
    index_by_name = {}
    for index in range(len(graph.tensors)):
        index_by_name.setdefault(tflite_model.tensor_name(model, index), index)
    for name, tensor_bits in bits.items():
        if name not in index_by_name:
            raise ExportError(f"no tensor named {name!r} in the model")
        index = index_by_name[name]
        codes = tflite_model.tensor_array(model, index)
        q = graph.tensors[index].quantization
        low, high = quantizers.code_range(tensor_bits)
        if codes.min() < low or codes.max() > high:
            raise OffGridError(name, f"holds values in [{codes.min()}, {codes.max()}], outside the "
                                     f"{tensor_bits}-bit codes [{low}, {high}]")
        if tensor_bits == 1 and np.any(codes == 0):
            raise OffGridError(name, "holds 0, which is not a 1-bit code (-1, +1)")
        if q is None or q.scale is None or np.any(np.asarray(q.scale) <= 0) or np.any(np.asarray(q.zeroPoint) != 0):
            raise OffGridError(name, "needs positive scales and zero points 0")


def resolve_bits(keys, bits, default_bits, what):
    """{key: bits} for every one of ``keys``: ``bits[key]`` where given, else ``default_bits``; refuses keys
    that are not among ``keys`` (naming them and ``what`` they should be) and widths outside 1..8."""
    bits = dict(bits or {})
    unknown = sorted(str(k) for k in bits if k not in keys)
    if unknown:
        raise ExportError(f"bits given for unknown {what}: {', '.join(unknown)}; known: {', '.join(map(str, keys))}")
    quantizers.check_bits(default_bits, "default bits")
    return {key: quantizers.check_bits(bits.get(key, default_bits), f"bits of {key}") for key in keys}


def resolve_tflite_bits(model, bits=None, default_bits=8):
    """{weight tensor name: bits} for every weight op of ``model`` (a ``schema.ModelT``).

    ``bits`` maps an op's weight tensor name, or the op's index in subgraph 0, to its bits; ops not listed
    get ``default_bits``.
    """
    names = {op.op_index: tflite_model.tensor_name(model, op.weights) for op in tflite_model.weight_ops(model)}
    index_by_name = {name: index for index, name in names.items()}
    given = {}
    for key, value in dict(bits or {}).items():
        index = key if key in names else index_by_name.get(key)
        if index is None:
            raise ExportError(f"bits given for {key!r}, which is neither a weight tensor name nor the index "
                              f"of a conv / depthwise / fully connected op; known: {sorted(index_by_name)}")
        given[names[index]] = value
    return resolve_bits(list(index_by_name), given, default_bits, "weight tensors")


def snap_tflite(tflite_bytes, bits=None, default_bits=8, method="mse"):
    """Snaps the weights of an int8 .tflite to b-bit grids; returns the new .tflite bytes.

    ``bits`` and ``default_bits`` as in :func:`resolve_tflite_bits`. 8-bit ops keep their codes. Scales
    are found by ``method`` ("mse" or "max").
    """
    model = tflite_model.read(tflite_bytes)
    tflite_model.check_tflm_ops(model)
    tensor_bits = resolve_tflite_bits(model, bits, default_bits)
    for op in tflite_model.weight_ops(model):
        weights, old_scales = dequantized_weights(model, op)  # refuses non-int8 and zero points, at any width
        op_bits = tensor_bits[tflite_model.tensor_name(model, op.weights)]
        if op_bits == 8:
            continue
        codes, scales = quantizers.quantize(weights, op_bits, method)
        rewrite_weights(model, op, codes.numpy().astype(np.int8), scales.numpy().astype(np.float64), old_scales,
                        op_bits)
    out = tflite_model.write(model)
    check_grid(out, tensor_bits)
    return out

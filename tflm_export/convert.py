"""tf_keras model (or int8 .tflite) -> full-integer int8 .tflite whose weights are exactly b-bit grid codes.

The grid is ``qgt_keras.quantizers``' (code q times a per-output-channel scale). An int8 TFLite weight tensor
is already codes times a per-channel scale, so a b-bit layer is stored exactly when its int8 values are its
b-bit codes and its TFLite scales are its grid scales. Two ways in:

* :func:`convert_keras` snaps the kernels of the layers listed in ``bits`` (below 8 bits) to their grid,
  converts with ``tf.lite.TFLiteConverter`` (int8 in and out, calibrated on representative data), then
  rewrites each snapped layer's int8 weights to its Keras codes. This rewrite is needed because the
  converter folds BatchNorm into the kernel (scaling each output channel) and re-quantizes with its own
  max-abs scale, which turns e.g. 2-bit codes {-2,-1,0,1} into int8 values {-127,-64,0,64}. The new scale
  of each channel is the least-squares fit of the codes to the converter's dequantized weights, so it
  carries the BatchNorm factor; int32 biases are re-expressed in the new scale. A channel that a negative
  BatchNorm gamma flipped gets negated codes, or, when those leave the grid, is re-snapped from the folded
  weights (counted in ``Conversion.resnapped``, with a warning).
* :func:`snap_tflite` snaps an existing int8 model (third-party, post-training): each weight tensor is
  dequantized and snapped to the b-bit grid of its op, with the same bias rescaling.

Layers with 8 bits are left to the converter: any int8 tensor in [-127, 127] is on the 8-bit grid.
Both functions finish with :func:`check_grid` on the bytes they return.
"""

import dataclasses
import warnings

import numpy as np
import tensorflow as tf
import tf_keras as keras

from qgt_keras import conversion as qgt_conversion
from qgt_keras import quantizers
from qgt_keras.layers import QUANTIZED_LAYERS
from tflm_export import tflite_model
from tflm_export.tflite_model import ExportError

WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
_INT32 = np.iinfo(np.int32)


class OffGridError(ExportError):
    """A weight tensor holds values that are not codes of its b-bit grid; ``tensor`` names it."""

    def __init__(self, tensor, message):
        self.tensor = tensor
        super().__init__(f"weight tensor {tensor!r} {message}")


@dataclasses.dataclass(frozen=True)
class WeightOp:
    """A conv / depthwise / fully connected op of subgraph 0 and the tensors it reads and writes."""
    op_index: int
    kind: str
    input: int
    weights: int
    bias: int  # -1 when the op has no bias
    output: int


@dataclasses.dataclass
class Conversion:
    """What :func:`convert_keras` made: the int8 model and, per Keras layer, its weight tensor and bits."""
    tflite: bytes
    layer_tensors: dict  # Keras layer name -> weight tensor name in the .tflite
    bits: dict  # weight tensor name -> bits of its grid
    resnapped: dict  # weight tensor name -> channels whose Keras codes could not be kept (see _fit_scales)


def weight_ops(model):
    """The :class:`WeightOp` of every CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED op, in execution order."""
    found = []
    for index, op in enumerate(model.subgraphs[0].operators or []):
        kind = tflite_model.op_name(model, op)
        if kind in WEIGHT_OPS:
            inputs = [int(i) for i in op.inputs]
            found.append(WeightOp(index, kind, inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else -1,
                                  int(op.outputs[0])))
    return found


def _scales(model, tensor_index):
    q = model.subgraphs[0].tensors[tensor_index].quantization
    if q is None or q.scale is None or len(q.scale) == 0:
        raise ExportError(f"tensor {tflite_model.tensor_name(model, tensor_index)!r} is not quantized")
    return np.asarray(q.scale, np.float64), int(q.quantizedDimension)


def _channel_axis(op):
    return 3 if op.kind == "DEPTHWISE_CONV_2D" else 0


def _channels_last(w, axis):
    """(elements, channels) view of a TFLite weight array with output channels on ``axis``."""
    return np.moveaxis(w, axis, -1).reshape(-1, w.shape[axis])


def _from_channels_last(w2d, shape, axis):
    moved = list(shape[:axis]) + list(shape[axis + 1:]) + [shape[axis]]
    return np.moveaxis(w2d.reshape(moved), -1, axis)


def _dequantized(model, op):
    """(elements, channels) float weights of ``op`` and their per-channel int8 scales."""
    codes = tflite_model.tensor_array(model, op.weights)
    name = tflite_model.tensor_name(model, op.weights)
    if codes.dtype != np.int8:
        raise ExportError(f"weight tensor {name!r} is {codes.dtype}, expected int8 (full-integer model)")
    scales, _ = _scales(model, op.weights)
    axis = _channel_axis(op)
    channels = codes.shape[axis]
    if len(scales) not in (1, channels):
        raise ExportError(f"weight tensor {name!r} has {len(scales)} scales for {channels} channels")
    scales = np.broadcast_to(scales, (channels,))
    return _channels_last(codes, axis).astype(np.float64) * scales, scales


def _rewrite(model, op, codes2d, new_scales, old_scales):
    """Stores per-channel ``codes2d`` (elements, channels) and scales as ``op``'s weights; rescales its bias."""
    graph = model.subgraphs[0]
    tensor = graph.tensors[op.weights]
    axis = _channel_axis(op)
    shape = [int(s) for s in tensor.shape]
    tflite_model.set_tensor_data(model, op.weights,
                                 _from_channels_last(codes2d, shape, axis).astype(np.int8))
    tensor.quantization.scale = new_scales.astype(np.float32)
    tensor.quantization.zeroPoint = np.zeros(len(new_scales), np.int64)
    tensor.quantization.quantizedDimension = axis
    if op.bias < 0:
        return
    input_scale = _scales(model, op.input)[0][0]
    bias = tflite_model.tensor_array(model, op.bias).astype(np.float64)
    rescaled = np.round(bias * old_scales / new_scales.astype(np.float32).astype(np.float64))
    if np.any(np.abs(rescaled) > _INT32.max):
        raise ExportError(f"bias {tflite_model.tensor_name(model, op.bias)!r} overflows int32 at the new scale")
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


def _bits_for(keys, bits, default_bits, what):
    """Checks ``bits`` (only known keys, values 1..8) and returns the bits of every key."""
    bits = dict(bits or {})
    unknown = sorted(str(k) for k in bits if k not in keys)
    if unknown:
        raise ExportError(f"bits given for unknown {what}: {', '.join(unknown)}; known: {', '.join(map(str, keys))}")
    quantizers.check_bits(default_bits, "default_bits")
    return {key: quantizers.check_bits(bits.get(key, default_bits), f"bits of {key}") for key in keys}


def resolve_tflite_bits(model, bits=None, default_bits=8):
    """{weight tensor name: bits} for every weight op of ``model`` (a ``schema.ModelT``).

    ``bits`` maps an op's weight tensor name, or the op's index in subgraph 0, to its bits; ops not listed
    get ``default_bits``.
    """
    names = {op.op_index: tflite_model.tensor_name(model, op.weights) for op in weight_ops(model)}
    index_by_name = {name: index for index, name in names.items()}
    given = {}
    for key, value in dict(bits or {}).items():
        index = key if key in names else index_by_name.get(key)
        if index is None:
            raise ExportError(f"bits given for {key!r}, which is neither a weight tensor name nor the index "
                              f"of a conv / depthwise / fully connected op; known: {sorted(index_by_name)}")
        given[names[index]] = value
    return _bits_for(list(index_by_name), given, default_bits, "weight tensors")


def snap_tflite(tflite_bytes, bits=None, default_bits=8, method="mse"):
    """Snaps the weights of an int8 .tflite to b-bit grids; returns the new .tflite bytes.

    ``bits`` and ``default_bits`` as in :func:`resolve_tflite_bits`. 8-bit ops are left untouched. Scales
    are found by ``method`` ("mse" or "max").
    """
    model = tflite_model.read(tflite_bytes)
    tflite_model.check_tflm_ops(model)
    tensor_bits = resolve_tflite_bits(model, bits, default_bits)
    for op in weight_ops(model):
        op_bits = tensor_bits[tflite_model.tensor_name(model, op.weights)]
        if op_bits == 8:
            continue
        weights, old_scales = _dequantized(model, op)
        codes, scales = quantizers.quantize(weights, op_bits, method)
        _rewrite(model, op, codes.numpy().astype(np.int8), scales.numpy().astype(np.float64), old_scales)
    out = tflite_model.write(model)
    check_grid(out, tensor_bits)
    return out


# ---- Keras models ---------------------------------------------------------------------------------------

def _layer_kind(layer):
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return "DEPTHWISE_CONV_2D"
    if isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.Conv2DTranspose):
        return "CONV_2D"
    if isinstance(layer, keras.layers.Dense):
        return "FULLY_CONNECTED"
    return None


def _flat_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _flat_layers(layer)
        else:
            yield layer


def _kernel(layer):
    return layer.depthwise_kernel if _layer_kind(layer) == "DEPTHWISE_CONV_2D" else layer.kernel


def _channel_axes(kind):
    return (2, 3) if kind == "DEPTHWISE_CONV_2D" else -1


def _keras_codes_to_tflite(op_kind, codes):
    """Keras kernel layout -> the weight layout of a TFLite op of kind ``op_kind`` (the converter's)."""
    if op_kind == "CONV_2D":  # (kh, kw, in, out) -> (out, kh, kw, in)
        return np.transpose(codes, (3, 0, 1, 2))
    if op_kind == "DEPTHWISE_CONV_2D":  # (kh, kw, in, multiplier or out) -> (1, kh, kw, in * multiplier)
        return codes.reshape((1,) + codes.shape[:2] + (-1,))
    return codes.T  # Dense (in, out) -> (out, in)


def map_layers_to_ops(model, layers, ops):
    """Pairs Keras kernel layers with TFLite weight ops: ``{layer name: WeightOp}``.

    First by name: the converter names a weight tensor after the Keras ops it came from
    ("model/bn1/FusedBatchNormV3;model/conv1/Conv2D"), so a layer whose name is one of those path parts,
    of the same kind and with the same weight shape, is that op's layer when exactly one layer qualifies.
    The ops left over are paired in execution order with the layers left over in model order, again
    requiring equal kind and shape. Anything that still does not pair up raises ExportError.
    """
    def fits(layer, op):
        weight_shape = tuple(int(s) for s in model.subgraphs[0].tensors[op.weights].shape)
        kernel_shape = tuple(_kernel(layer).shape)
        # The converter turns a Conv2D with one input channel into a DEPTHWISE_CONV_2D.
        one_input_conv = _layer_kind(layer) == "CONV_2D" and kernel_shape[2] == 1
        if _layer_kind(layer) != op.kind and not (one_input_conv and op.kind == "DEPTHWISE_CONV_2D"):
            return False
        return _keras_codes_to_tflite(op.kind, np.zeros(kernel_shape, np.int8)).shape == weight_shape

    pairs, free_ops = {}, []
    for op in ops:
        parts = {part for piece in tflite_model.tensor_name(model, op.weights).split(";") for part in piece.split("/")}
        named = [layer for layer in layers if layer.name in parts and layer.name not in pairs and fits(layer, op)]
        if len(named) == 1:
            pairs[named[0].name] = op
        else:
            free_ops.append(op)
    free_layers = [layer for layer in layers if layer.name not in pairs]
    if len(free_layers) != len(free_ops):
        raise ExportError(f"cannot map Keras layers {[l.name for l in free_layers]} onto TFLite ops "
                          f"{[(op.op_index, op.kind) for op in free_ops]}")
    for layer, op in zip(free_layers, free_ops):
        if not fits(layer, op):
            raise ExportError(f"Keras layer {layer.name!r} does not match TFLite op {op.op_index} ({op.kind}, "
                              f"weights {tflite_model.tensor_name(model, op.weights)!r})")
        pairs[layer.name] = op
    return pairs


def _representative_dataset(data):
    """A converter representative dataset from a callable (TFLite style) or an array of samples."""
    if callable(data):
        return data
    samples = np.asarray(data, np.float32)
    return lambda: ([samples[i:i + 1]] for i in range(len(samples)))


def to_int8_tflite(model, representative_data):
    """Plain full-integer conversion (int8 in and out) with tf.lite.TFLiteConverter."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _representative_dataset(representative_data)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def to_float_tflite(model):
    """Float .tflite of ``model`` (the size baseline)."""
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def _fit_scales(name, keras_codes, weights, old_scales, bits, method):
    """(codes, scales, re-snapped channel count): per-channel least-squares scales of the Keras codes to the
    converter's (BatchNorm-folded) weights, checking that the codes fit.

    A negative fit means a negative BatchNorm gamma flipped the channel: its codes are negated, which stays
    on the grid unless the channel uses the lowest code (-2 for 2 bits has no +2). Such channels are
    re-snapped from the folded weights instead (what post-training snapping after folding would do; a QGT
    model trained on folded kernels has none). A channel BatchNorm zeroed gets zero codes (b >= 2) and keeps
    the converter's positive scale.
    """
    codes = keras_codes.astype(np.float64)
    power = np.sum(codes * codes, axis=0)
    scales = np.where(power > 0, np.sum(codes * weights, axis=0) / np.maximum(power, 1), old_scales)
    flipped = scales < 0
    codes[:, flipped] *= -1
    scales = np.abs(scales)
    dead = scales == 0
    if bits > 1:
        codes[:, dead] = 0
    scales = np.where(dead, old_scales, scales)
    low, high = quantizers.code_range(bits)
    off_grid = np.any((codes < low) | (codes > high), axis=0)
    if off_grid.any():
        new_codes, new_scales = quantizers.quantize(weights[:, off_grid], bits, method)
        codes[:, off_grid] = new_codes.numpy()
        scales[off_grid] = new_scales.numpy()
    residual = np.where(off_grid, 0.0, np.max(np.abs(codes * scales - weights), axis=0))
    worst = int(np.argmax(residual / old_scales))
    if residual[worst] > old_scales[worst] * (1 + 1e-6):
        raise OffGridError(name, f"is off its {bits}-bit grid: channel {worst} misses the Keras codes by "
                                 f"{residual[worst] / old_scales[worst]:.2f} int8 steps")
    return codes.astype(np.int8), scales, int(off_grid.sum())


def plain_keras_model(model, bits=None):
    """(plain tf_keras model, bits): a QGT model (qgt_keras quantized layers) stripped to Conv2D /
    DepthwiseConv2D / Dense with its kernels snapped by their own quantizers, and its layers' bits updated
    by ``bits``; any other model and ``bits`` unchanged."""
    if not any(isinstance(layer, QUANTIZED_LAYERS) for layer in _flat_layers(model)):
        return model, bits
    return (qgt_conversion.strip_quantization(model, snap=True),
            {**qgt_conversion.layer_bits(model), **dict(bits or {})})


def convert_keras(model, representative_data, bits=None, default_bits=8, method="mse"):
    """Converts a tf_keras model to an int8 .tflite whose listed layers hold exactly their b-bit codes.

    ``bits`` maps Conv2D / DepthwiseConv2D / Dense layer names to 1..8 (others get ``default_bits``);
    ``representative_data`` is an array of input samples (first axis) or a TFLite representative dataset
    callable; ``method`` is the scale search of the snap ("mse" or "max"). The model is not modified.
    A QGT model (qgt_keras quantized layers) is first stripped to plain layers with its kernels snapped by
    their own quantizers, and its layers' bits are the defaults of ``bits``. Returns a :class:`Conversion`.
    """
    model, bits = plain_keras_model(model, bits)
    layers = [layer for layer in _flat_layers(model) if _layer_kind(layer)]
    layer_bits = _bits_for([layer.name for layer in layers], bits, default_bits, "Keras kernel layers")
    snapped_model = keras.models.clone_model(model)
    snapped_model.set_weights(model.get_weights())
    keras_codes = {}
    for layer in _flat_layers(snapped_model):
        kind = _layer_kind(layer)
        if kind is None or layer_bits[layer.name] == 8:
            continue
        codes, scale = quantizers.quantize(_kernel(layer), layer_bits[layer.name], method, _channel_axes(kind))
        _kernel(layer).assign(quantizers.dequantize(codes, scale, _channel_axes(kind)))
        keras_codes[layer.name] = codes.numpy().astype(np.int8)

    tflite = tflite_model.read(to_int8_tflite(snapped_model, representative_data))
    tflite_model.check_tflm_ops(tflite)
    pairs = map_layers_to_ops(tflite, layers, weight_ops(tflite))
    resnapped = {}
    for layer_name, codes in keras_codes.items():
        op = pairs[layer_name]
        name = tflite_model.tensor_name(tflite, op.weights)
        weights, old_scales = _dequantized(tflite, op)
        codes = _keras_codes_to_tflite(op.kind, codes)
        new_codes, scales, resnapped[name] = _fit_scales(
            name, _channels_last(codes, _channel_axis(op)), weights, old_scales, layer_bits[layer_name], method)
        _rewrite(tflite, op, new_codes, scales, old_scales)
    out = tflite_model.write(tflite)
    layer_tensors = {name: tflite_model.tensor_name(tflite, op.weights) for name, op in pairs.items()}
    tensor_bits = {layer_tensors[name]: layer_bits[name] for name in pairs}
    check_grid(out, tensor_bits)
    resnapped = {name: count for name, count in resnapped.items() if count}
    if resnapped:
        warnings.warn(f"channels re-snapped after BatchNorm folding flipped them off the grid: {resnapped}")
    return Conversion(out, layer_tensors, tensor_bits, resnapped)

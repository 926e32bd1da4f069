"""tf_keras model -> full-integer int8 .tflite whose weights are exactly the layers' b-bit grid codes.

:func:`convert_keras` snaps the kernels of the layers listed in ``bits`` (below 8 bits) to their grid,
converts with ``tf.lite.TFLiteConverter`` (int8 in and out, calibrated on representative data), then
rewrites each snapped layer's int8 weights to its Keras codes. This rewrite is needed because the converter
folds BatchNorm into the kernel (scaling each output channel) and re-quantizes with its own max-abs scale,
which turns e.g. 2-bit codes {-2,-1,0,1} into int8 values {-127,-64,0,64}. The new scale of each channel is
the least-squares fit of the codes to the converter's dequantized weights, so it carries the BatchNorm
factor; int32 biases are re-expressed in the new scale (``snap.rewrite_weights``). A channel that a
negative BatchNorm gamma flipped gets negated codes, or, when those leave the grid, is re-snapped from the
folded weights (counted in ``Conversion.resnapped``, with a warning). Layers with 8 bits are left to the
converter. The result is checked with ``snap.check_grid``.

Which layers have which kind, kernel and channel axes: ``qgt_keras.layer_kinds``.
"""

import dataclasses
import warnings

import numpy as np
import tensorflow as tf
import tf_keras as keras

from qgt_keras import conversion as qgt_conversion
from qgt_keras import layer_kinds, quantizers
from qgt_keras.layers import quantized_kernels
from tflm_export import snap, tflite_model
from tflm_export.tflite_model import ExportError


@dataclasses.dataclass
class Conversion:
    """What :func:`convert_keras` made: the int8 model and, per Keras layer, its weight tensor and bits."""
    tflite: bytes
    layer_tensors: dict  # Keras layer name -> weight tensor name in the .tflite
    bits: dict  # weight tensor name -> bits of its grid
    resnapped: dict  # weight tensor name -> channels whose Keras codes could not be kept (see _fit_scales)


def _flat_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _flat_layers(layer)
        else:
            yield layer


def keras_codes_to_tflite(op_kind, codes):
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
        kind = layer_kinds.kind_of(layer)
        weight_shape = tuple(int(s) for s in model.subgraphs[0].tensors[op.weights].shape)
        kernel_shape = tuple(kind.kernel(layer).shape)
        # The converter turns a Conv2D with one input channel into a DEPTHWISE_CONV_2D.
        one_input_conv = kind is layer_kinds.CONV_2D and kernel_shape[2] == 1
        if kind.tflite_op != op.kind and not (one_input_conv and op.kind == "DEPTHWISE_CONV_2D"):
            return False
        return keras_codes_to_tflite(op.kind, np.zeros(kernel_shape, np.int8)).shape == weight_shape

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
        raise snap.OffGridError(name, f"is off its {bits}-bit grid: channel {worst} misses the Keras codes by "
                                      f"{residual[worst] / old_scales[worst]:.2f} int8 steps")
    return codes.astype(np.int8), scales, int(off_grid.sum())


def plain_keras_model(model, bits=None, resnap=False):
    """(plain tf_keras model, bits): a QGT model (qgt_keras quantized layers, or plain layers with a
    QGTRegularizer) stripped to Conv2D / DepthwiseConv2D / Dense with its kernels snapped to their grids, and
    its layers' bits (``qgt_keras.conversion.layer_bits``) updated by ``bits``; any other model and ``bits``
    unchanged.

    A layer below 8 bits whose forward pass is float (not hard-quantized) must already be on its grid:
    snapping it here would change what the model computes. Such a layer off its grid is an OffGridError
    naming it and how far off it is, unless ``resnap``, which snaps it anyway with a warning saying so.
    Layers whose bits ``bits`` sets are snapped at those bits, as asked.
    """
    entries = quantized_kernels(model)
    if not entries:
        return model, bits
    given = dict(bits or {})
    off_grid = [entry for entry in entries
                if entry.bits < 8 and entry.name not in given and not entry.hard_quantized and not entry.on_grid()]
    if off_grid:
        how_far = {entry.name: f"{entry.bits}-bit, a weight {entry.grid_distance():.2f} grid steps from its code, "
                               f"relative error ||W - Q(W)||^2 / ||W||^2 {entry.relative_error():.2e}"
                   for entry in off_grid}
        if not resnap:
            others = "".join(f"; also {name} ({text})" for name, text in list(how_far.items())[1:])
            raise snap.OffGridError(
                off_grid[0].name, f"is off its grid ({how_far[off_grid[0].name]}){others}. Snap the model first "
                "(qgt_keras.conversion.snap_weights) or re-snap it at export (resnap; qgt-export --resnap)",
                what="Keras layer")
        warnings.warn("re-snapping Keras layers that were off their grid: "
                      + "; ".join(f"{name} ({text})" for name, text in how_far.items()))
    return (qgt_conversion.strip_quantization(model, snap=True), {**qgt_conversion.layer_bits(model), **given})


def convert_keras(model, representative_data, bits=None, default_bits=8, method="mse", resnap=False):
    """Converts a tf_keras model to an int8 .tflite whose listed layers hold exactly their b-bit codes.

    ``bits`` maps Conv2D / DepthwiseConv2D / Dense layer names to 1..8 (others get ``default_bits``);
    ``representative_data`` is an array of input samples (first axis) or a TFLite representative dataset
    callable; ``method`` is the scale search of the snap ("mse" or "max"). The model is not modified.
    A QGT model is first stripped by :func:`plain_keras_model` (``resnap`` is its), and its layers' bits are
    the defaults of ``bits``. Returns a :class:`Conversion`.
    """
    model, bits = plain_keras_model(model, bits, resnap)
    layers = [layer for layer in _flat_layers(model) if layer_kinds.kind_of(layer)]
    layer_bits = snap.resolve_bits([layer.name for layer in layers], bits, default_bits, "Keras kernel layers")
    snapped_model = keras.models.clone_model(model)
    snapped_model.set_weights(model.get_weights())
    keras_codes = {}
    for layer in _flat_layers(snapped_model):
        kind = layer_kinds.kind_of(layer)
        if kind is None or layer_bits[layer.name] == 8:
            continue
        codes, scale = quantizers.quantize(kind.kernel(layer), layer_bits[layer.name], method, kind.channel_axes)
        kind.kernel(layer).assign(quantizers.dequantize(codes, scale, kind.channel_axes))
        keras_codes[layer.name] = codes.numpy().astype(np.int8)

    tflite = tflite_model.read(to_int8_tflite(snapped_model, representative_data))
    tflite_model.check_tflm_ops(tflite)
    pairs = map_layers_to_ops(tflite, layers, tflite_model.weight_ops(tflite))
    resnapped = {}
    for layer_name, codes in keras_codes.items():
        op = pairs[layer_name]
        name = tflite_model.tensor_name(tflite, op.weights)
        weights, old_scales = snap.dequantized_weights(tflite, op)
        codes = keras_codes_to_tflite(op.kind, codes)
        new_codes, scales, resnapped[name] = _fit_scales(
            name, tflite_model.channels_last(codes, tflite_model.channel_axis(op.kind)), weights, old_scales,
            layer_bits[layer_name], method)
        snap.rewrite_weights(tflite, op, new_codes, scales, old_scales, layer_bits[layer_name])
    out = tflite_model.write(tflite)
    layer_tensors = {name: tflite_model.tensor_name(tflite, op.weights) for name, op in pairs.items()}
    tensor_bits = {layer_tensors[name]: layer_bits[name] for name in pairs}
    snap.check_grid(out, tensor_bits)
    resnapped = {name: count for name, count in resnapped.items() if count}
    if resnapped:
        warnings.warn(f"channels re-snapped after BatchNorm folding flipped them off the grid: {resnapped}")
    return Conversion(out, layer_tensors, tensor_bits, resnapped)

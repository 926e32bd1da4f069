"""Quantized Keras layers: QConv2D, QDepthwiseConv2D, QDense.

Each is its tf_keras base layer plus a b-bit kernel quantizer and a ``quantize_gate`` weight:

* gate 0 (the QGT phase): the layer computes in float; a ``QGTRegularizer`` on its kernel pulls the kernel
  toward the grid.
* gate 1 (the hard-quantization phase): the forward pass uses the snapped kernel, gradients pass straight
  through to the float kernel (STE).

The gate is a weight, not a Python flag, so ``callbacks.QGTScheduler`` can switch phases inside a compiled
training function and a saved model remembers its phase.
"""

import dataclasses

import tensorflow as tf
import tf_keras as keras

from qgt_keras import quantizers
from qgt_keras.regularizers import QGTRegularizer
from qgt_keras.serialization import register


class QuantizedKernelMixin:
    """Adds ``bits``, a ``WeightQuantizer`` and the phase gate to a Keras layer with one kernel."""

    kernel_attribute = "kernel"
    regularizer_argument = "kernel_regularizer"
    channel_axes = -1

    def __init__(self, *args, bits=2, scale="mse", **kwargs):
        self.bits = quantizers.check_bits(bits, f"bits of layer {kwargs.get('name', type(self).__name__)!r}")
        regularizer = keras.regularizers.get(kwargs.get(self.regularizer_argument))
        if isinstance(regularizer, QGTRegularizer) and regularizer.bits != self.bits:
            raise ValueError(
                f"layer {kwargs.get('name')!r}: QGTRegularizer bits {regularizer.bits} != layer bits {self.bits}")
        self.kernel_quantizer = quantizers.WeightQuantizer(self.bits, scale, self.channel_axes)
        super().__init__(*args, **kwargs)

    @property
    def precision(self):
        return self.bits

    @property
    def qgt_regularizer(self):
        """The layer's QGTRegularizer, or None."""
        regularizer = getattr(self, self.regularizer_argument)
        return regularizer if isinstance(regularizer, QGTRegularizer) else None

    def build(self, input_shape):
        super().build(input_shape)
        self.quantize_gate = self.add_weight(
            "quantize_gate", shape=(), initializer="zeros", trainable=False)

    def call(self, inputs):
        float_kernel = getattr(self, self.kernel_attribute)
        used = tf.cond(
            self.quantize_gate > 0.5,
            lambda: self.kernel_quantizer(float_kernel),
            lambda: tf.identity(float_kernel))
        # Keras' call reads the kernel attribute: lend it the quantized tensor for this call only, bypassing
        # Keras' attribute tracking (which would reorder the layer's weights).
        object.__setattr__(self, self.kernel_attribute, used)
        try:
            return super().call(inputs)
        finally:
            object.__setattr__(self, self.kernel_attribute, float_kernel)

    def set_hard_quantization(self, enabled):
        self.quantize_gate.assign(1.0 if enabled else 0.0)

    def get_config(self):
        return {**super().get_config(), "bits": self.bits, "scale": self.kernel_quantizer.scale}


@register
class QConv2D(QuantizedKernelMixin, keras.layers.Conv2D):
    """Conv2D with a b-bit per-output-channel kernel."""


@register
class QDepthwiseConv2D(QuantizedKernelMixin, keras.layers.DepthwiseConv2D):
    """DepthwiseConv2D with a b-bit kernel, one scale per output channel (input channel x multiplier)."""

    kernel_attribute = "depthwise_kernel"
    regularizer_argument = "depthwise_regularizer"
    channel_axes = (2, 3)


@register
class QDense(QuantizedKernelMixin, keras.layers.Dense):
    """Dense with a b-bit per-output-unit kernel."""


# Keras layer type -> its quantized counterpart. Exact types: subclasses such as Conv2DTranspose differ.
QUANTIZED_COUNTERPART = {
    keras.layers.Conv2D: QConv2D,
    keras.layers.DepthwiseConv2D: QDepthwiseConv2D,
    keras.layers.Dense: QDense,
}
QUANTIZED_LAYERS = tuple(QUANTIZED_COUNTERPART.values())


@dataclasses.dataclass(frozen=True)
class QuantizedKernel:
    """A kernel that QGT acts on: its layer, the variable, its bit width and regularizer (if any)."""

    layer: keras.layers.Layer
    kernel: tf.Variable
    bits: int
    regularizer: QGTRegularizer
    channel_axes: object
    scale: str

    @property
    def name(self):
        return self.layer.name

    def codes(self):
        """(codes, scales) of the current kernel."""
        return quantizers.quantize(self.kernel, self.bits, self.scale, self.channel_axes)

    def snapped(self):
        return quantizers.snap(self.kernel, self.bits, self.scale, self.channel_axes)

    def squared_error(self):
        """(||W - Q(W)||^2, ||W||^2) of the current kernel, as floats."""
        error, power = quantizers.squared_error(self.kernel, self.bits, self.scale, self.channel_axes)
        return float(error), float(power)

    def relative_error(self):
        """||W - Q(W)||^2 / ||W||^2 of the current kernel (0 for an all-zero kernel)."""
        error, power = self.squared_error()
        return error / power if power > 0 else 0.0

    def qgt_term(self):
        """What the layer's QGT regularizer adds to the loss now (0 without one)."""
        return float(self.regularizer.qgt_term(self.kernel)) if self.regularizer is not None else 0.0


def quantized_kernels(model):
    """The kernels of ``model`` that have a bit width: quantized layers, and plain Conv2D/DepthwiseConv2D/
    Dense layers whose kernel regularizer is a QGTRegularizer. In model layer order."""
    found = []
    for layer in model.layers:
        if isinstance(layer, QUANTIZED_LAYERS):
            found.append(QuantizedKernel(
                layer, getattr(layer, layer.kernel_attribute), layer.bits, layer.qgt_regularizer,
                layer.channel_axes, layer.kernel_quantizer.scale))
            continue
        counterpart = QUANTIZED_COUNTERPART.get(type(layer))
        regularizer = getattr(layer, counterpart.regularizer_argument, None) if counterpart else None
        if isinstance(regularizer, QGTRegularizer):
            found.append(QuantizedKernel(
                layer, getattr(layer, counterpart.kernel_attribute), regularizer.bits, regularizer,
                regularizer.channel_axes, regularizer.scale))
    return found

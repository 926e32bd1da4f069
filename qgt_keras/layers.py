"""Quantized Keras layers: QConv2D, QDepthwiseConv2D, QDense.

Each is its tf_keras base layer plus a b-bit kernel quantizer and a ``quantize_gate`` weight:

* gate 0 (the QGT phase): the layer computes in float; a ``QGTRegularizer`` on its kernel pulls the kernel
  toward the grid.
* gate 1 (the hard-quantization phase): the forward pass uses the snapped kernel, gradients pass straight
  through to the float kernel (STE).

The gate is a weight, not a Python flag, so ``callbacks.QGTScheduler`` can switch phases inside a compiled
training function and a saved model remembers its phase.

``scale_interval``: with the default 1, every training step estimates the kernel's per-channel scales afresh
(the MSE search, for the hard phase's forward pass; the regularizer's own method, for the QGT term). With
n > 1 the layer keeps its scales in a ``kernel_scale`` weight, re-estimated (by the quantizer's method) in
every n-th training step, and both the forward pass and the QGT term of the steps between use them: the
search is about a quarter of the recipe's CPU time per step on MobileNetV1-0.25, and the weights move little
in n steps. Inference
(``training`` not True) always estimates afresh, so a model computes what its export computes.
"""

import dataclasses

import numpy as np
import tensorflow as tf
import tf_keras as keras

from qgt_keras import layer_kinds, quantizers
from qgt_keras.regularizers import QGTRegularizer
from qgt_keras.serialization import register


def check_scale_interval(value, what="scale_interval"):
    """Returns ``value`` as an int, or raises ValueError naming ``what`` when it is not an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {value!r}")
    return int(value)


class QuantizedKernelMixin:
    """Adds ``bits``, a ``WeightQuantizer`` and the phase gate to a Keras layer with one kernel; the class's
    ``layer_kind`` (qgt_keras.layer_kinds) says which attribute holds the kernel and its channel axes."""

    layer_kind = None

    def __init__(self, *args, bits=2, scale="mse", scale_interval=1, **kwargs):
        kind = self.layer_kind
        name = kwargs.get("name", type(self).__name__)
        self.bits = quantizers.check_bits(bits, f"bits of layer {name!r}")
        self.scale_interval = check_scale_interval(scale_interval, f"scale_interval of layer {name!r}")
        regularizer = keras.regularizers.get(kwargs.get(kind.regularizer_argument))
        if isinstance(regularizer, QGTRegularizer) and regularizer.bits != self.bits:
            raise ValueError(
                f"layer {kwargs.get('name')!r}: QGTRegularizer bits {regularizer.bits} != layer bits {self.bits}")
        self.kernel_quantizer = quantizers.WeightQuantizer(self.bits, scale, kind.channel_axes)
        super().__init__(*args, **kwargs)

    @property
    def precision(self):
        return self.bits

    @property
    def qgt_regularizer(self):
        """The layer's QGTRegularizer, or None."""
        regularizer = getattr(self, self.layer_kind.regularizer_argument)
        return regularizer if isinstance(regularizer, QGTRegularizer) else None

    def build(self, input_shape):
        regularizer = self.qgt_regularizer if self.scale_interval > 1 else None
        if regularizer is None:
            super().build(input_shape)
        else:
            # Keras would register regularizer(kernel), which estimates the scales itself: register the term
            # with the cached scales instead (below).
            setattr(self, self.layer_kind.regularizer_argument, regularizer.base)
            try:
                super().build(input_shape)
            finally:
                setattr(self, self.layer_kind.regularizer_argument, regularizer)
        self.quantize_gate = self.add_weight(
            "quantize_gate", shape=(), initializer="zeros", trainable=False)
        if self.scale_interval > 1:
            kernel = self.layer_kind.kernel(self)
            channels = quantizers.channels_last_2d(kernel, self.layer_kind.channel_axes).shape[1]
            # Every replica of a tf.distribute strategy computes the same scales from the same weights.
            self.kernel_scale = self.add_weight("kernel_scale", shape=(channels,), initializer="ones",
                                                trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.scale_age = self.add_weight("scale_age", shape=(), dtype=tf.int64, initializer="zeros",
                                             trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            if regularizer is not None:
                self.add_loss(lambda: regularizer(kernel, scale=self._cached_scale_or_estimate(kernel)))

    def _training_scale(self, kernel):
        """The kernel's scales for this training step: re-estimated in every ``scale_interval``-th step (the
        first included), else the cached ones."""
        scale = tf.cond(self.scale_age % self.scale_interval == 0, lambda: self._fresh_scale(kernel),
                        lambda: tf.identity(self.kernel_scale))
        # Assigned outside the cond: a tf.distribute strategy cannot synchronize an assignment inside one.
        with tf.control_dependencies([self.kernel_scale.assign(scale), self.scale_age.assign_add(1)]):
            return tf.identity(scale)

    def expire_scale_cache(self):
        """Makes the next training step re-estimate the scales (after the weights were changed outside it)."""
        if self.scale_interval > 1:
            self.scale_age.assign(0)

    def _cached_scale_or_estimate(self, kernel):
        """The cached scales once a training step has set them, else fresh ones (a loss asked for before fit)."""
        return tf.cond(self.scale_age > 0, lambda: tf.identity(self.kernel_scale), lambda: self._fresh_scale(kernel))

    def _fresh_scale(self, kernel):
        return self.kernel_quantizer.estimate_scale(tf.stop_gradient(kernel))

    def call(self, inputs, training=None):
        attribute = self.layer_kind.kernel_attribute
        float_kernel = getattr(self, attribute)
        scale = self._training_scale(float_kernel) if self.scale_interval > 1 and training is True else None
        used = tf.cond(
            self.quantize_gate > 0.5,
            lambda: self.kernel_quantizer(float_kernel, scale),
            lambda: tf.identity(float_kernel))
        # Keras' call reads the kernel attribute: lend it the quantized tensor for this call only, bypassing
        # Keras' attribute tracking (which would reorder the layer's weights).
        object.__setattr__(self, attribute, used)
        try:
            return super().call(inputs)
        finally:
            object.__setattr__(self, attribute, float_kernel)

    def set_hard_quantization(self, enabled):
        self.quantize_gate.assign(1.0 if enabled else 0.0)

    def get_config(self):
        return {**super().get_config(), "bits": self.bits, "scale": self.kernel_quantizer.scale,
                "scale_interval": self.scale_interval}


@register
class QConv2D(QuantizedKernelMixin, keras.layers.Conv2D):
    """Conv2D with a b-bit per-output-channel kernel."""

    layer_kind = layer_kinds.CONV_2D


@register
class QDepthwiseConv2D(QuantizedKernelMixin, keras.layers.DepthwiseConv2D):
    """DepthwiseConv2D with a b-bit kernel, one scale per output channel (input channel x multiplier)."""

    layer_kind = layer_kinds.DEPTHWISE_CONV_2D


@register
class QDense(QuantizedKernelMixin, keras.layers.Dense):
    """Dense with a b-bit per-output-unit kernel."""

    layer_kind = layer_kinds.DENSE


# Layer kind -> its quantized layer class.
QUANTIZED_CLASSES = {cls.layer_kind: cls for cls in (QConv2D, QDepthwiseConv2D, QDense)}
QUANTIZED_LAYERS = tuple(QUANTIZED_CLASSES.values())
# Largest distance of a weight from its grid value, in grid steps, that still counts as on the grid (a
# snapped kernel saved and loaded again is ~1e-5 steps off).
ON_GRID_STEPS = 1e-2


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

    @property
    def hard_quantized(self):
        """Whether the layer's forward pass uses the snapped kernel (quantize gate 1)."""
        gate = getattr(self.layer, "quantize_gate", None)
        return gate is not None and float(gate.numpy()) > 0.5

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

    def grid_distance(self):
        """The largest distance of a weight from its grid value, in grid steps of its channel."""
        codes, scale = self.codes()
        w2d = quantizers.channels_last_2d(self.kernel, self.channel_axes)
        distance = tf.abs(w2d - quantizers.channels_last_2d(codes, self.channel_axes) * scale) / scale
        return float(tf.reduce_max(distance))

    def on_grid(self):
        return self.grid_distance() <= ON_GRID_STEPS

    def qgt_term(self):
        """What the layer's QGT regularizer adds to the loss now (0 without one)."""
        return float(self.regularizer.qgt_term(self.kernel)) if self.regularizer is not None else 0.0


def quantized_kernels(model):
    """The kernels of ``model`` that have a bit width: quantized layers, and plain Conv2D/DepthwiseConv2D/
    Dense layers whose kernel regularizer is a QGTRegularizer. In model layer order."""
    found = []
    for layer in model.layers:
        kind = layer_kinds.kind_of(layer)
        if kind is None:
            continue
        if isinstance(layer, QUANTIZED_LAYERS):
            found.append(QuantizedKernel(layer, kind.kernel(layer), layer.bits, layer.qgt_regularizer,
                                         kind.channel_axes, layer.kernel_quantizer.scale))
            continue
        regularizer = getattr(layer, kind.regularizer_argument, None)
        if isinstance(regularizer, QGTRegularizer):
            if regularizer.channel_axes not in (None, kind.channel_axes):
                raise ValueError(f"layer {layer.name!r}: its QGTRegularizer has channel_axes "
                                 f"{regularizer.channel_axes!r}, a {kind.name} kernel's are {kind.channel_axes!r}")
            found.append(QuantizedKernel(layer, kind.kernel(layer), regularizer.bits, regularizer,
                                         kind.channel_axes, regularizer.scale))
    return found

"""The one table of the layer kinds QGT quantizes, and the bytes their packed kernels take.

Per Keras layer class: the attribute that holds its kernel, the constructor argument of the kernel's
regularizer, the kernel's output-channel axes (one grid scale each) and the TFLite op it converts to. The
quantized layers, ``quantize_model``, the report, the plots, the model builders and the exporter all read
these facts here.

Packed sizes: the packer stores a b-bit code in the smallest of 1, 2, 4 or 8 bits that holds it (a 3-bit
code takes 4 bits, a 5- to 7-bit code 8), so byte counts and budgets use that width, not b.
"""

import dataclasses
import math

import numpy as np
import tf_keras as keras

from qgt_keras import quantizers

STORAGE_WIDTHS = (1, 2, 4, 8)
FLOAT_BITS = 32  # a float32 kernel, in byte counts that mix float and quantized layers


@dataclasses.dataclass(frozen=True)
class LayerKind:
    """A Keras layer class with one kernel that QGT quantizes."""

    name: str
    keras_class: type
    kernel_attribute: str
    regularizer_argument: str
    channel_axes: object  # -1: the last axis; (2, 3): a depthwise kernel's input channel x multiplier
    tflite_op: str

    def kernel(self, layer):
        return getattr(layer, self.kernel_attribute)


CONV_2D = LayerKind("Conv2D", keras.layers.Conv2D, "kernel", "kernel_regularizer", -1, "CONV_2D")
DEPTHWISE_CONV_2D = LayerKind("DepthwiseConv2D", keras.layers.DepthwiseConv2D, "depthwise_kernel",
                              "depthwise_regularizer", (2, 3), "DEPTHWISE_CONV_2D")
DENSE = LayerKind("Dense", keras.layers.Dense, "kernel", "kernel_regularizer", -1, "FULLY_CONNECTED")
KINDS = (CONV_2D, DEPTHWISE_CONV_2D, DENSE)
BY_NAME = {kind.name: kind for kind in KINDS}
_BY_CLASS = {kind.keras_class: kind for kind in KINDS}


def kind_of(layer):
    """The :class:`LayerKind` of ``layer``, or None. Quantized layers name theirs (``layer_kind``); plain
    layers match by exact class, because subclasses such as Conv2DTranspose compute something else."""
    return getattr(type(layer), "layer_kind", None) or _BY_CLASS.get(type(layer))


def storage_bits(bits):
    """Bits the packer stores one b-bit code in (1, 2, 4 or 8)."""
    bits = quantizers.check_bits(bits)
    return next(width for width in STORAGE_WIDTHS if width >= bits)


def packed_bytes(num_weights, bits):
    """Bytes of ``num_weights`` b-bit codes packed back to back at their storage width."""
    return math.ceil(num_weights * storage_bits(bits) / 8)


def kernel_sizes(model):
    """{layer name: kernel weights} of the layers of ``model`` that have a layer kind, in model order."""
    return {layer.name: int(np.prod(kind_of(layer).kernel(layer).shape)) for layer in model.layers
            if kind_of(layer) is not None}


def weight_bytes(sizes, bits_by_layer):
    """Kernel bytes of layers ``sizes`` ({name: weights}): packed at their bits, float32 where a layer is
    missing from ``bits_by_layer`` or has :data:`FLOAT_BITS`."""
    return sum(4 * count if bits_by_layer.get(name, FLOAT_BITS) == FLOAT_BITS
               else packed_bytes(count, bits_by_layer[name]) for name, count in sizes.items())


def mean_bits(sizes, bits_by_layer):
    """Stored bits per kernel weight, on average (what :func:`weight_bytes` counts)."""
    return round(8 * weight_bytes(sizes, bits_by_layer) / sum(sizes.values()), 2)

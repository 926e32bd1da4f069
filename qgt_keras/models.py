"""Model builders: MobileNetV1 as in the MLPerf Tiny / TFLM person detector, a MobileNet-style net for 28x28
inputs, a small CNN for fast tests, and initialization from a trained float model.

All models are tf_keras Functional models ending in a softmax, with layer names a quantization policy can
target:

    conv1                       first (full) convolution, then conv1_bn, conv1_relu
    dw1, pw1, ... dwN, pwN      depthwise-separable block i: depthwise 3x3 (dw{i}_bn, dw{i}_relu), then
                                pointwise 1x1 (pw{i}_bn, pw{i}_relu)
    pool, flatten               average pooling over the whole last feature map
    dense, softmax              classifier (linear Dense, then a Softmax layer)

The layout follows the MLPerf Tiny VWW reference (MobileNetV1, alpha 0.25, 96x96x3): 3x3 convolutions with
'same' padding, BatchNormalization (epsilon 1e-3, momentum 0.99) and ReLU after every convolution, L2 1e-4
on the full and pointwise kernels, average pooling (TFLite AVERAGE_POOL_2D) and a dense softmax. The
reference also gives every convolution a bias; a bias before BatchNormalization only shifts the moving
mean, so by default the convolutions here have none (219,058 parameters instead of 221,794) and
:func:`init_from` folds the reference biases into the BatchNormalization moving means, which is exact.
"""

import os

import numpy as np
import tf_keras as keras

from qgt_keras import layer_kinds, serialization

# (depthwise stride, pointwise filters at alpha = 1) of MobileNetV1's 13 blocks, after a 32-filter stem.
MOBILENET_V1_BLOCKS = ((1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
                       (1, 512), (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024))
# The 28x28 variant: a stride-1 16-filter stem and five blocks down to 7x7 (about 38k parameters).
MOBILENET_28_BLOCKS = ((1, 32), (2, 64), (1, 64), (2, 128), (1, 128))
L2_WEIGHT_DECAY = 1e-4  # MLPerf Tiny VWW
BN_MOMENTUM = 0.99  # MLPerf Tiny VWW (the Keras default)
# The MLPerf Tiny VWW reference float weights (MobileNetV1-0.25, 96x96x3; the file the tests use is
# ../shared/reference_models/mlperf_tiny_vww_96.h5, relative to the repository root).
MLPERF = "mlperf"
MLPERF_URL = ("https://github.com/mlcommons/tiny/raw/master/benchmark/training/visual_wake_words/"
              "trained_models/vww_96.h5")
MLPERF_ENVIRONMENT_VARIABLE = "QGT_MLPERF_WEIGHTS"
MLPERF_DEFAULT_LOCATION = "~/.keras/qgt/mlperf_tiny_vww_96.h5"


def mobilenet_v1(input_shape=(96, 96, 3), alpha=0.25, num_classes=2, *, weight_decay=L2_WEIGHT_DECAY,
                 use_bias=False, bn_momentum=BN_MOMENTUM, name="mobilenet_v1"):
    """MobileNetV1: a stride-2 3x3 stem, 13 depthwise-separable blocks, average pooling, dense softmax.

    Args:
        input_shape: (height, width, channels); the MLPerf reference uses (96, 96, 3), the TFLM person
            detection example (96, 96, 1).
        alpha: width multiplier: every layer has ``int(filters * alpha)`` channels (0.25 for VWW).
        num_classes: outputs of the dense layer.
        weight_decay: L2 factor on the full and pointwise convolution kernels (0 for none).
        use_bias: give the convolutions a bias, as the MLPerf reference does (redundant before BN).
        bn_momentum: BatchNormalization moving-average momentum; lower it (e.g. 0.9) for runs of only a
            few hundred steps, whose moving statistics would otherwise still be near their initial values.
    """
    return _mobilenet(input_shape, num_classes, int(32 * alpha), 2,
                      tuple((stride, int(filters * alpha)) for stride, filters in MOBILENET_V1_BLOCKS),
                      weight_decay, use_bias, bn_momentum, name)


def mobilenet_28(input_shape=(28, 28, 1), num_classes=10, *, alpha=1.0, weight_decay=L2_WEIGHT_DECAY,
                 use_bias=False, bn_momentum=BN_MOMENTUM, name="mobilenet_28"):
    """A MobileNet-style net for 28x28 inputs such as Fashion-MNIST (~38k parameters at alpha 1).

    Same layer kinds and names as :func:`mobilenet_v1`: a stride-1 3x3 stem of 16 filters and five
    depthwise-separable blocks (pointwise 32, 64, 64, 128, 128; stride 2 in blocks 2 and 4).
    """
    return _mobilenet(input_shape, num_classes, int(16 * alpha), 1,
                      tuple((stride, int(filters * alpha)) for stride, filters in MOBILENET_28_BLOCKS),
                      weight_decay, use_bias, bn_momentum, name)


def small_cnn(input_shape=(96, 96, 3), num_classes=2, *, filters=8, bn_momentum=0.9, name="small_cnn"):
    """A few-layer CNN with every layer kind of MobileNet (conv1, dw1, pw1, dense) for fast tests and quick
    runs (hence the lower BatchNormalization momentum)."""
    return _mobilenet(input_shape, num_classes, filters, 2, ((2, 2 * filters),), 0.0, False, bn_momentum, name)


MODELS = {"mobilenet_v1": mobilenet_v1, "mobilenet_28": mobilenet_28, "small_cnn": small_cnn}


def build_model(name, **kwargs):
    """Builds a model of :data:`MODELS` by name, e.g. ``build_model("mobilenet_v1", alpha=0.25)``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name](**kwargs)


def _mobilenet(input_shape, num_classes, stem_filters, stem_stride, blocks, weight_decay, use_bias, bn_momentum,
               name):
    regularizer = keras.regularizers.L2(weight_decay) if weight_decay else None

    def conv_bn_relu(x, layer, layer_name):
        x = layer(x)
        x = keras.layers.BatchNormalization(momentum=bn_momentum, name=f"{layer_name}_bn")(x)
        return keras.layers.ReLU(name=f"{layer_name}_relu")(x)

    inputs = keras.Input(shape=input_shape, name="input")
    x = conv_bn_relu(inputs, keras.layers.Conv2D(
        stem_filters, 3, strides=stem_stride, padding="same", use_bias=use_bias, kernel_regularizer=regularizer,
        name="conv1"), "conv1")
    for i, (stride, filters) in enumerate(blocks, start=1):
        x = conv_bn_relu(x, keras.layers.DepthwiseConv2D(
            3, strides=stride, padding="same", use_bias=use_bias, name=f"dw{i}"), f"dw{i}")
        x = conv_bn_relu(x, keras.layers.Conv2D(
            filters, 1, padding="same", use_bias=use_bias, kernel_regularizer=regularizer, name=f"pw{i}"),
            f"pw{i}")
    # Pooling over the whole map (not GlobalAveragePooling2D) converts to TFLite AVERAGE_POOL_2D, as in MLPerf.
    x = keras.layers.AveragePooling2D(pool_size=tuple(x.shape[1:3]), name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(num_classes, name="dense")(x)
    outputs = keras.layers.Softmax(name="softmax")(x)
    return keras.Model(inputs, outputs, name=name)


def weights_file(name_or_path):
    """The file of ``name_or_path``: :data:`MLPERF` names the MLPerf Tiny VWW reference weights, found at
    ``$QGT_MLPERF_WEIGHTS`` or else :data:`MLPERF_DEFAULT_LOCATION`; anything else is a path. Raises
    FileNotFoundError saying where to get the file when it is not there."""
    if name_or_path != MLPERF:
        if not os.path.isfile(name_or_path):
            raise FileNotFoundError(f"weights file {name_or_path} does not exist")
        return name_or_path
    path = os.environ.get(MLPERF_ENVIRONMENT_VARIABLE) or os.path.expanduser(MLPERF_DEFAULT_LOCATION)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the MLPerf Tiny VWW reference weights are not at {path}: download {MLPERF_URL} "
                                f"there, or point {MLPERF_ENVIRONMENT_VARIABLE} at your copy")
    return path


def init_from(model, path):
    """Copies the float weights of a saved tf_keras model into ``model`` layer by layer; returns ``model``.

    Meant for the MLPerf Tiny VWW reference (``path`` = :data:`MLPERF`, see :func:`weights_file`) into
    ``mobilenet_v1()``, and works for any saved model with the same sequence of layers: see
    :func:`copy_weights`.
    """
    path = weights_file(path)
    return copy_weights(serialization.load_model(path), model, source_name=str(path))


def copy_weights(source, target, source_name="source model"):
    """Copies the weights of ``source``'s Conv2D, DepthwiseConv2D, BatchNormalization and Dense layers into
    ``target``'s, paired in model order; returns ``target``.

    Layer names may differ; kinds and weight shapes must match, except:

    * a convolution bias on one side only: a source bias is folded into the moving mean of the
      BatchNormalization that follows (exact), a target bias is set to zero;
    * an RGB source stem into a 1-channel target: the kernel is summed over the color channels, which
      gives the same outputs on a gray image that the source gives on that image repeated in R, G and B.

    Raises:
        ValueError: the layer sequences or a weight shape do not match; the message names both layers.
    """
    source_layers, target_layers = _weighted_layers(source), _weighted_layers(target)
    if [_kind(layer) for layer in source_layers] != [_kind(layer) for layer in target_layers]:
        raise ValueError(
            f"{source_name} and {target.name} have different layer sequences:\n"
            f"  {source_name}: {' '.join(_kind(layer) for layer in source_layers)}\n"
            f"  {target.name}: {' '.join(_kind(layer) for layer in target_layers)}")
    pending_bias = None  # a source convolution bias waiting for its BatchNormalization
    for previous, src, dst in zip([None] + source_layers, source_layers, target_layers):
        weights = src.get_weights()
        if pending_bias is not None:
            if not isinstance(src, keras.layers.BatchNormalization):
                raise ValueError(f"{target.name} layer {dst.name} follows a bias-free convolution without "
                                 f"BatchNormalization to absorb the bias of {source_name} layer {previous.name}")
            gamma, beta, mean, variance = weights
            weights = [gamma, beta, mean - pending_bias, variance]  # BN(x + b) equals BN(x) with mean - b
            pending_bias = None
        if _kind(src) in (layer_kinds.CONV_2D.name, layer_kinds.DEPTHWISE_CONV_2D.name):
            has_bias = len(weights) == 2
            if has_bias and not dst.use_bias:
                weights, pending_bias = weights[:1], weights[1]
            elif dst.use_bias and not has_bias:
                weights = weights + [np.zeros(dst.get_weights()[1].shape, np.float32)]
            kernel, wanted = weights[0], dst.get_weights()[0].shape
            if kernel.shape[2] == 3 and wanted[2] == 1 and src is source_layers[0]:
                weights[0] = kernel.sum(axis=2, keepdims=True)
        if [w.shape for w in weights] != [w.shape for w in dst.get_weights()]:
            raise ValueError(f"{source_name} layer {src.name} {[w.shape for w in weights]} does not fit "
                             f"{target.name} layer {dst.name} {[w.shape for w in dst.get_weights()]}")
        dst.set_weights(weights)
    if pending_bias is not None:
        raise ValueError(f"the bias of {source_name}'s last layer has no BatchNormalization to go into")
    return target


def _weighted_layers(model):
    return [layer for layer in model.layers if _kind(layer) is not None]


def _kind(layer):
    """The layer kind's name (layer_kinds), "BatchNormalization", or None for layers without such weights."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return "BatchNormalization"
    kind = layer_kinds.kind_of(layer)
    return kind.name if kind is not None else None

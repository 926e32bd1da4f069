"""One-call model conversion: ``quantize_model`` (float -> QGT) and ``strip_quantization`` (QGT -> float).

The user's model code stays as it is: they build a tf_keras model, call ``quantize_model(model, policy)``
and compile/fit the result with their own code.
"""

import contextlib
import dataclasses

import numpy as np
import tensorflow as tf
import tf_keras as keras

from qgt_keras import layer_kinds, quantizers
from qgt_keras.layers import QUANTIZED_CLASSES, QUANTIZED_LAYERS, check_scale_interval, quantized_kernels
from qgt_keras.regularizers import DEFAULT_STRENGTH, QGTRegularizer

# Layers with weights that QGT passes through unchanged (BatchNormalization is folded into the preceding
# kernel at export; a per-channel grid survives folding).
PASS_THROUGH_WITH_WEIGHTS = (keras.layers.BatchNormalization,)


@dataclasses.dataclass
class QuantizationPolicy:
    """Which bit width each Conv2D / DepthwiseConv2D / Dense layer gets, and the QGT term's settings.

    Bits of a layer, first match wins: ``overrides[layer name]``; ``edge_bits`` for the first and the last
    quantizable layer (None: no special case); ``overrides[layer type name]`` ("Conv2D", "DepthwiseConv2D",
    "Dense"); ``bits``. Layers named in ``skip`` stay float. ``scale`` is the scale method of the layers'
    quantizers (hard-quantization phase, snapping), ``regularizer_scale`` the one the QGT term uses at every
    step (see ``quantizers.estimate_scale``); ``scale_interval`` > 1 makes the layers re-estimate their scales
    (by ``scale``) only every that many training steps and use them for both (qgt_keras.layers).
    ``strength=None`` gives the layers no QGT term at all (plain STE training and post-training quantization:
    a term of strength 0 would still be computed every step).
    """

    bits: int = 2
    overrides: dict = dataclasses.field(default_factory=dict)
    edge_bits: object = 8
    strength: float = DEFAULT_STRENGTH
    outlier_weight: float = 1.0
    scale: str = "mse"
    regularizer_scale: str = "lloyd"
    scale_interval: int = 1
    skip: tuple = ()

    def __post_init__(self):
        if not isinstance(self.overrides, dict):
            raise TypeError(f"policy overrides must be a dict {{layer name or type: bits}}, got {self.overrides!r}")
        if isinstance(self.skip, str) or not all(isinstance(name, str) for name in self.skip):
            raise TypeError(f"policy skip must be a list of layer names, got {self.skip!r}"
                            + (f" (did you mean skip=({self.skip!r},)?)" if isinstance(self.skip, str) else ""))
        if self.strength is not None and not self.strength >= 0:
            raise ValueError(f"policy strength must be a number >= 0 or None (no QGT term), got {self.strength!r}")
        quantizers.check_bits(self.bits, "policy bits")
        if self.edge_bits is not None:
            quantizers.check_bits(self.edge_bits, "policy edge_bits")
        for key, value in self.overrides.items():
            quantizers.check_bits(value, f"policy override bits for {key!r}")
        check_scale_interval(self.scale_interval, "policy scale_interval")
        for name in ("scale", "regularizer_scale"):
            if getattr(self, name) not in quantizers.SCALE_METHODS:
                raise ValueError(
                    f"policy {name} must be one of {quantizers.SCALE_METHODS}, got {getattr(self, name)!r}")

    def resolve(self, model):
        """{layer name: bits} for the quantizable layers of ``model`` (checked against the model)."""
        layers = _quantizable_layers(model)
        names = {layer.name for layer in model.layers}
        for key in list(self.overrides) + list(self.skip):
            if key not in names and key not in layer_kinds.BY_NAME:
                raise ValueError(
                    f"policy names {key!r}, which is neither a layer of model {model.name!r} nor one of "
                    f"{sorted(layer_kinds.BY_NAME)}; quantizable layers: {[layer.name for layer in layers]}")
            if key in names and key not in {layer.name for layer in layers}:
                raise ValueError(
                    f"policy names layer {key!r} ({type(model.get_layer(key)).__name__}), which has no kernel "
                    f"to quantize; quantizable layers: {[layer.name for layer in layers]}")
        kept = [layer for layer in layers if layer.name not in self.skip]
        edges = {kept[0].name, kept[-1].name} if kept and self.edge_bits is not None else set()
        resolved = {}
        for layer in kept:
            if layer.name in self.overrides:
                resolved[layer.name] = int(self.overrides[layer.name])
            elif layer.name in edges:
                resolved[layer.name] = int(self.edge_bits)
            else:
                resolved[layer.name] = int(self.overrides.get(layer_kinds.kind_of(layer).name, self.bits))
        return resolved


def check_tf_keras_model(model):
    """Raises a TypeError with the fix when ``model`` is not a tf_keras Sequential/Functional model, and a
    ValueError when it is not built."""
    if isinstance(model, keras.Model):
        if not (isinstance(model, keras.Sequential) or model._is_graph_network):
            raise TypeError(
                f"model {model.name!r} is a subclassed Model; build it with the Sequential or Functional API")
        if not model.built:
            raise ValueError(f"model {model.name!r} is not built, so its layers have no weights yet: start it with "
                             "keras.Input(shape) or call model.build(input_shape)")
        return
    module = type(model).__module__
    if module.startswith("keras"):
        raise TypeError(
            f"model {getattr(model, 'name', model)!r} is a Keras 3 model ({type(model).__name__} from {module}); "
            "build it with tf_keras (`import tf_keras as keras`): QAT tools need the Keras 2 API")
    raise TypeError(f"expected a tf_keras Model, got {type(model).__name__}")


def _quantizable_layers(model):
    """Layers QGT quantizes, in order; raises for layers with weights it does not support."""
    quantizable = []
    for layer in model.layers:
        if isinstance(layer, QUANTIZED_LAYERS):
            raise ValueError(f"layer {layer.name!r} is already quantized; pass the float model")
        if layer_kinds.kind_of(layer) is not None:
            quantizable.append(layer)
        elif isinstance(layer, keras.Model):
            raise ValueError(f"layer {layer.name!r} is a nested model; flatten it into one Functional model")
        elif layer.weights and not isinstance(layer, PASS_THROUGH_WITH_WEIGHTS):
            raise ValueError(
                f"layer {layer.name!r} of type {type(layer).__name__} is not supported by QGT (supported: "
                f"{sorted(layer_kinds.BY_NAME)}, BatchNormalization and layers without weights)")
    return quantizable


def quantize_model(model, policy=None, **policy_kwargs):
    """Returns a copy of ``model`` in which every quantizable layer is its quantized counterpart with a
    ``QGTRegularizer`` (none with ``strength=None``), weights copied, in the QGT phase (float forward pass).

    ``policy`` is a QuantizationPolicy; or pass its fields as keyword arguments:
    ``quantize_model(model, bits=2, overrides={"conv1": 8})``. Compile and fit the result as usual.
    """
    check_tf_keras_model(model)
    if policy is None:
        policy = QuantizationPolicy(**policy_kwargs)
    elif policy_kwargs:
        raise ValueError("pass either a policy or policy fields, not both")
    bits_by_layer = policy.resolve(model)
    norms = _batchnorm_after(model, bits_by_layer)

    def clone(layer):
        config = layer.get_config()
        if layer.name in norms.values():
            config["gamma_constraint"] = keras.constraints.serialize(keras.constraints.NonNeg())
        if layer.name not in bits_by_layer:
            return layer.__class__.from_config(config)
        kind = layer_kinds.kind_of(layer)
        bits = bits_by_layer[layer.name]
        if policy.strength is not None:
            config[kind.regularizer_argument] = QGTRegularizer(
                bits, policy.strength, policy.outlier_weight, policy.regularizer_scale, kind.channel_axes,
                base=config.get(kind.regularizer_argument))
        return QUANTIZED_CLASSES[kind].from_config(
            {**config, "bits": bits, "scale": policy.scale, "scale_interval": policy.scale_interval})

    quantized = keras.models.clone_model(model, clone_function=clone)
    for original in model.layers:
        copy = quantized.get_layer(original.name)
        weights = original.get_weights()
        # A quantized layer's own weights follow the original's and keep their initial values: the quantize
        # gate 0 (start in the QGT phase) and, with a scale interval, scales not yet estimated.
        copy.set_weights(weights + copy.get_weights()[len(weights):])
    for layer_name, norm_name in norms.items():
        _make_gamma_nonnegative(quantized.get_layer(layer_name), quantized.get_layer(norm_name))
    return quantized


def _batchnorm_after(model, layer_names):
    """{layer: the BatchNormalization that is its only consumer} for the named layers.

    Folding BatchNorm multiplies each output channel of the kernel by gamma / sigma: a negative gamma
    mirrors the channel's codes, and the mirror of a two's complement grid ({-2..1} -> {-1..2}) is not the
    grid. quantize_model therefore makes these gammas non-negative (flipping the channel instead, which is
    exact) and constrains them to stay so."""
    pairs = {}
    for name in layer_names:
        nodes = model.get_layer(name).outbound_nodes
        consumer = nodes[0].layer if len(nodes) == 1 else None
        if (isinstance(consumer, keras.layers.BatchNormalization) and consumer.scale
                and list(consumer.axis) == [len(consumer.input_shape) - 1]):
            pairs[name] = consumer.name
    return pairs


def _make_gamma_nonnegative(layer, norm):
    """Flips the sign of every channel whose gamma is negative in the kernel, bias, gamma and moving mean:
    gamma (x - mean) = |gamma| (-x - (-mean)), so the model computes exactly the same."""
    gamma, beta, moving_mean, moving_variance = norm.get_weights()
    sign = np.where(gamma < 0, -1.0, 1.0).astype(gamma.dtype)
    if np.all(sign > 0):
        return
    kernel = layer.layer_kind.kernel(layer)
    flipped = quantizers.channels_last_2d(kernel, layer.layer_kind.channel_axes) * sign
    kernel.assign(tf.reshape(flipped, kernel.shape))
    if layer.use_bias:
        layer.bias.assign(layer.bias * sign)
    norm.set_weights([gamma * sign, beta, moving_mean * sign, moving_variance])


def set_hard_quantization(model, enabled=True):
    """Switches every quantized layer of ``model`` to (or from) the hard-quantization phase."""
    for layer in model.layers:
        if isinstance(layer, QUANTIZED_LAYERS):
            layer.set_hard_quantization(enabled)


@contextlib.contextmanager
def float_forward(model):
    """Runs ``model``'s quantized layers in float inside the block, restoring each layer's phase after."""
    layers = [layer for layer in model.layers if isinstance(layer, QUANTIZED_LAYERS)]
    gates = [layer.quantize_gate.numpy() for layer in layers]
    try:
        for layer in layers:
            layer.set_hard_quantization(False)
        yield model
    finally:
        for layer, gate in zip(layers, gates):
            layer.quantize_gate.assign(gate)


def layer_bits(model):
    """{layer name: bits} of every quantized kernel of ``model``."""
    return {entry.name: entry.bits for entry in quantized_kernels(model)}


def strip_quantization(model, snap=True):
    """A plain tf_keras copy of a QGT ``model`` (Conv2D/DepthwiseConv2D/Dense, no QGT regularizers), with
    each quantized kernel replaced by its grid values when ``snap``. Use ``layer_bits(model)`` for the bits.
    This is what the exporter converts."""
    check_tf_keras_model(model)

    def clone(layer):
        config = layer.get_config()
        kind = layer_kinds.kind_of(layer)
        if kind is None:
            return layer.__class__.from_config(config)
        config[kind.regularizer_argument] = _without_qgt(config[kind.regularizer_argument])
        if not isinstance(layer, QUANTIZED_LAYERS):
            return layer.__class__.from_config(config)
        for key in ("bits", "scale", "scale_interval"):
            config.pop(key, None)  # a model saved before scale_interval existed has none
        return kind.keras_class.from_config(config)

    plain_model = keras.models.clone_model(model, clone_function=clone)
    snapped = {entry.name: entry.snapped() for entry in quantized_kernels(model)} if snap else {}
    for layer in model.layers:
        plain_layer = plain_model.get_layer(layer.name)
        weights = layer.get_weights()[:len(plain_layer.weights)]  # without a quantized layer's own weights
        if layer.name in snapped:
            weights[0] = snapped[layer.name].numpy()
        plain_layer.set_weights(weights)
    return plain_model


def _without_qgt(regularizer_config):
    """The serialized regularizer with the QGT term removed (its base regularizer, or None)."""
    regularizer = keras.regularizers.get(regularizer_config)
    if isinstance(regularizer, QGTRegularizer):
        regularizer = regularizer.base
    return keras.regularizers.serialize(regularizer) if regularizer is not None else None


def snap_weights(model):
    """Replaces every quantized kernel of ``model`` by its grid values, in place."""
    for entry in quantized_kernels(model):
        entry.kernel.assign(tf.cast(entry.snapped(), entry.kernel.dtype))


def _input_batches(dataset, max_batches=None):
    """The inputs of ``dataset``'s batches (of inputs, or of (inputs, labels)), the first ``max_batches`` only
    if given."""
    for seen, batch in enumerate(dataset):
        if max_batches is not None and seen >= max_batches:
            return
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def recalibrate_batchnorm(model, dataset, max_batches=None):
    """Re-estimates every BatchNormalization layer's moving mean and variance as the average of the batch
    statistics of ``dataset`` (batches of inputs, or of (inputs, labels)), with all weights frozen.

    Call it after snapping or after hard-quantized training: the moving averages are collected while the
    weights (and in hard quantization their grid scales) still move, so they lag behind the final kernels;
    in inference that mismatch can cost tens of points although training accuracy looks fine. (In a model of
    wrapped layers, such as tfmot's, whatever else the wrappers track in training mode moves with them.)
    """
    # Also those inside wrappers (tfmot's quantize wrappers hold one layer each).
    norms = [inner for inner in (getattr(layer, "layer", None) if isinstance(layer, keras.layers.Wrapper) else layer
                                 for layer in model.layers) if isinstance(inner, keras.layers.BatchNormalization)]
    if not norms:
        return 0
    for layer in model.layers:  # training-mode calls below: quantized layers must use their current scales
        if isinstance(layer, QUANTIZED_LAYERS):
            layer.expire_scale_cache()
    momenta = [layer.momentum for layer in norms]
    trainable = [layer.trainable for layer in norms]
    seen = 0
    try:
        for inputs in _input_batches(dataset, max_batches):
            for layer in norms:
                # moving = momentum * moving + (1 - momentum) * batch: with momentum k / (k + 1) at batch k
                # the moving value is the plain average of the batch statistics seen so far.
                layer.momentum = seen / (seen + 1)
                layer.trainable = True
            model(inputs, training=True)
            seen += 1
    finally:
        for layer, momentum, was_trainable in zip(norms, momenta, trainable):
            layer.momentum = momentum
            layer.trainable = was_trainable
    if seen == 0:
        raise ValueError(f"recalibrate_batchnorm: the dataset for model {model.name!r} yielded no batch")
    return seen


def _chain_segments(model, norms):
    """Per BatchNormalization layer of ``norms`` (in model order): a model from the previous one's output (the
    model's input for the first) to its input. Raises ValueError naming the layer whose input needs more."""
    segments, start = [], model.inputs
    for layer in norms:
        if list(layer.axis) != [len(layer.input_shape) - 1]:
            raise ValueError(f"layer {layer.name!r} of model {model.name!r} normalizes axis {layer.axis}: anchoring "
                             "handles channels-last BatchNormalization only")
        try:
            segments.append(keras.Model(start, layer.input))
        except ValueError as error:
            raise ValueError(f"anchoring needs a model whose BatchNormalization layers form a chain (as in "
                             f"MobileNet): the input of layer {layer.name!r} of model {model.name!r} is not computed "
                             f"from the previous one's output alone") from error
        start = layer.output
    return segments


def _moments(tensors):
    """Per-channel (mean, variance) over every example and position of a list of channels-last tensors."""
    count, total, squares = 0, 0.0, 0.0
    for tensor in tensors:
        axes = list(range(tensor.shape.rank - 1))
        count += int(np.prod(tensor.shape[:-1]))
        total += tf.reduce_sum(tensor, axis=axes).numpy().astype(np.float64)
        squares += tf.reduce_sum(tf.square(tensor), axis=axes).numpy().astype(np.float64)
    mean = total / count
    return mean, np.maximum(squares / count - np.square(mean), 0.0)


def _norms_of(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def _batches_of(model, dataset, max_batches, caller):
    batches = [tf.convert_to_tensor(batch) for batch in _input_batches(dataset, max_batches)]
    if not batches:
        raise ValueError(f"{caller}: the dataset for model {model.name!r} yielded no batch")
    return batches


def batchnorm_input_moments(model, dataset, max_batches=None):
    """Per BatchNormalization layer of ``model`` (in model order): the per-channel (mean, variance) of its input
    on the batches of ``dataset``, computed in inference mode, and the layer's stored moving mean and variance:
    what :func:`anchor_batchnorm` anchors to. For a reference that does not change (a frozen teacher) compute
    them once and pass them as ``reference_moments``. Raises ValueError as :func:`anchor_batchnorm` does."""
    norms = _norms_of(model)
    activations = _batches_of(model, dataset, max_batches, "batchnorm_input_moments")
    moments = []
    for segment, layer in zip(_chain_segments(model, norms), norms):
        inputs = [segment(a, training=False) for a in activations]
        moments.append((*_moments(inputs), layer.moving_mean.numpy().astype(np.float64),
                        layer.moving_variance.numpy().astype(np.float64), layer.epsilon))
        activations = [layer(z, training=False) for z in inputs]
    return moments


def anchor_batchnorm(model, reference, dataset, max_batches=None, reference_moments=None):
    """Sets ``model``'s BatchNormalization statistics so that, on the batches of ``dataset``, every one of its
    BatchNormalization layers normalizes its input to the per-channel mean and spread that the matching layer
    of ``reference`` (in model order) produces from its own input; returns the number of layers set.
    ``reference_moments``: :func:`batchnorm_input_moments` of ``reference`` on the same batches, computed once
    where the reference does not change (``reference`` is then only named in errors).

    For a student quantized from a float ``reference`` (its teacher) this re-normalizes toward the reference
    instead of toward the data: re-estimating on the data (:func:`recalibrate_batchnorm`) replaces the
    statistics the reference collected on its own training set by those of ``dataset``, which is part of the
    reference's function (docs/RECIPE.md), while anchoring keeps the reference's offset between the two.
    With data mean m and variance v of a layer's input and stored mean mu and variance var,

        (var' + eps) = (var_r + eps_r) * (v + eps) / (v_r + eps_r),
        mu' = m - (m_r - mu_r) * sqrt((v + eps) / (v_r + eps_r)),

    ``_r`` the reference's; a model identical to ``reference`` keeps its statistics. Each layer's input depends
    on the statistics of the layers before it, so the layers are set in order, in one pass over the batches
    (held in memory); both models compute in inference mode, and gamma, beta and every other weight are left
    alone. The BatchNormalization layers must form a chain (each one's input computed from the previous one's
    output alone, as in MobileNet).

    Raises ValueError when the models' BatchNormalization layers do not pair up or form no chain, or
    ``dataset`` is empty.
    """
    norms = _norms_of(model)
    if reference_moments is None:
        reference_moments = batchnorm_input_moments(reference, dataset, max_batches)
    if len(norms) != len(reference_moments):
        raise ValueError(f"anchor_batchnorm: model {model.name!r} has {len(norms)} BatchNormalization layers, the "
                         f"reference {reference.name!r} {len(reference_moments)}")
    for layer, (_, _, stored_mean, _, _), anchor in zip(norms, reference_moments, _norms_of(reference)):
        if layer.moving_mean.shape[0] != len(stored_mean):
            raise ValueError(f"anchor_batchnorm: layer {layer.name!r} of model {model.name!r} has "
                             f"{layer.moving_mean.shape[0]} channels, layer {anchor.name!r} of the reference "
                             f"{reference.name!r} {len(stored_mean)}")
    activations = _batches_of(model, dataset, max_batches, "anchor_batchnorm")
    for segment, layer, (reference_mean, reference_variance, stored_mean, stored_variance, reference_epsilon) in zip(
            _chain_segments(model, norms), norms, reference_moments):
        inputs = [segment(a, training=False) for a in activations]
        mean, variance = _moments(inputs)
        ratio = np.sqrt((variance + layer.epsilon) / (reference_variance + reference_epsilon))
        layer.moving_mean.assign((mean - (reference_mean - stored_mean) * ratio).astype(np.float32))
        layer.moving_variance.assign(np.maximum((stored_variance + reference_epsilon) * np.square(ratio) -
                                                layer.epsilon, 0.0).astype(np.float32))
        activations = [layer(z, training=False) for z in inputs]
    return len(norms)

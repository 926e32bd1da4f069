"""Every quantized layer kind at every bit width: build, call, serialize, gradient (in the manner of larq's
layers_test)."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from qgt_keras import layer_kinds, quantizers
from qgt_keras.layers import QUANTIZED_CLASSES, QConv2D, QDense, QDepthwiseConv2D
from qgt_keras.regularizers import QGTRegularizer

# (quantized class, constructor arguments, input shape without the batch axis)
LAYERS = [
    (QConv2D, {"filters": 3, "kernel_size": 3, "padding": "same"}, (5, 5, 2)),
    (QDepthwiseConv2D, {"kernel_size": 3, "depth_multiplier": 2}, (5, 5, 3)),
    (QDense, {"units": 4}, (6,)),
]
BITS = range(1, 9)
parametrize_layers = pytest.mark.parametrize("cls, kwargs, input_shape", LAYERS,
                                             ids=[cls.__name__ for cls, _, _ in LAYERS])
parametrize_bits = pytest.mark.parametrize("bits", BITS)


def _built(cls, kwargs, input_shape, bits, with_regularizer=True):
    regularizer = {cls.layer_kind.regularizer_argument: QGTRegularizer(bits, channel_axes=cls.layer_kind.channel_axes)}
    layer = cls(bits=bits, name="q", **kwargs, **(regularizer if with_regularizer else {}))
    layer.build((None, *input_shape))
    kernel = cls.layer_kind.kernel(layer)
    kernel.assign(np.random.default_rng(bits).normal(size=kernel.shape).astype(np.float32))
    return layer


def _inputs(input_shape):
    return tf.constant(np.random.default_rng(0).normal(size=(2, *input_shape)).astype(np.float32))


def _twin(layer, kernel, x):
    """The plain tf_keras layer of ``layer``'s kind with its config and weights, but ``kernel`` as kernel."""
    config = {key: value for key, value in layer.get_config().items()
              if key not in ("bits", "scale", "scale_interval", layer.layer_kind.regularizer_argument)}
    twin = layer.layer_kind.keras_class.from_config(config)
    twin(x)  # builds it
    # The layer's weights begin with its base layer's (kernel first); its own (the quantize gate, ...) follow.
    twin.set_weights([kernel] + [w.numpy() for w in layer.weights[1:len(twin.weights)]])
    return twin


@parametrize_layers
@parametrize_bits
def test_build(cls, kwargs, input_shape, bits):
    layer = _built(cls, kwargs, input_shape, bits)
    assert layer.precision == bits and layer.layer_kind is layer_kinds.kind_of(layer)
    assert layer.quantize_gate.shape == () and float(layer.quantize_gate.numpy()) == 0.0
    assert not layer.quantize_gate.trainable
    assert layer.kernel_quantizer.channel_axes == cls.layer_kind.channel_axes
    assert layer.qgt_regularizer.bits == bits
    assert QUANTIZED_CLASSES[cls.layer_kind] is cls


@parametrize_layers
@parametrize_bits
def test_call_is_float_then_on_the_grid(cls, kwargs, input_shape, bits):
    layer = _built(cls, kwargs, input_shape, bits)
    x = _inputs(input_shape)
    kernel = cls.layer_kind.kernel(layer).numpy()
    np.testing.assert_allclose(layer(x), _twin(layer, kernel, x)(x), rtol=1e-5, atol=1e-6)
    layer.set_hard_quantization(True)
    snapped = quantizers.snap(kernel, bits, "mse", cls.layer_kind.channel_axes).numpy()
    np.testing.assert_allclose(layer(x), _twin(layer, snapped, x)(x), rtol=1e-5, atol=1e-6)
    assert not np.allclose(snapped, kernel)  # so the two checks differ
    np.testing.assert_array_equal(cls.layer_kind.kernel(layer).numpy(), kernel)  # the float kernel is kept


@parametrize_layers
@parametrize_bits
def test_serialize(cls, kwargs, input_shape, bits, tmp_path):
    layer = _built(cls, kwargs, input_shape, bits)
    config = layer.get_config()
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(clone) is cls and clone.get_config() == config
    inputs = keras.Input(input_shape)
    model = keras.Model(inputs, cls.from_config(config)(inputs))
    model.layers[1].set_weights(layer.get_weights())
    model.layers[1].set_hard_quantization(True)
    model.save(tmp_path / "model.keras")
    restored = keras.models.load_model(tmp_path / "model.keras")
    assert type(restored.layers[1]) is cls and restored.layers[1].bits == bits
    x = _inputs(input_shape)
    np.testing.assert_array_equal(restored(x), model(x))  # the phase gate is saved with the weights


@parametrize_layers
@parametrize_bits
def test_gradient(cls, kwargs, input_shape, bits):
    """Float phase: the plain layer's gradient; hard phase: the plain layer's at the snapped kernel, passed
    straight through to the float kernel (STE)."""
    layer = _built(cls, kwargs, input_shape, bits, with_regularizer=False)
    x = _inputs(input_shape)
    kernel_variable = cls.layer_kind.kernel(layer)
    kernel = kernel_variable.numpy()
    for hard, used in ((False, kernel), (True, quantizers.snap(kernel, bits, "mse", cls.layer_kind.channel_axes))):
        layer.set_hard_quantization(hard)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(layer(x)))
        twin = _twin(layer, used, x)
        with tf.GradientTape() as twin_tape:
            twin_loss = tf.reduce_sum(tf.square(twin(x)))
        expected = twin_tape.gradient(twin_loss, cls.layer_kind.kernel(twin))
        np.testing.assert_allclose(tape.gradient(loss, kernel_variable), expected, rtol=1e-4, atol=1e-5)
        assert np.abs(expected.numpy()).max() > 0


def _interval_layer(cls, kwargs, input_shape, interval=3, bits=2, regularizer_scale="lloyd"):
    regularizer = QGTRegularizer(bits, strength=1.0, scale=regularizer_scale, ramp_steps=0,
                                 channel_axes=cls.layer_kind.channel_axes)
    layer = cls(bits=bits, scale_interval=interval, name="q", **kwargs,
                **{cls.layer_kind.regularizer_argument: regularizer})
    layer.build((None, *input_shape))
    kernel = cls.layer_kind.kernel(layer)
    kernel.assign(np.random.default_rng(1).normal(size=kernel.shape).astype(np.float32))
    layer.set_hard_quantization(True)
    return layer, kernel


def _fresh_scale(layer, kernel):
    return layer.kernel_quantizer.estimate_scale(kernel).numpy()


@parametrize_layers
def test_scale_interval_reestimates_every_nth_training_step_and_uses_the_cache_between(cls, kwargs, input_shape):
    layer, kernel = _interval_layer(cls, kwargs, input_shape, interval=3)
    x = _inputs(input_shape)
    assert layer.kernel_scale.shape == (_fresh_scale(layer, kernel).size,) and not layer.kernel_scale.trainable
    cached = {}
    for step in range(7):
        if step:  # the weights move between the steps
            kernel.assign(kernel * 1.1 + 0.01)
        training_output = layer(x, training=True).numpy()
        if step % 3 == 0:
            cached = _fresh_scale(layer, kernel)
        np.testing.assert_array_equal(layer.kernel_scale.numpy(), cached)
        on_cached_grid = quantizers.snap(kernel, 2, channel_axes=cls.layer_kind.channel_axes, scale=cached).numpy()
        np.testing.assert_allclose(training_output, _twin(layer, on_cached_grid, x)(x).numpy(), rtol=1e-5, atol=1e-5)
        # The QGT term of the step uses the same cached scales.
        term = layer.qgt_regularizer.qgt_term(kernel, scale=cached).numpy()
        np.testing.assert_allclose(float(tf.add_n(layer.losses)), term, rtol=1e-6)
        if step % 3:  # the cache is stale here, so a fresh estimate would give another term and grid
            assert not np.allclose(term, layer.qgt_regularizer.qgt_term(kernel).numpy())
    assert int(layer.scale_age.numpy()) == 7
    # Inference estimates afresh: the layer computes what its export computes.
    snapped = layer.kernel_quantizer(kernel).numpy()
    np.testing.assert_allclose(layer(x).numpy(), _twin(layer, snapped, x)(x).numpy(), rtol=1e-5, atol=1e-5)
    assert int(layer.scale_age.numpy()) == 7


def test_scale_interval_term_before_any_training_step_estimates_afresh():
    # The layer's scales (its quantizer's MSE search), not the regularizer's own method (max, here).
    layer, kernel = _interval_layer(QDense, {"units": 4}, (6,), regularizer_scale="max")
    own = layer.qgt_regularizer.qgt_term(kernel).numpy()
    fresh = layer.qgt_regularizer.qgt_term(kernel, scale=_fresh_scale(layer, kernel)).numpy()
    assert not np.isclose(own, fresh)
    np.testing.assert_allclose(float(tf.add_n(layer.losses)), fresh, rtol=1e-6)


@pytest.mark.parametrize("interval", [0, -1, 1.5, True, "4"])
def test_scale_interval_must_be_a_positive_integer(interval):
    with pytest.raises(ValueError, match="scale_interval of layer 'q'"):
        QDense(4, bits=2, scale_interval=interval, name="q")


def test_scale_interval_serializes():
    layer, _ = _interval_layer(QConv2D, {"filters": 3, "kernel_size": 3}, (5, 5, 2), interval=16)
    config = layer.get_config()
    assert config["scale_interval"] == 16
    clone = QConv2D.from_config(config)
    assert clone.scale_interval == 16 and clone.get_config() == config

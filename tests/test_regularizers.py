import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from qgt_keras import quantizers
from qgt_keras.layers import quantized_kernels
from qgt_keras.regularizers import QGTRegularizer


def reference_value_and_gradient(w, bits, strength, outlier_weight):
    """R and dR/dw in numpy for a (N, C) kernel with the clip-free max scale."""
    qmin, qmax = quantizers.code_range(bits)
    scale = np.abs(w).mean(0) if bits == 1 else np.abs(w).max(0) / qmax
    channel_range = -qmin * scale
    codes = np.where(w >= 0, 1.0, -1.0) if bits == 1 else np.clip(np.round(w / scale), qmin, qmax)
    distance = (w - codes * scale) / channel_range
    beyond = np.maximum(np.abs(w) / channel_range - 1, 0)
    value = strength * ((distance ** 2).sum() + outlier_weight * (beyond ** 2).sum())
    gradient = strength * (2 * distance + outlier_weight * 2 * beyond * np.sign(w)) / channel_range
    return value, gradient


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_value_and_gradient_match_numpy(bits):
    w = np.random.default_rng(bits).normal(size=(40, 6)).astype(np.float64)
    regularizer = QGTRegularizer(bits, strength=0.7, outlier_weight=2.0, scale="max")
    variable = tf.Variable(w.astype(np.float32))
    with tf.GradientTape() as tape:
        value = regularizer(variable)
    expected_value, expected_gradient = reference_value_and_gradient(w, bits, 0.7, 2.0)
    np.testing.assert_allclose(float(value), expected_value, rtol=1e-4)
    np.testing.assert_allclose(tape.gradient(value, variable).numpy(), expected_gradient, rtol=1e-3,
                               atol=1e-4 * np.abs(expected_gradient).max())  # float32 vs float64 steps


@pytest.mark.parametrize("method", ["mse", "lloyd"])
def test_term_uses_the_grid_scale(method):
    w = np.random.default_rng(0).normal(size=(3, 3, 4, 5)).astype(np.float32)
    grid, outlier = QGTRegularizer(2, scale=method, channel_axes=-1).terms(w)
    codes, scale = quantizers.quantize(w, 2, method)
    steps = w.reshape(-1, 5) / scale.numpy()
    expected = ((steps - codes.numpy().reshape(-1, 5)) ** 2).sum() / 2 ** 2  # the 2-bit range is 2 steps
    np.testing.assert_allclose(float(grid), expected, rtol=1e-4)
    assert float(outlier) >= 0
    on_grid = quantizers.snap(w, 2).numpy()
    assert float(QGTRegularizer(2, scale=method, channel_axes=-1)(on_grid)) == pytest.approx(0, abs=1e-6)


def test_outlier_term_only_counts_weights_beyond_the_range():
    w = np.append(np.linspace(-1, 1, 200), 2.5).astype(np.float32)[:, None]
    _, outlier = QGTRegularizer(2, scale="max").terms(w)  # the clip-free scale: nothing beyond the range
    assert float(outlier) == 0
    _, outlier = QGTRegularizer(2, scale="mse").terms(w)  # the MSE scale fits the bulk and clips 2.5
    assert float(outlier) > 0


@pytest.mark.parametrize("scale, tiny", [("lloyd", 1e-15), ("mse", 1e-32)])
def test_dead_channels_are_left_out_instead_of_dividing_by_zero(scale, tiny):
    """A channel decayed to ~1e-15 (or, with the MSE scale, 1e-32) has a grid step as small: its relative
    gradient would be ~1e13 (or overflow); it is on any grid already, so the term leaves it out."""
    w = np.random.default_rng(5).normal(size=(9, 4)).astype(np.float32)
    w[:, 1] *= tiny
    w[:, 3] = 0
    variable = tf.Variable(w)
    with tf.GradientTape() as tape:
        value = QGTRegularizer(2, scale=scale)(variable)
    gradient = tape.gradient(value, variable).numpy()
    assert np.isfinite(float(value)) and np.all(np.isfinite(gradient))
    assert np.abs(gradient[:, [1, 3]]).max() < 1e-20
    live = QGTRegularizer(2, scale=scale)(w[:, [0, 2]])
    assert float(value) == pytest.approx(float(live), rel=1e-5)


def test_an_8bit_grid_pulls_far_less_than_a_2bit_grid():
    w = np.random.default_rng(4).normal(size=(64, 8)).astype(np.float32)
    assert float(QGTRegularizer(8)(w)) < float(QGTRegularizer(2)(w)) / 1000


def test_a_standalone_regularizer_finds_the_channels_of_its_layer():
    inputs = keras.Input((6, 6, 4))
    depthwise = keras.layers.DepthwiseConv2D(3, depthwise_regularizer=QGTRegularizer(2), name="dw")
    conv = keras.layers.Conv2D(5, 1, kernel_regularizer=QGTRegularizer(2), name="conv")
    keras.Model(inputs, conv(depthwise(inputs)))
    assert depthwise.depthwise_regularizer.kernel_channel_axes(depthwise.depthwise_kernel) == (2, 3)
    assert conv.kernel_regularizer.kernel_channel_axes(conv.kernel) == -1
    # Per channel, not one scale per tensor: rescaling one depthwise channel leaves the term unchanged.
    kernel = depthwise.depthwise_kernel.numpy()
    before = float(depthwise.losses[0])
    kernel[:, :, 1] *= 50
    depthwise.depthwise_kernel.assign(kernel)
    assert float(depthwise.losses[0]) == pytest.approx(before, rel=1e-4)
    with pytest.raises(ValueError, match=r"cannot tell the output channels of a rank-4 tensor.*channel_axes=-1"):
        QGTRegularizer(2)(np.zeros((3, 3, 4, 1), np.float32))
    matrix = np.random.default_rng(3).normal(size=(4, 3)).astype(np.float32)  # a matrix: channels last
    assert float(QGTRegularizer(2)(matrix)) == float(QGTRegularizer(2, channel_axes=-1)(matrix))


def test_a_regularizer_whose_channel_axes_contradict_its_layer_is_refused():
    inputs = keras.Input((6, 6, 4))
    model = keras.Model(inputs, keras.layers.DepthwiseConv2D(
        3, depthwise_regularizer=QGTRegularizer(2, channel_axes=-1), name="dw")(inputs))
    with pytest.raises(ValueError, match=r"layer 'dw': its QGTRegularizer has channel_axes -1, a DepthwiseConv2D"):
        quantized_kernels(model)


def test_depthwise_channel_axes_and_scale_invariance():
    w = np.random.default_rng(1).normal(size=(3, 3, 6, 1)).astype(np.float32)
    regularizer = QGTRegularizer(2, channel_axes=(2, 3))
    rescaled = w * np.array([1, 10, 100, 0.1, 1, 3], np.float32)[None, None, :, None]
    assert float(regularizer(rescaled)) == pytest.approx(float(regularizer(w)), rel=1e-4)


def test_strength_is_a_variable_and_base_is_added():
    w = np.random.default_rng(2).normal(size=(8, 3)).astype(np.float32)
    regularizer = QGTRegularizer(2, strength=1.0, base=keras.regularizers.L2(0.5))
    qgt = float(regularizer.qgt_term(w))
    assert float(regularizer(w)) == pytest.approx(qgt + 0.5 * (w ** 2).sum(), rel=1e-5)
    regularizer.strength = 3.0
    assert float(regularizer.qgt_term(w)) == pytest.approx(3 * qgt, rel=1e-5)


def test_config_round_trip_and_registration():
    regularizer = QGTRegularizer(3, strength=2.5, outlier_weight=0.5, scale="max", channel_axes=(2, 3),
                                 base=keras.regularizers.L2(1e-4))
    restored = keras.regularizers.deserialize(keras.regularizers.serialize(regularizer))
    assert isinstance(restored, QGTRegularizer)
    assert restored.get_config() == regularizer.get_config()


@pytest.mark.parametrize("kwargs, message", [
    ({"bits": 0}, "bits must be an integer in 1..8"),
    ({"bits": 2, "strength": -1}, "strength must be a finite number >= 0, got -1"),
    ({"bits": 2, "strength": "x"}, "strength must be a finite number >= 0, got 'x'"),
    ({"bits": 2, "outlier_weight": float("nan")}, "outlier_weight must be a finite number >= 0, got nan"),
    ({"bits": 2, "scale": "p99"}, "scale must be one of"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QGTRegularizer(**kwargs)


def _toy_regression_error(regularizer):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2048, 16)).astype(np.float32)
    y = x @ rng.normal(size=(16, 8)).astype(np.float32) + 0.1 * rng.normal(size=(2048, 8)).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8, kernel_regularizer=regularizer)])
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    model.fit(x, y, epochs=20, batch_size=64, verbose=0)
    error, power = quantizers.squared_error(model.layers[0].kernel, 2)
    return float(error / power)


def test_the_qgt_term_cuts_the_2bit_error_of_a_dense_layer_tenfold():
    plain = _toy_regression_error(None)
    qgt = _toy_regression_error(QGTRegularizer(bits=2, strength=5.0))
    assert qgt * 10 <= plain, (qgt, plain)

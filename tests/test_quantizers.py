import numpy as np
import pytest
import tensorflow as tf

from qgt_keras import quantizers


def reference_codes(w2d, scale, bits):
    if bits == 1:
        return np.where(w2d >= 0, 1.0, -1.0)
    qmin, qmax = quantizers.code_range(bits)
    return np.clip(np.round(w2d / scale), qmin, qmax)


def reference_error(w2d, scale, bits):
    return ((w2d - reference_codes(w2d, scale, bits) * scale) ** 2).sum(0)


@pytest.mark.parametrize("bits, expected", [
    (1, (-1, 1)), (2, (-2, 1)), (3, (-4, 3)), (4, (-8, 7)), (7, (-64, 63)), (8, (-127, 127))])
def test_code_range(bits, expected):
    assert quantizers.code_range(bits) == expected


@pytest.mark.parametrize("bad", [0, 9, -1, 2.0, "2", None, True])
def test_bits_out_of_range_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="must be an integer in 1..8"):
        quantizers.code_range(bad)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("shape", [(5, 3), (3, 3, 7, 5), (1, 13)])
def test_codes_on_grid_and_match_reference(bits, shape):
    w = np.random.default_rng(bits).normal(size=shape).astype(np.float32)
    codes, scale = quantizers.quantize(w, bits, "max")
    codes = codes.numpy()
    qmin, qmax = quantizers.code_range(bits)
    assert codes.shape == w.shape
    assert np.array_equal(codes, np.round(codes)) and codes.min() >= qmin and codes.max() <= qmax
    w2d = w.reshape(-1, shape[-1])
    expected_scale = np.abs(w2d).mean(0) if bits == 1 else np.abs(w2d).max(0) / qmax
    np.testing.assert_allclose(scale.numpy(), expected_scale, rtol=1e-6)
    np.testing.assert_array_equal(codes.reshape(-1, shape[-1]), reference_codes(w2d, expected_scale, bits))


@pytest.mark.parametrize("bits", range(1, 9))
def test_mse_scale_is_near_the_brute_force_optimum(bits):
    w2d = np.random.default_rng(10 + bits).standard_t(df=4, size=(300, 6)).astype(np.float32)
    scale = quantizers.mse_scale(w2d, bits).numpy()
    ours = reference_error(w2d, scale, bits)
    clip_free = quantizers.max_scale(w2d, bits).numpy()
    fine = [reference_error(w2d, clip_free * f, bits) for f in np.linspace(0.02, 1.2, 2000)]
    best = np.min(fine, axis=0)
    assert np.all(ours <= best * 1.02 + 1e-9)
    assert np.all(ours <= reference_error(w2d, clip_free, bits) * (1 + 1e-6))


@pytest.mark.parametrize("bits", range(1, 9))
def test_lloyd_scale_is_near_the_mse_scale_on_bell_shaped_channels(bits):
    w2d = np.random.default_rng(20 + bits).normal(size=(500, 8)).astype(np.float32)
    lloyd = reference_error(w2d, quantizers.lloyd_scale(w2d, bits).numpy(), bits)
    mse = reference_error(w2d, quantizers.mse_scale(w2d, bits).numpy(), bits)
    clip_free = reference_error(w2d, quantizers.max_scale(w2d, bits).numpy(), bits)
    assert np.all(lloyd <= clip_free * (1 + 1e-6))
    if bits <= 4:
        assert np.all(lloyd <= mse * 1.05)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("method", quantizers.SCALE_METHODS)
def test_snapping_is_idempotent(bits, method):
    w = np.random.default_rng(bits).normal(size=(3, 3, 4, 6)).astype(np.float32)
    once = quantizers.snap(w, bits, method).numpy()
    twice = quantizers.snap(once, bits, method).numpy()
    np.testing.assert_allclose(twice, once, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bits", range(1, 9))
def test_all_zero_channel(bits):
    w = np.random.default_rng(0).normal(size=(9, 4)).astype(np.float32)
    w[:, 2] = 0
    for method in quantizers.SCALE_METHODS:
        codes, scale = quantizers.quantize(w, bits, method)
        assert np.all(np.isfinite(scale.numpy())) and np.all(scale.numpy() > 0)
        snapped = quantizers.dequantize(codes, scale).numpy()
        assert np.abs(snapped[:, 2]).max() <= 1e-8
        assert np.all(np.isfinite(snapped))


def test_one_bit_is_sign_times_mean_magnitude():
    w = np.array([[0.5, -2.0], [-1.5, 0.0], [0.25, 1.0]], np.float32)
    codes, scale = quantizers.quantize(w, 1)
    np.testing.assert_array_equal(codes.numpy(), [[1, -1], [-1, 1], [1, 1]])
    np.testing.assert_allclose(scale.numpy(), [0.75, 1.0])


def test_eight_bit_error_is_tiny_and_codes_symmetric():
    w = np.random.default_rng(1).normal(size=(64, 8)).astype(np.float32)
    codes, _ = quantizers.quantize(w, 8)
    assert codes.numpy().min() >= -127
    error, power = quantizers.squared_error(w, 8)
    assert float(error / power) < 1e-4


def test_depthwise_kernels_are_per_output_channel():
    w = np.random.default_rng(2).normal(size=(3, 3, 5, 2)).astype(np.float32)
    w[..., 3, 1] *= 100  # one loud output channel must not coarsen the others
    scale = quantizers.estimate_scale(w, 4, "max", channel_axes=(2, 3)).numpy()
    assert scale.shape == (10,)
    np.testing.assert_allclose(scale, np.abs(w.reshape(9, 10)).max(0) / 7, rtol=1e-6)


def test_channel_axes_must_be_trailing():
    with pytest.raises(ValueError, match="trailing axes"):
        quantizers.channels_last_2d(np.zeros((3, 3, 4, 2)), channel_axes=1)


def test_fake_quantize_has_straight_through_gradient():
    w = tf.Variable(np.random.default_rng(3).normal(size=(4, 3)).astype(np.float32))
    with tf.GradientTape() as tape:
        out = quantizers.fake_quantize(w, 2)
        loss = tf.reduce_sum(out * tf.constant([[1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(out.numpy(), quantizers.snap(w, 2).numpy())
    np.testing.assert_allclose(tape.gradient(loss, w).numpy(), np.tile([[1.0, 2.0, 3.0]], (4, 1)))


def test_weight_quantizer_config_round_trip():
    quantizer = quantizers.WeightQuantizer(3, "max", (2, 3))
    clone = quantizers.WeightQuantizer.from_config(quantizer.get_config())
    assert clone.get_config() == quantizer.get_config() and clone.precision == 3
    with pytest.raises(ValueError, match="scale must be one of"):
        quantizers.WeightQuantizer(2, "median")

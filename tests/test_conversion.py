import numpy as np
import pytest
import tf_keras as keras

from conftest import run_on_two_logical_cpus, small_cnn
from qgt_keras import conversion, models, quantizers
from qgt_keras.conversion import QuantizationPolicy, quantize_model
from qgt_keras.layers import QConv2D, QDense, QDepthwiseConv2D, quantized_kernels
from qgt_keras.regularizers import QGTRegularizer


@pytest.mark.parametrize("sequential", [False, True])
def test_conversion_keeps_outputs_and_trains(sequential, toy_images):
    x, y = toy_images
    model = small_cnn(sequential=sequential)
    quantized = quantize_model(model, bits=2)
    assert [type(layer) for layer in quantized.layers if layer.weights and "bn" not in layer.name] == [
        QConv2D, QDepthwiseConv2D, QConv2D, QDense]
    assert conversion.layer_bits(quantized) == {"conv1": 8, "dw1": 2, "pw1": 2, "dense": 8}
    np.testing.assert_allclose(quantized.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    quantized.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = quantized.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert len(quantized.losses) == 4  # one QGT term per quantized kernel


def test_policy_precedence():
    model = small_cnn()
    policy = QuantizationPolicy(bits=4, overrides={"pw1": 1, "DepthwiseConv2D": 3, "Dense": 2}, edge_bits=8)
    assert policy.resolve(model) == {"conv1": 8, "dw1": 3, "pw1": 1, "dense": 8}
    no_edges = QuantizationPolicy(bits=4, overrides={"Dense": 2}, edge_bits=None, skip=("conv1",))
    assert no_edges.resolve(model) == {"dw1": 4, "pw1": 4, "dense": 2}


def test_depthwise_regularizer_is_per_channel():
    quantized = quantize_model(small_cnn(), bits=2)
    layer = quantized.get_layer("dw1")
    assert isinstance(layer.depthwise_regularizer, QGTRegularizer)
    assert layer.depthwise_regularizer.channel_axes == (2, 3) and layer.kernel_quantizer.channel_axes == (2, 3)


def test_existing_regularizer_is_kept_as_base():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, kernel_regularizer=keras.regularizers.L2(0.1))(inputs))
    regularizer = quantize_model(model, bits=2, edge_bits=None).layers[1].kernel_regularizer
    assert isinstance(regularizer.base, keras.regularizers.L2)


def test_hard_quantization_equals_the_stripped_snapped_model(toy_images):
    x, _ = toy_images
    quantized = quantize_model(small_cnn(), bits=2)
    conversion.set_hard_quantization(quantized)
    plain = conversion.strip_quantization(quantized)
    assert not quantized_kernels(plain)
    assert [type(plain.get_layer(name)) for name in ("conv1", "dw1", "pw1", "dense")] == [
        keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Conv2D, keras.layers.Dense]
    np.testing.assert_allclose(plain.predict(x, verbose=0), quantized.predict(x, verbose=0), atol=1e-5)
    for entry in quantized_kernels(quantized):
        kernel = plain.get_layer(entry.name).get_weights()[0]
        snapped = quantizers.snap(kernel, entry.bits, channel_axes=entry.channel_axes).numpy()
        np.testing.assert_allclose(kernel, snapped, rtol=1e-5, atol=1e-7)


def test_snap_weights_and_float_forward(toy_images):
    x, _ = toy_images
    quantized = quantize_model(small_cnn(), bits=2)
    float_out = quantized.predict(x, verbose=0)
    conversion.set_hard_quantization(quantized)
    hard_out = quantized.predict(x, verbose=0)
    with conversion.float_forward(quantized):
        np.testing.assert_allclose(quantized.predict(x, verbose=0), float_out, atol=1e-6)
    assert quantized.get_layer("dw1").quantize_gate.numpy() == 1
    conversion.snap_weights(quantized)
    conversion.set_hard_quantization(quantized, False)
    np.testing.assert_allclose(quantized.predict(x, verbose=0), hard_out, atol=1e-5)


@pytest.mark.parametrize("scale_interval", [1, 4])
@pytest.mark.parametrize("extension", ["keras", "h5"])
def test_save_and_load_without_custom_objects(extension, scale_interval, tmp_path, toy_images):
    x, y = toy_images
    quantized = quantize_model(small_cnn(), bits=2, overrides={"pw1": 3}, scale_interval=scale_interval)
    quantized.compile("adam", "sparse_categorical_crossentropy")
    quantized.fit(x, y, epochs=1, verbose=0)
    conversion.set_hard_quantization(quantized)
    path = str(tmp_path / f"model.{extension}")
    quantized.save(path)
    restored = keras.models.load_model(path)
    assert [type(layer) for layer in restored.layers] == [type(layer) for layer in quantized.layers]
    for original, loaded in zip(quantized.get_weights(), restored.get_weights()):
        assert original.tobytes() == loaded.tobytes()
    assert conversion.layer_bits(restored) == conversion.layer_bits(quantized)
    assert restored.get_layer("pw1").kernel_regularizer.get_config() == \
        quantized.get_layer("pw1").kernel_regularizer.get_config()
    np.testing.assert_array_equal(restored.predict(x, verbose=0), quantized.predict(x, verbose=0))


def test_scale_interval_reaches_every_layer_and_the_stripped_model_is_plain(toy_images):
    x, y = toy_images
    model = small_cnn()
    quantized = quantize_model(model, bits=2, scale_interval=3)
    assert {entry.layer.scale_interval for entry in quantized_kernels(quantized)} == {3}
    conversion.set_hard_quantization(quantized)
    quantized.compile("adam", "sparse_categorical_crossentropy")
    quantized.fit(x, y, batch_size=32, epochs=2, verbose=0)  # 8 steps: re-estimated in steps 1, 4 and 7
    for entry in quantized_kernels(quantized):
        assert int(entry.layer.scale_age.numpy()) == 8
        assert entry.regularizer.step == 8
    plain = conversion.strip_quantization(quantized)
    assert [len(layer.weights) for layer in plain.layers] == [len(layer.weights) for layer in model.layers]
    np.testing.assert_allclose(plain.predict(x, verbose=0), quantized.predict(x, verbose=0), atol=1e-5)


@pytest.mark.parametrize("interval", [0, 2.5, True])
def test_policy_scale_interval_must_be_a_positive_integer(interval):
    with pytest.raises(ValueError, match="policy scale_interval must be an integer >= 1"):
        QuantizationPolicy(scale_interval=interval)


def test_unknown_layer_name_in_policy():
    with pytest.raises(ValueError, match="'conv9'.*neither a layer"):
        quantize_model(small_cnn(), overrides={"conv9": 4})


def test_policy_naming_a_layer_without_kernel():
    with pytest.raises(ValueError, match="'conv1_bn'.*no kernel"):
        quantize_model(small_cnn(), overrides={"conv1_bn": 4})


@pytest.mark.parametrize("bits", [0, 9, 2.5])
def test_bits_outside_range(bits):
    with pytest.raises(ValueError, match="1..8"):
        quantize_model(small_cnn(), bits=bits)
    with pytest.raises(ValueError, match="'pw1'.*1..8"):
        quantize_model(small_cnn(), overrides={"pw1": bits})


def test_unsupported_layer_type():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.SeparableConv2D(4, 3, name="sep")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    with pytest.raises(ValueError, match="'sep' of type SeparableConv2D is not supported"):
        quantize_model(model)
    transposed = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.Conv2DTranspose(2, 3, name="up")])
    with pytest.raises(ValueError, match="'up' of type Conv2DTranspose"):
        quantize_model(transposed)


def test_already_quantized_model():
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(quantize_model(small_cnn()))


@pytest.mark.parametrize("fields, message", [
    ({"skip": "conv1"}, r"policy skip must be a list of layer names, got 'conv1' \(did you mean skip=\('conv1',\)\?\)"),
    ({"overrides": [("pw1", 4)]}, "policy overrides must be a dict"),
])
def test_policy_fields_of_the_wrong_type(fields, message):
    with pytest.raises(TypeError, match=message):
        QuantizationPolicy(**fields)


def test_an_unbuilt_model_is_refused_with_the_fix():
    model = keras.Sequential([keras.layers.Conv2D(4, 3), keras.layers.Flatten(), keras.layers.Dense(2)], name="seq")
    with pytest.raises(ValueError, match="model 'seq' is not built.*keras.Input"):
        quantize_model(model)


def test_keras3_model_is_refused_with_the_fix():
    import keras as keras3
    model = keras3.Sequential([keras3.Input((4,)), keras3.layers.Dense(2)])
    with pytest.raises(TypeError, match="Keras 3 model.*tf_keras"):
        quantize_model(model)


def test_subclassed_model_is_refused():
    class Custom(keras.Model):
        def call(self, inputs):
            return inputs

    with pytest.raises(TypeError, match="subclassed"):
        quantize_model(Custom())


def test_layer_bits_must_match_its_regularizer():
    with pytest.raises(ValueError, match="QGTRegularizer bits 4 != layer bits 2"):
        QConv2D(4, 3, bits=2, kernel_regularizer=QGTRegularizer(4), name="c")


def test_recalibrate_batchnorm_averages_the_batch_statistics(toy_images):
    x, _ = toy_images
    model = small_cnn()
    batches = [x[:64], x[64:]]
    before = model.get_layer("dense").get_weights()
    assert conversion.recalibrate_batchnorm(model, batches) == 2
    features = keras.Model(model.input, model.get_layer("conv1").output)
    outputs = [features(batch).numpy().reshape(-1, 8) for batch in batches]
    bn = model.get_layer("conv1_bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean([o.mean(0) for o in outputs], 0), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean([o.var(0) for o in outputs], 0), rtol=1e-3)
    assert bn.momentum == 0.9 and all(np.array_equal(a, b) for a, b in zip(before, model.get_layer(
        "dense").get_weights()))


def test_recalibrate_batchnorm_of_a_scale_interval_model_uses_the_current_scales(toy_images):
    x, y = toy_images
    quantized = quantize_model(small_cnn(), bits=2, scale_interval=4)
    conversion.set_hard_quantization(quantized)
    quantized.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    quantized.fit(x, y, batch_size=16, epochs=1, steps_per_epoch=6, verbose=0)  # cached in step 5: stale now
    plain = conversion.strip_quantization(quantized)
    batches = [x[:64], x[64:]]
    conversion.recalibrate_batchnorm(plain, batches)
    conversion.recalibrate_batchnorm(quantized, batches)
    norms = [layer.name for layer in plain.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 3
    for name in norms:
        for expected, got in zip(plain.get_layer(name).get_weights(), quantized.get_layer(name).get_weights()):
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_recalibrate_batchnorm_needs_data():
    with pytest.raises(ValueError, match="yielded no batch"):
        conversion.recalibrate_batchnorm(small_cnn(), [])


def _reference_with_statistics_of_other_data(x):
    """small_cnn whose stored statistics come from brighter images than ``x``: data and statistics disagree."""
    reference = small_cnn()
    conversion.recalibrate_batchnorm(reference, [x[:64] + 0.5, x[64:] + 0.5])
    return reference


def test_anchor_batchnorm_keeps_a_model_equal_to_its_reference(toy_images):
    x, _ = toy_images
    reference = _reference_with_statistics_of_other_data(x)
    model = small_cnn()
    model.set_weights(reference.get_weights())
    assert conversion.anchor_batchnorm(model, reference, [x[:64], x[64:]]) == 3
    for got, expected in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_anchor_batchnorm_normalizes_toward_the_reference_not_the_data(toy_images):
    x, _ = toy_images
    reference = _reference_with_statistics_of_other_data(x)
    model = small_cnn()
    model.set_weights(reference.get_weights())
    # Channels rescaled in two layers (what snapping does to a kernel, writ large): normalization can undo it.
    model.get_layer("conv1").kernel.assign(3.0 * model.get_layer("conv1").kernel)
    pw1 = model.get_layer("pw1").kernel
    pw1.assign(pw1 * np.linspace(0.5, 2.0, pw1.shape[-1]).astype(np.float32))
    batches = [x[:64], x[64:]]
    re_estimated = keras.models.clone_model(model)
    re_estimated.set_weights(model.get_weights())
    conversion.recalibrate_batchnorm(re_estimated, batches)
    conversion.anchor_batchnorm(model, reference, batches)
    expected = reference.predict(x, verbose=0)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=5e-3)
    # Re-estimated on the data, the statistics are the data's and the outputs move away from the reference.
    assert np.max(np.abs(re_estimated.predict(x, verbose=0) - expected)) > 0.05


def test_anchor_batchnorm_names_models_that_do_not_pair_up(toy_images):
    x, _ = toy_images
    with pytest.raises(ValueError, match=r"layer 'conv1_bn' of model 'small_cnn' has 8 channels, layer 'conv1_bn' "
                                         r"of the reference 'wide' 4"):
        conversion.anchor_batchnorm(small_cnn(), models.small_cnn((16, 16, 3), filters=4, name="wide"), [x])
    plain = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(2, 3)], name="plain")
    with pytest.raises(ValueError, match="model 'small_cnn' has 3 BatchNormalization layers, the reference "
                                         "'plain' 0"):
        conversion.anchor_batchnorm(small_cnn(), plain, [x])
    with pytest.raises(ValueError, match="yielded no batch"):
        conversion.anchor_batchnorm(small_cnn(), small_cnn(), [])
    inputs = keras.Input((16, 16, 3))
    normalized = keras.layers.BatchNormalization(name="first_bn")(keras.layers.Conv2D(4, 3, padding="same")(inputs))
    skip = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    joined = keras.layers.BatchNormalization(name="joined_bn")(keras.layers.Add()([normalized, skip]))
    branched = keras.Model(inputs, joined, name="branched")
    with pytest.raises(ValueError, match="form a chain .* the input of layer 'joined_bn' of model 'branched' is not "
                                         "computed from the previous one's output alone"):
        conversion.anchor_batchnorm(branched, branched, [x])


def test_negative_batchnorm_gammas_become_flipped_channels(toy_images):
    x, y = toy_images
    model = small_cnn()
    for name in ("conv1_bn", "dw1_bn"):
        norm = model.get_layer(name)
        gamma, beta, mean, variance = norm.get_weights()
        gamma[::2] = -0.5
        mean[:] = np.linspace(-1, 1, len(mean))
        norm.set_weights([gamma, beta, mean, variance])
    quantized = quantize_model(model, bits=2)
    np.testing.assert_allclose(quantized.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    for name in ("conv1_bn", "dw1_bn", "pw1_bn"):
        norm = quantized.get_layer(name)
        assert np.all(norm.gamma.numpy() >= 0) and isinstance(norm.gamma_constraint, keras.constraints.NonNeg)
    original = model.get_layer("dw1").depthwise_kernel.numpy()[..., ::2, :]
    np.testing.assert_allclose(quantized.get_layer("dw1").depthwise_kernel.numpy()[..., ::2, :], -original)
    quantized.compile(keras.optimizers.SGD(10.0), "sparse_categorical_crossentropy")
    quantized.fit(x, y, epochs=1, verbose=0)
    assert all(np.all(quantized.get_layer(name).gamma.numpy() >= 0) for name in ("conv1_bn", "dw1_bn"))


_MIRRORED_SCALE_INTERVAL = """
    import numpy as np
    import tf_keras as keras
    from qgt_keras import conversion, models
    rng = np.random.default_rng(0)
    x, y = rng.random((96, 16, 16, 3)).astype("float32"), rng.integers(0, 2, 96)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = conversion.quantize_model(models.small_cnn((16, 16, 3)), bits=2, scale_interval=3)
        conversion.set_hard_quantization(model)
        model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # 6 steps: re-estimated in steps 1 and 4
    layer = model.get_layer("pw1")
    before = layer.kernel.numpy()
    model.fit(x[:16], y[:16], batch_size=16, epochs=1, verbose=0)  # step 7 re-estimates from these weights
    expected = layer.kernel_quantizer.estimate_scale(before).numpy()
    print("age", int(layer.scale_age.numpy()))
    print("cache_error", float(np.max(np.abs(layer.kernel_scale.numpy() - expected) / expected)))
    print("moved", float(np.max(np.abs(layer.kernel.numpy() - before))))
"""


def test_scale_interval_under_mirrored_strategy_on_two_logical_cpus():
    lines = run_on_two_logical_cpus(_MIRRORED_SCALE_INTERVAL)
    assert lines["age"] == "7"  # each global step counted once, not once per replica
    assert float(lines["cache_error"]) < 1e-6 and float(lines["moved"]) > 1e-4  # from the weights of step 7

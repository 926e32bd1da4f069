"""Tests of the model builders and of weight initialization from a trained float model."""

import pathlib

import numpy as np
import pytest
import tf_keras as keras

from qgt_keras import models

# shared/ sits beside the repository (the same in CI); tests that need it skip without it.
MLPERF_H5 = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "reference_models" / \
    "mlperf_tiny_vww_96.h5"
needs_mlperf = pytest.mark.skipif(not MLPERF_H5.is_file(), reason="shared/reference_models not present")


@pytest.fixture(scope="module")
def mlperf_reference():
    return keras.models.load_model(MLPERF_H5, compile=False)


@pytest.mark.parametrize("builder, kwargs, input_shape, outputs, params", [
    (models.mobilenet_v1, {}, (96, 96, 3), 2, 219_058),
    (models.mobilenet_v1, {"use_bias": True}, (96, 96, 3), 2, 221_794),  # exactly the MLPerf reference
    (models.mobilenet_v1, {"input_shape": (96, 96, 1)}, (96, 96, 1), 2, 218_914),
    (models.mobilenet_28, {}, (28, 28, 1), 10, 38_346),
    (models.small_cnn, {"input_shape": (28, 28, 1), "num_classes": 10}, (28, 28, 1), 10, 570),
])
def test_shapes_and_parameter_counts(builder, kwargs, input_shape, outputs, params):
    model = builder(**kwargs)
    assert model.input_shape == (None, *input_shape) and model.output_shape == (None, outputs)
    assert model.count_params() == params
    probabilities = model.predict(np.zeros((2, *input_shape), np.float32), verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_layer_names_for_quantization_policies():
    names = {layer.name for layer in models.mobilenet_v1().layers}
    blocks = {f"{kind}{i}{suffix}" for kind in ("dw", "pw") for i in range(1, 14) for suffix in ("", "_bn", "_relu")}
    assert {"conv1", "conv1_bn", "conv1_relu", "pool", "flatten", "dense", "softmax"} | blocks <= names
    assert models.mobilenet_v1().get_layer("pool").pool_size == (3, 3)


def test_build_model_by_name():
    assert models.build_model("mobilenet_28", alpha=0.5).name == "mobilenet_28"
    with pytest.raises(ValueError, match="resnet"):
        models.build_model("resnet")


def _randomize(model, seed):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        # Variances must stay positive; every other weight may be any number.
        layer.set_weights([rng.uniform(0.5, 1.5, w.shape) if "variance" in v.name else rng.normal(0, 0.3, w.shape)
                           for w, v in zip(layer.get_weights(), layer.weights)])
    return model


def test_copy_weights_folds_convolution_biases_into_batch_norm():
    source = _randomize(models.mobilenet_28(use_bias=True), seed=1)
    target = models.copy_weights(source, models.mobilenet_28())
    x = np.random.default_rng(2).uniform(size=(4, 28, 28, 1)).astype(np.float32)
    np.testing.assert_allclose(target.predict(x, verbose=0), source.predict(x, verbose=0), atol=1e-5)
    back = models.copy_weights(target, models.mobilenet_28(use_bias=True))
    np.testing.assert_allclose(back.predict(x, verbose=0), source.predict(x, verbose=0), atol=1e-5)


def test_copy_weights_mismatch_names_the_layers():
    with pytest.raises(ValueError, match="layer conv1 .* does not fit mobilenet_28 layer conv1"):
        models.copy_weights(models.mobilenet_28(), models.mobilenet_28(alpha=0.5))
    with pytest.raises(ValueError, match="different layer sequences"):
        models.copy_weights(models.mobilenet_28(), models.small_cnn((28, 28, 1), 10))


@needs_mlperf
def test_mobilenet_v1_matches_mlperf_reference_layout(mlperf_reference):
    ours = models.mobilenet_v1(use_bias=True)
    weighted = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.BatchNormalization,
                keras.layers.Dense)
    ref_layers = [layer for layer in mlperf_reference.layers if isinstance(layer, weighted)]
    our_layers = [layer for layer in ours.layers if isinstance(layer, weighted)]
    assert len(ref_layers) == len(our_layers) == 55
    for ref, our in zip(ref_layers, our_layers):
        assert type(ref) is type(our), (ref.name, our.name)
        assert [w.shape for w in ref.weights] == [w.shape for w in our.weights], (ref.name, our.name)
        for attribute in ("strides", "padding", "epsilon", "momentum"):
            assert getattr(ref, attribute, None) == getattr(our, attribute, None), (ref.name, attribute)
    assert ours.count_params() == mlperf_reference.count_params()


@needs_mlperf
@pytest.mark.parametrize("use_bias", [False, True])
def test_init_from_mlperf_reproduces_its_outputs(mlperf_reference, use_bias):
    model = models.init_from(models.mobilenet_v1(use_bias=use_bias), MLPERF_H5)
    x = np.random.default_rng(0).uniform(size=(4, 96, 96, 3)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x, verbose=0), mlperf_reference.predict(x, verbose=0), atol=1e-5)


@needs_mlperf
def test_init_from_mlperf_into_grayscale_model(mlperf_reference):
    model = models.init_from(models.mobilenet_v1(input_shape=(96, 96, 1)), MLPERF_H5)
    gray = np.random.default_rng(0).uniform(size=(4, 96, 96, 1)).astype(np.float32)
    np.testing.assert_allclose(model.predict(gray, verbose=0),
                               mlperf_reference.predict(np.repeat(gray, 3, axis=-1), verbose=0), atol=1e-5)


@needs_mlperf
def test_init_from_mlperf_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match=r"layer conv2d .* does not fit mobilenet_v1 layer conv1"):
        models.init_from(models.mobilenet_v1(alpha=0.5), MLPERF_H5)


def test_the_mlperf_weights_are_found_where_the_environment_says(tmp_path, monkeypatch):
    weights = tmp_path / "vww_96.h5"
    monkeypatch.setenv(models.MLPERF_ENVIRONMENT_VARIABLE, str(weights))
    with pytest.raises(FileNotFoundError, match=f"not at {weights}: download {models.MLPERF_URL}"):
        models.weights_file(models.MLPERF)
    weights.write_bytes(b"")
    assert models.weights_file(models.MLPERF) == str(weights)
    with pytest.raises(FileNotFoundError, match="weights file .*other.h5 does not exist"):
        models.weights_file(str(tmp_path / "other.h5"))

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tf_keras as keras  # noqa: E402


def small_cnn(input_shape=(16, 16, 3), num_classes=2, sequential=False):
    """Conv2D + BN + ReLU6, DepthwiseConv2D + BN + ReLU, pointwise Conv2D, pooling, Dense."""
    layers = [
        keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv1"),
        keras.layers.BatchNormalization(name="bn1"),
        keras.layers.ReLU(6.0, name="relu1"),
        keras.layers.DepthwiseConv2D(3, padding="same", name="dw1"),
        keras.layers.BatchNormalization(name="bn2"),
        keras.layers.ReLU(name="relu2"),
        keras.layers.Conv2D(16, 1, name="pw1"),
        keras.layers.BatchNormalization(name="bn3"),
        keras.layers.ReLU(name="relu3"),
        keras.layers.GlobalAveragePooling2D(name="pool"),
        keras.layers.Dense(num_classes, activation="softmax", name="fc"),
    ]
    if sequential:
        return keras.Sequential([keras.Input(input_shape)] + layers, name="small_seq")
    x = inputs = keras.Input(input_shape)
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x, name="small_functional")


@pytest.fixture
def toy_images():
    """Noise images; label 1 has a brighter red channel in its top-left quarter."""
    rng = np.random.default_rng(0)
    x = rng.random((128, 16, 16, 3)).astype("float32") * 0.5
    y = rng.integers(0, 2, 128)
    x[y == 1, :8, :8, 0] += 0.5
    return x, y


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)

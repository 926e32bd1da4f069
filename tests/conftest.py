import importlib.util
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tf_keras as keras  # noqa: E402

from qgt_keras import models  # noqa: E402


def load_script(path, name):
    """The Python file ``path`` (a script outside the packages, e.g. a data set's build.py) as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_cnn(input_shape=(16, 16, 3), sequential=False):
    """models.small_cnn (conv1, dw1, pw1 with BN + ReLU, pooling, dense); as a Sequential model if asked."""
    model = models.small_cnn(input_shape)
    if not sequential:
        return model
    return keras.Sequential([keras.Input(input_shape)] + [
        layer.__class__.from_config(layer.get_config()) for layer in model.layers[1:]], name="small_sequential")


@pytest.fixture(scope="session")
def toy_images():
    """Noise images; label 1 has a brighter red channel in its top-left quarter (read-only: shared)."""
    rng = np.random.default_rng(0)
    x = rng.random((128, 16, 16, 3)).astype("float32") * 0.5
    y = rng.integers(0, 2, 128)
    x[y == 1, :8, :8, 0] += 0.5
    x.flags.writeable = y.flags.writeable = False
    return x, y


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)

import importlib.util
import os
import subprocess
import sys
import textwrap

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


_TWO_LOGICAL_CPUS = """\
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""


def run_on_two_logical_cpus(script):
    """Runs ``script`` in a fresh interpreter whose CPU is split into two logical devices (for a
    MirroredStrategy; they must be set before TensorFlow initializes); returns {first word: the rest} of the
    lines it prints."""
    result = subprocess.run([sys.executable, "-c", _TWO_LOGICAL_CPUS + textwrap.dedent(script)], capture_output=True,
                            text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(line.split(" ", 1) for line in result.stdout.strip().splitlines())


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

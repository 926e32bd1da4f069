"""The benchmark's baselines (benchmarks/baselines.py: tfmot QAT and clustering) on a tiny person96 slice:
tfmot models that convert and byte counts that match what they store."""

import pathlib
import sys

import numpy as np
import pytest
import tensorflow as tf

from qgt_keras import layer_kinds, recipes

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import baselines  # noqa: E402  (benchmarks/ is not a package: its scripts import it as a sibling)


@pytest.fixture(scope="module")
def setup():
    """small_cnn on 64 person96 images at 16x16, one float epoch shared + one epoch per method."""
    return recipes.build_setup("person_folder", "small_cnn", image_size=16, limit=64, test_limit=64, batch_size=32,
                               pretrain_epochs=1, finetune_epochs=1, verbose=0)


@pytest.mark.filterwarnings("ignore::UserWarning")  # the TFLite converter's and interpreter's notices
@pytest.mark.parametrize("bits", [8, 2])
def test_tfmot_qat_converts(setup, bits):
    result = baselines.tfmot_qat(setup, bits)
    sizes = layer_kinds.kernel_sizes(setup.pretrained()[0])
    assert result.weight_bytes == layer_kinds.weight_bytes(sizes, result.layer_bits)
    assert set(result.layer_bits.values()) == {bits}
    converter = tf.lite.TFLiteConverter.from_keras_model(result.model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    interpreter = tf.lite.Interpreter(model_content=converter.convert())
    interpreter.allocate_tensors()
    assert interpreter.get_output_details()[0]["shape"].tolist() == [1, 2]


def test_tfmot_cluster_uses_at_most_2_to_the_bits_values(setup):
    result = baselines.tfmot_cluster(setup, 2)
    kernels = {layer.name: layer_kinds.kind_of(layer).kernel(layer).numpy() for layer in result.model.layers
               if layer_kinds.kind_of(layer) is not None}
    clustered = [name for name, bits in result.layer_bits.items() if bits == 2]
    assert clustered and set(result.layer_bits) == set(kernels)
    for name, bits in result.layer_bits.items():
        distinct = len(np.unique(kernels[name]))
        assert distinct <= 4 if bits == 2 else distinct > 4, name  # unclustered kernels count as float
    sizes = layer_kinds.kernel_sizes(result.model)
    assert result.weight_bytes == layer_kinds.weight_bytes(sizes, result.layer_bits) + 4 * 4 * len(clustered)


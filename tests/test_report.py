import json

import numpy as np
import pytest
import tf_keras as keras

from conftest import small_cnn
from qgt_keras import report
from qgt_keras.conversion import QuantizationPolicy, quantize_model, set_hard_quantization


@pytest.fixture
def trained(toy_images):
    x, y = toy_images
    model = small_cnn()
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=30, batch_size=16, verbose=0)
    assert model.evaluate(x, y, verbose=0)[1] > 0.9
    return model


def test_summary_of_a_qgt_model(trained, toy_images):
    quantized = quantize_model(trained, bits=2)
    set_hard_quantization(quantized)  # the report measures sensitivity from the float model all the same
    lines = []
    result = report.summary(quantized, toy_images, print_fn=lines.append)
    rows = {row.name: row for row in result.layers}
    assert list(rows) == ["conv1", "dw1", "pw1", "dense"]
    assert rows["pw1"].bits == 2 and rows["pw1"].params == 8 * 16
    assert rows["pw1"].packed_bytes == 32 and rows["conv1"].packed_bytes == 3 * 3 * 3 * 8
    assert sum(row.qgt_share for row in result.layers) == pytest.approx(1)
    assert rows["conv1"].relative_error < 1e-3 < rows["dw1"].relative_error
    float_loss, float_accuracy = report.evaluate_batch(trained, *toy_images, keras.losses.get(trained.loss))
    assert result.baseline_loss == pytest.approx(float_loss, rel=1e-5)
    assert result.baseline_accuracy == pytest.approx(float_accuracy)
    assert quantized.get_layer("dw1").quantize_gate.numpy() == 1  # phase restored
    assert "conv1" in lines[0] and "packed" in lines[0]
    assert json.loads(result.to_json())["packed_bytes"] == result.packed_bytes
    assert result.to_markdown().count("\n| ") == 4  # one row per layer


def test_the_sabotaged_layer_is_the_bottleneck(trained, toy_images):
    # A 1-bit depthwise layer among 8-bit ones: it alone costs loss.
    result = report.summary(trained, toy_images, bits={"conv1": 8, "dw1": 1, "pw1": 8, "dense": 8}, print_fn=None)
    rows = {row.name: row for row in result.layers}
    assert result.bottlenecks == ["dw1"]
    assert rows["dw1"].delta_loss > 2 * max(abs(rows[name].delta_loss) for name in ("conv1", "pw1", "dense"))


def test_summary_without_validation_data_ranks_by_error(trained):
    result = report.summary(trained, bits=QuantizationPolicy(bits=2, overrides={"dw1": 1}), print_fn=None)
    assert result.layers[1].delta_loss is None
    assert result.bottlenecks == ["dw1"]


def test_summary_of_a_float_model_needs_bits(trained):
    with pytest.raises(ValueError, match="no quantized kernels; pass bits="):
        report.summary(trained)


def test_allocate_bits_meets_the_budget(trained, toy_images):
    sizes = {"conv1": 216, "dw1": 72, "pw1": 128, "dense": 32}
    budget = 300
    allocation = report.allocate_bits(trained, budget, toy_images, candidates=(8, 4, 2, 1))
    assert set(allocation) == set(sizes)
    used = sum(report.packed_bytes(sizes[name], bits) for name, bits in allocation.items())
    assert used <= budget
    everything_at_8 = report.allocate_bits(trained, 10_000, toy_images)
    assert set(everything_at_8.values()) == {8}
    quantized = quantize_model(trained, QuantizationPolicy(overrides=allocation, edge_bits=None))
    assert report.summary(quantized, print_fn=None).packed_bytes == used


def test_allocate_bits_prefers_robust_layers(trained, toy_images):
    # Budget for one layer to drop from 8 to 4 bits: it must not be the most sensitive one.
    sizes = {"conv1": 216, "dw1": 72, "pw1": 128, "dense": 32}
    full = sum(sizes.values())
    allocation = report.allocate_bits(trained, full - 16, toy_images, candidates=(8, 4))
    sensitivity = {row.name: row.delta_loss for row in report.summary(
        trained, toy_images, bits=4, print_fn=None).layers}
    lowered = [name for name, bits in allocation.items() if bits == 4]
    assert lowered and max(sensitivity, key=sensitivity.get) not in lowered


def test_allocate_bits_for_some_layers_only(trained, toy_images):
    allocation = report.allocate_bits(trained, 60, toy_images, candidates=(8, 2), layers=["dw1", "dense"])
    assert set(allocation) == {"dw1", "dense"}
    assert report.packed_bytes(72, allocation["dw1"]) + report.packed_bytes(32, allocation["dense"]) <= 60
    with pytest.raises(ValueError, match=r"\['conv1_bn'\] are not quantizable layers"):
        report.allocate_bits(trained, 60, toy_images, layers=["dw1", "conv1_bn"])


def test_allocate_bits_with_an_impossible_budget(trained, toy_images):
    with pytest.raises(ValueError, match="budget of 10 B is below the smallest reachable size, 112 B"):
        report.allocate_bits(trained, 10, toy_images)


def test_packed_bytes():
    assert report.packed_bytes(9, 2) == 3 and report.packed_bytes(8, 1) == 1 and report.packed_bytes(3, 8) == 3
    assert np.isclose(report.packed_bytes(207968, 2) / 1024, 50.8, atol=0.1)

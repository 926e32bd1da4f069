import json
import pathlib

import numpy as np
import pytest
import tf_keras as keras

from conftest import small_cnn
from qgt_keras import conversion, layer_kinds, quantizers, report
from qgt_keras.conversion import QuantizationPolicy, quantize_model, set_hard_quantization

SNAPSHOTS = pathlib.Path(__file__).resolve().parent / "snapshots"
SIZES = {"conv1": 216, "dw1": 72, "pw1": 128, "dense": 32}  # kernel weights of small_cnn((16, 16, 3))


@pytest.fixture(scope="module")
def trained(toy_images):
    """small_cnn trained on the toy images (shared by the module's tests, which leave its weights as they are)."""
    x, y = toy_images
    keras.utils.set_random_seed(0)
    model = small_cnn()
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=30, batch_size=16, verbose=0)
    assert model.evaluate(x, y, verbose=0)[1] > 0.9
    return model


def test_summary_of_a_qgt_model(trained, toy_images):
    quantized = quantize_model(trained, bits=2)
    set_hard_quantization(quantized)
    lines = []
    result = report.summary(quantized, toy_images, print_fn=lines.append)
    rows = {row.name: row for row in result.layers}
    assert list(rows) == ["conv1", "dw1", "pw1", "dense"]
    assert rows["pw1"].bits == 2 and rows["pw1"].params == 8 * 16
    assert rows["pw1"].packed_bytes == 32 and rows["conv1"].packed_bytes == 3 * 3 * 3 * 8
    assert sum(row.qgt_share for row in result.layers) == pytest.approx(1)
    assert rows["conv1"].relative_error < 1e-3 < rows["dw1"].relative_error
    assert quantized.get_layer("dw1").quantize_gate.numpy() == 1  # phase restored
    assert "conv1" in lines[0] and "packed" in lines[0]
    assert json.loads(result.to_json())["packed_bytes"] == result.packed_bytes
    assert result.to_markdown().count("\n| ") == 4  # one row per layer


def test_the_report_measures_the_model_as_deployed(trained, toy_images):
    """Baseline: every kernel on its grid (what the exporter converts); a layer's d loss: its grid values
    against its float kernel, the other layers on their grids."""
    x, y = toy_images
    quantized = quantize_model(trained, bits=2)
    set_hard_quantization(quantized)
    kernels = [weights.copy() for weights in quantized.get_weights()]
    result = report.summary(quantized, toy_images, print_fn=None)
    loss_fn = keras.losses.get(trained.loss)
    deployed = report.evaluate_batch(conversion.strip_quantization(quantized), x, y, loss_fn)
    assert (result.baseline_loss, result.baseline_accuracy) == pytest.approx(deployed, rel=1e-5)
    assert result.examples == len(x)
    # dw1 float, the rest on their grids: the stripped model with dw1's float kernel put back
    plain = conversion.strip_quantization(quantized)
    plain.get_layer("dw1").set_weights(trained.get_layer("dw1").get_weights())
    dw1_float = report.evaluate_batch(plain, x, y, loss_fn)
    row = {row.name: row for row in result.layers}["dw1"]
    assert row.delta_loss == pytest.approx(deployed[0] - dw1_float[0], rel=1e-4, abs=1e-6)
    assert row.delta_accuracy_pts == pytest.approx(100 * (deployed[1] - dw1_float[1]))
    assert all(np.array_equal(a, b) for a, b in zip(kernels, quantized.get_weights()))  # weights restored
    assert f"On {len(x)} evaluation examples, as deployed" in str(result)


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


def test_the_summary_table_snapshot():
    """The printed table of a fixed model, character for character (tests/snapshots/summary.txt)."""
    model = small_cnn()
    rng = np.random.default_rng(42)
    model.set_weights([rng.uniform(0.5, 1.5, w.shape) if "variance" in v.name else rng.normal(0, 0.3, w.shape)
                       for w, v in zip(model.get_weights(), model.weights)])
    quantized = quantize_model(model, QuantizationPolicy(bits=2, overrides={"pw1": 3}))
    assert str(report.summary(quantized, print_fn=None)) + "\n" == (SNAPSHOTS / "summary.txt").read_text()


def test_a_float_model_is_inspected_with_the_policys_scale(trained):
    max_scale = report.summary(trained, bits=QuantizationPolicy(bits=2, edge_bits=None, scale="max"), print_fn=None)
    mse_scale = report.summary(trained, bits=QuantizationPolicy(bits=2, edge_bits=None, scale="mse"), print_fn=None)
    for max_row, mse_row in zip(max_scale.layers, mse_scale.layers):
        assert mse_row.relative_error < max_row.relative_error, max_row.name  # max clips nothing: coarser


def test_summary_of_a_float_model_needs_bits(trained):
    with pytest.raises(ValueError, match="no quantized kernels; pass bits="):
        report.summary(trained)


def test_allocate_bits_meets_the_budget(trained, toy_images):
    budget = 300
    allocation = report.allocate_bits(trained, budget, toy_images, candidates=(8, 4, 2, 1))
    assert set(allocation) == set(SIZES)
    used = sum(layer_kinds.packed_bytes(SIZES[name], bits) for name, bits in allocation.items())
    assert used <= budget
    everything_at_8 = report.allocate_bits(trained, 10_000, toy_images)
    assert set(everything_at_8.values()) == {8}
    quantized = quantize_model(trained, QuantizationPolicy(overrides=allocation, edge_bits=None))
    assert report.summary(quantized, print_fn=None).packed_bytes == used


def test_budgets_count_the_widths_the_packer_stores(trained, toy_images):
    """3 bits are stored in 4, so a budget that needs 3-bit dw1 and pw1 cannot be met with them at 3."""
    eight = sum(SIZES.values())
    three_bit_bytes = layer_kinds.packed_bytes(72 + 128, 3)
    assert three_bit_bytes == (72 + 128) * 4 // 8
    budget = 216 + 32 + (72 + 128) * 3 // 8  # what 3-bit dw1 and pw1 would take if packed at 3 bits
    allocation = report.allocate_bits(trained, budget, toy_images, candidates=(8, 3, 2))
    used = sum(layer_kinds.packed_bytes(SIZES[name], bits) for name, bits in allocation.items())
    assert used <= budget < eight and allocation != {"conv1": 8, "dw1": 3, "pw1": 3, "dense": 8}


def test_allocate_bits_prefers_robust_layers(trained, toy_images):
    # Budget for one layer to drop from 8 to 4 bits: it must not be the most sensitive one, measured as
    # allocate_bits measures it (that layer alone at 4 bits, the others float).
    full = sum(SIZES.values())
    allocation = report.allocate_bits(trained, full - 16, toy_images, candidates=(8, 4))
    x, y = toy_images
    loss_fn = keras.losses.get(trained.loss)
    float_loss = report.evaluate_batch(trained, x, y, loss_fn)[0]
    sensitivity = {}
    for name in SIZES:
        layer = trained.get_layer(name)
        kind, original = layer_kinds.kind_of(layer), layer.get_weights()
        layer.set_weights([quantizers.snap(original[0], 4, "mse", kind.channel_axes).numpy()] + original[1:])
        sensitivity[name] = report.evaluate_batch(trained, x, y, loss_fn)[0] - float_loss
        layer.set_weights(original)
    lowered = [name for name, bits in allocation.items() if bits == 4]
    assert lowered and max(sensitivity, key=sensitivity.get) not in lowered


def test_allocate_bits_for_some_layers_only(trained, toy_images):
    allocation = report.allocate_bits(trained, 60, toy_images, candidates=(8, 2), layers=["dw1", "dense"])
    assert set(allocation) == {"dw1", "dense"}
    assert layer_kinds.packed_bytes(72, allocation["dw1"]) + layer_kinds.packed_bytes(32, allocation["dense"]) <= 60
    with pytest.raises(ValueError, match=r"\['conv1_bn'\] are not quantizable layers"):
        report.allocate_bits(trained, 60, toy_images, layers=["dw1", "conv1_bn"])


def test_allocate_bits_with_an_impossible_budget(trained, toy_images):
    with pytest.raises(ValueError, match="budget of 10 B is below the smallest reachable size, 112 B"):
        report.allocate_bits(trained, 10, toy_images)
    with pytest.raises(ValueError, match="budget of 10 B is below the smallest reachable size, 112 B"):
        report.check_budget(SIZES, 10)

"""Every training recipe on a tiny person96 slice: real properties of what it returns (weights on the grid,
bytes that match the bits, the exported model computing what was trained), not accuracy."""

import numpy as np
import pytest
import tf_keras as keras

from qgt_keras import conversion, datasets, layer_kinds, quantizers, recipes
from qgt_keras.layers import quantized_kernels


@pytest.fixture(scope="module")
def setup():
    """small_cnn on 64 person96 images at 16x16, one float epoch shared + one epoch per method."""
    return recipes.build_setup("person_folder", "small_cnn", image_size=16, limit=64, test_limit=64, batch_size=32,
                               pretrain_epochs=1, finetune_epochs=1, verbose=0)


def _kernels(model):
    """{layer name: (kernel array, channel axes)} of the Conv2D / DepthwiseConv2D / Dense layers."""
    found = {}
    for layer in model.layers:
        kind = layer_kinds.kind_of(layer)
        if kind is not None:
            found[layer.name] = (kind.kernel(layer).numpy(), kind.channel_axes)
    return found


def assert_on_grid(result):
    """Every kernel of the evaluated model lies on its layer's grid: snapping it again changes nothing and
    each channel uses at most 2^bits distinct values."""
    kernels = _kernels(result.model)
    assert set(result.layer_bits) == set(kernels)
    for name, bits in result.layer_bits.items():
        kernel, channel_axes = kernels[name]
        np.testing.assert_allclose(quantizers.snap(kernel, bits, channel_axes=channel_axes).numpy(), kernel,
                                   rtol=1e-5, atol=1e-7, err_msg=name)
        columns = quantizers.channels_last_2d(kernel, channel_axes).numpy().T
        assert max(len(np.unique(column)) for column in columns) <= 2 ** bits, name


def assert_bytes_match_bits(result):
    """Packed at the storage widths of the packer: 1, 2, 4 or 8 bits per weight."""
    sizes = {name: kernel.size for name, (kernel, _) in _kernels(result.model).items()}
    stored = {1: 1, 2: 2, 3: 4, 4: 4, 5: 8, 6: 8, 7: 8, 8: 8}
    expected = sum(-(-sizes[name] * stored[bits] // 8) for name, bits in result.layer_bits.items())
    assert result.weight_bytes == expected


def test_float_counts_four_bytes_per_weight(setup):
    result = recipes.float_training(setup)
    assert result.method == "float" and result.layer_bits == {}
    assert result.weight_bytes == 4 * sum(kernel.size for kernel, _ in _kernels(result.model).values())
    predicted = np.concatenate([result.model.predict(x, verbose=0).argmax(-1) for x, _ in setup.data.test])
    labels = np.concatenate([y.numpy() for _, y in setup.data.test])
    assert result.accuracy == pytest.approx(np.mean(predicted == labels))  # the test split, not training data
    assert len(result.history["loss"]) == setup.total_epochs
    assert recipes.float_training(setup) is result  # trained once, reused by PTQ


@pytest.mark.parametrize("scale", ["max", "mse"])
@pytest.mark.parametrize("bits", [2, 4])
def test_ptq_snaps_the_float_model(setup, bits, scale):
    result = recipes.ptq(setup, bits, scale)
    assert result.method == f"ptq_{scale}"
    assert result.layer_bits == {"conv1": 8, "dw1": bits, "pw1": bits, "dense": 8}  # edge layers at 8 bits
    assert_on_grid(result)
    assert_bytes_match_bits(result)
    assert result.train_seconds > recipes.float_training(setup).train_seconds  # + BatchNorm re-estimation
    x = setup.data.calibration[0][:16]  # the quantized-layer model computes what is deployed
    np.testing.assert_allclose(result.model(x, training=False), result.qgt_model(x, training=False), atol=1e-5)


def test_qat_ste_trains_on_the_grid(setup):
    result = recipes.qat_ste(setup, 2, overrides={"pw1": 4})
    assert result.layer_bits == {"conv1": 8, "dw1": 2, "pw1": 4, "dense": 8}
    assert_on_grid(result)
    assert_bytes_match_bits(result)
    gates = [layer.quantize_gate.numpy() for layer in result.qgt_model.layers if hasattr(layer, "quantize_gate")]
    assert gates and all(gate == 1.0 for gate in gates)


@pytest.mark.parametrize("scale_interval", [1, 4])
def test_qgt_exported_model_computes_what_was_trained(setup, scale_interval):
    result = recipes.qgt(setup, 2, recipes.QGTSchedule(qgt_epochs=0, scale_interval=scale_interval))
    assert {entry.layer.scale_interval for entry in quantized_kernels(result.qgt_model)} == {scale_interval}
    assert_on_grid(result)
    assert_bytes_match_bits(result)
    assert {"qgt_loss", "qgt_strength", "qgt_error"} <= set(result.history)
    # After the hard-quantization epoch the QGT model runs on the grid with the re-estimated BN statistics:
    # the stripped model must give the same outputs.
    x = setup.data.calibration[0][:16]
    np.testing.assert_allclose(result.model(x, training=False), result.qgt_model(x, training=False), atol=1e-5)


def test_qgt_mixed_fits_the_budget(setup):
    sizes = layer_kinds.kernel_sizes(setup.pretrained()[0])
    budget = layer_kinds.weight_bytes(sizes, dict.fromkeys(sizes, 4))
    result = recipes.qgt_mixed(setup, budget)
    assert result.method == "qgt_mixed"
    assert result.weight_bytes <= budget
    assert set(result.layer_bits.values()) <= {2, 4, 8}
    assert result.bits == layer_kinds.mean_bits(sizes, result.layer_bits)
    assert_on_grid(result)


def test_bad_arguments(setup):
    with pytest.raises(ValueError, match="float training"):
        recipes.float_training(setup, bits=2)
    with pytest.raises(ValueError, match="qgt_epochs"):
        recipes.qgt(setup, 2, recipes.QGTSchedule(qgt_epochs=5))
    with pytest.raises(ValueError, match="dataset must be one of"):
        recipes.build_setup("imagenet", "small_cnn")
    with pytest.raises(ValueError, match="lr_schedule"):
        recipes.Setup(setup.data, setup.build_model, lr_schedule="step")


def test_plain_ste_and_ptq_carry_no_qgt_term(setup):
    for result in (recipes.qat_ste(setup, 2), recipes.ptq(setup, 2)):
        kernels = quantized_kernels(result.qgt_model)
        assert kernels and all(entry.regularizer is None for entry in kernels), result.method


def test_every_method_distills_from_the_setup_teacher(setup):
    import dataclasses

    distilled = dataclasses.replace(setup, distillation=recipes.Distillation(temperature=2.0, weight=0.5),
                                    _float_result=None)
    teacher = distilled.teacher()
    frozen = [w.copy() for w in teacher.get_weights()]
    for result in (recipes.float_training(distilled), recipes.qgt(distilled, 2)):
        assert {"hard_loss", "distillation_loss"} <= set(result.history), result.method
    assert "qgt_loss" in result.history  # the callbacks still act on the student
    assert distilled.teacher() is teacher and not teacher.trainable
    for kept, now in zip(frozen, teacher.get_weights()):  # moving statistics included
        np.testing.assert_array_equal(kept, now)


def test_unlabeled_images_train_through_the_teacher_on_mixed_batches(setup):
    import dataclasses

    unlabeled = datasets.UnlabeledImages.at(datasets.bundled_transfer_dir(), image_size=(16, 16), batch_size=32)
    data = dataclasses.replace(setup.data, unlabeled=unlabeled)
    with pytest.raises(ValueError, match="unlabeled images teach only through a teacher"):
        dataclasses.replace(setup, data=data, _float_result=None)
    distilled = dataclasses.replace(setup, data=data, distillation=recipes.Distillation(weight=0.5),
                                    _float_result=None)
    x, y = next(iter(distilled.method_data()))
    assert x.shape[0] == 64 and (y.numpy()[32:] == datasets.UNLABELED).all() and set(y.numpy()[:32]) <= {0, 1}
    assert next(iter(setup.method_data()))[0].shape[0] == 32  # no unlabeled images: the training data itself
    assert_on_grid(recipes.qgt(distilled, 2))
    with pytest.raises(ValueError, match="unlabeled_oversample needs unlabeled images"):
        dataclasses.replace(setup, unlabeled_oversample=(1, 0.4), _float_result=None)


def _brightness_teacher(threshold):
    """A float 'teacher' that says class 1 exactly for images brighter than ``threshold`` on average."""
    import tf_keras as keras

    inputs = keras.Input((16, 16, 3))
    mean = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(2, activation="softmax")
    outputs = dense(mean)
    dense.set_weights([np.array([[-100.0, 100.0]] * 3) / 3, np.array([100.0, -100.0]) * threshold])
    return keras.Model(inputs, outputs)


def test_oversampling_draws_the_images_of_the_teachers_class(setup):
    import dataclasses

    unlabeled = datasets.UnlabeledImages.at(datasets.bundled_transfer_dir(), image_size=(16, 16), batch_size=32,
                                            augment=False)
    as_they_come = np.concatenate([x.numpy() for x, _ in unlabeled.read().take(20)])
    threshold = float(np.quantile(as_they_come.mean(axis=(1, 2, 3)), 0.8))  # class 1: the brightest 20%
    teacher = _brightness_teacher(threshold)
    assert 0.1 < (teacher.predict(as_they_come, verbose=0).argmax(-1) == 1).mean() < 0.3
    oversampled = dataclasses.replace(setup, data=dataclasses.replace(setup.data, unlabeled=unlabeled),
                                      distillation=recipes.Distillation(), unlabeled_oversample=(1, 0.6),
                                      _teacher=teacher, _float_result=None)
    extra = np.concatenate([x.numpy()[32:] for x, _ in oversampled.method_data().take(10)])
    assert 0.5 < (teacher.predict(extra, verbose=0).argmax(-1) == 1).mean() < 0.7  # 320 draws at 60%


def test_frozen_batchnorm_keeps_the_statistics_of_the_start(setup):
    import dataclasses

    frozen = dataclasses.replace(setup, freeze_batchnorm=True, _float_result=None)
    start = {layer.name: [w.copy() for w in layer.get_weights()] for layer in frozen.pretrained()[0].layers
             if layer.name.endswith("_bn")}
    result = recipes.qat_ste(frozen, 2)
    for name, weights in start.items():  # gamma, beta and both moving statistics: not re-estimated either
        for kept, now in zip(weights, result.model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(kept, now)


def test_anchored_batchnorm_anchors_before_after_every_epoch_and_after_snapping(setup, monkeypatch):
    import dataclasses

    anchored = dataclasses.replace(setup, distillation=recipes.Distillation(), anchor_batchnorm=True,
                                   finetune_epochs=2, _float_result=None)
    models_anchored = []
    anchor = conversion.anchor_batchnorm

    def recording(model, reference, dataset, *args, **kwargs):
        assert reference is anchored.teacher()
        assert len(dataset) == min(recipes.BN_REESTIMATION_BATCHES, anchored.data.steps_per_epoch)
        models_anchored.append(model)
        return anchor(model, reference, dataset, *args, **kwargs)

    monkeypatch.setattr(conversion, "anchor_batchnorm", recording)
    monkeypatch.setattr(conversion, "recalibrate_batchnorm", lambda *args, **kwargs: pytest.fail("re-estimated"))
    result = recipes.qat_ste(anchored, 2)
    # Before training and after each of the 2 epochs (the quantized model), then the snapped plain model.
    assert len(models_anchored) == 4 and all(model is result.qgt_model for model in models_anchored[:3])
    assert models_anchored[3] is result.model
    for layer in result.model.layers:  # the anchored statistics are the quantized model's too
        if isinstance(layer, keras.layers.BatchNormalization):
            for expected, got in zip(layer.get_weights(), result.qgt_model.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("changes", [{}, {"freeze_batchnorm": True, "distillation": recipes.Distillation()}])
def test_anchored_batchnorm_needs_a_teacher_and_excludes_freezing(setup, changes):
    import dataclasses

    with pytest.raises(ValueError, match="anchor_batchnorm anchors BatchNormalization to a teacher"):
        dataclasses.replace(setup, anchor_batchnorm=True, **changes)

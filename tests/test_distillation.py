"""qgt_keras.distillation: the loss as documented, a frozen teacher, callbacks on the student, tf.distribute."""

import numpy as np
import pytest
import tf_keras as keras

from conftest import run_on_two_logical_cpus, small_cnn
from qgt_keras import conversion, datasets, distillation
from qgt_keras.callbacks import QGTMonitor, QGTScheduler


def _numpy_losses(labels, student, teacher, temperature, weight):
    def soft(p):
        z = np.log(p) / temperature
        z = np.exp(z - z.max(-1, keepdims=True))
        return z / z.sum(-1, keepdims=True)
    q_t, q_s = soft(teacher), soft(student)
    kl = temperature ** 2 * (q_t * (np.log(q_t) - np.log(q_s))).sum(-1)
    ce = -np.log(student[np.arange(len(labels)), labels])
    return (1 - weight) * ce + weight * kl, ce, kl


@pytest.mark.parametrize("temperature, weight", [(1.0, 0.0), (2.0, 0.5), (4.0, 1.0)])
def test_the_loss_mixes_hard_labels_and_soft_targets_as_documented(temperature, weight):
    rng = np.random.default_rng(0)
    student = rng.dirichlet(np.ones(3), 16).astype(np.float32)
    teacher = rng.dirichlet(np.ones(3), 16).astype(np.float32)
    labels = rng.integers(0, 3, 16)
    total, hard, soft = distillation.distillation_losses(labels, student, teacher, temperature, weight)
    expected = _numpy_losses(labels, student, teacher, temperature, weight)
    for actual, wanted in zip((total, hard, soft), expected):
        np.testing.assert_allclose(actual.numpy(), wanted, rtol=1e-4, atol=1e-6)
    same = distillation.distillation_losses(labels, teacher, teacher, temperature, weight)[2]
    np.testing.assert_allclose(same.numpy(), 0, atol=1e-5)  # matching the teacher costs nothing


def test_unlabeled_examples_add_no_hard_loss():
    rng = np.random.default_rng(1)
    student = rng.dirichlet(np.ones(2), 6).astype(np.float32)
    teacher = rng.dirichlet(np.ones(2), 6).astype(np.float32)
    labels = np.array([0, 1, datasets.UNLABELED, 1, datasets.UNLABELED, 0])
    labeled = labels != datasets.UNLABELED
    total, hard, soft = distillation.distillation_losses(labels, student, teacher, 2.0, 0.5)
    expected = _numpy_losses(labels[labeled], student[labeled], teacher[labeled], 2.0, 0.5)
    np.testing.assert_allclose(hard.numpy()[labeled], expected[1], rtol=1e-4)
    np.testing.assert_array_equal(hard.numpy()[~labeled], 0)
    np.testing.assert_allclose(total.numpy()[~labeled], 0.5 * soft.numpy()[~labeled], rtol=1e-6)


@pytest.fixture(scope="module")
def teacher(toy_images):
    x, y = toy_images
    model = small_cnn()
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, verbose=0)
    return model


def test_the_teacher_stays_frozen_and_the_student_learns_it(teacher, toy_images):
    x, y = toy_images
    frozen = [w.copy() for w in teacher.get_weights()]  # BatchNormalization statistics included
    student = conversion.quantize_model(small_cnn(), bits=2)
    before = [w.copy() for w in student.get_weights()]
    distiller = distillation.Distiller(student, teacher, temperature=2.0, weight=1.0)
    distiller.compile(keras.optimizers.Adam(1e-2), metrics=["accuracy"])
    history = distiller.fit(x, np.zeros_like(y), epochs=3, verbose=0).history  # weight 1: labels unused
    assert not teacher.trainable
    for kept, now in zip(frozen, teacher.get_weights()):
        np.testing.assert_array_equal(kept, now)
    assert any(not np.array_equal(a, b) for a, b in zip(before, student.get_weights()))
    assert {"loss", "hard_loss", "distillation_loss", "accuracy"} <= set(history)
    assert history["distillation_loss"][-1] < history["distillation_loss"][0]
    # The reported loss is the soft term plus the student's QGT terms.
    assert history["loss"][-1] > history["distillation_loss"][-1]


def test_the_loss_is_what_compute_loss_returns_and_evaluation_reports(teacher, toy_images):
    x, y = toy_images
    student = small_cnn()
    distiller = distillation.Distiller(student, teacher, temperature=3.0, weight=0.25)
    distiller.compile("adam")
    expected = _numpy_losses(y, student.predict(x, verbose=0).astype(np.float64),
                             teacher.predict(x, verbose=0).astype(np.float64), 3.0, 0.25)[0].mean()
    expected += sum(float(loss) for loss in student.losses)
    assert distiller.evaluate(x, y, batch_size=128, verbose=0, return_dict=True)["loss"] == pytest.approx(
        expected, rel=1e-3)


def test_training_accuracy_counts_the_labeled_examples_only(teacher, toy_images):
    x, y = toy_images
    student = small_cnn()
    distiller = distillation.Distiller(student, teacher, weight=0.5)
    distiller.compile("adam", metrics=["accuracy"])
    unlabeled = np.full_like(y, datasets.UNLABELED)
    mixed = np.where(np.arange(len(y)) % 2 == 0, y, unlabeled)
    predicted = student.predict(x, verbose=0).argmax(-1)
    wanted = float(np.mean(predicted[::2] == y[::2]))
    assert distiller.evaluate(x, mixed, batch_size=len(y), verbose=0, return_dict=True)["accuracy"] == (
        pytest.approx(wanted, abs=1e-6))


def test_callbacks_act_on_the_student(teacher, toy_images):
    x, y = toy_images
    student = conversion.quantize_model(small_cnn(), bits=2)
    distiller = distillation.Distiller(student, teacher)
    distiller.compile("adam")
    history = distiller.fit(x, y, epochs=2, verbose=0, callbacks=[
        QGTScheduler(1e-3, 1e-2, ramp_steps=2, hard_quantization_epochs=1), QGTMonitor()]).history
    assert student.get_layer("dw1").quantize_gate.numpy() == 1.0
    assert history["qgt_strength"] == pytest.approx([1e-2, 0.0]) and "qgt/pw1" in history
    assert distillation.student_of(distiller) is student and distillation.student_of(student) is student


def test_student_inference_mode_trains_gamma_and_leaves_the_statistics(teacher, toy_images):
    x, y = toy_images
    student = small_cnn()
    norms = [layer for layer in student.layers if isinstance(layer, keras.layers.BatchNormalization)]
    statistics = [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in norms]
    gammas = [layer.gamma.numpy() for layer in norms]
    distiller = distillation.Distiller(student, teacher, student_inference_mode=True)
    distiller.compile(keras.optimizers.Adam(1e-2))
    distiller.fit(x, y, epochs=1, verbose=0)
    for layer, (mean, variance), gamma in zip(norms, statistics, gammas):
        np.testing.assert_array_equal(layer.moving_mean.numpy(), mean)
        np.testing.assert_array_equal(layer.moving_variance.numpy(), variance)
        assert not np.array_equal(layer.gamma.numpy(), gamma)
    # The same fit in the default training mode moves the statistics.
    default = distillation.Distiller(student, teacher)
    default.compile(keras.optimizers.Adam(1e-2))
    default.fit(x, y, epochs=1, verbose=0)
    assert not np.array_equal(norms[0].moving_mean.numpy(), statistics[0][0])


def test_bad_arguments_are_named(teacher):
    inputs = keras.Input((16, 16, 3))
    logits = keras.Model(inputs, keras.layers.Dense(2, name="logits")(keras.layers.Flatten()(inputs)), name="raw")
    with pytest.raises(ValueError, match="the student 'raw' ends in layer 'logits' .* without a softmax"):
        distillation.Distiller(logits, teacher)
    with pytest.raises(ValueError, match=r"the student 'small_cnn' takes inputs \(32, 32, 3\)"):
        distillation.Distiller(small_cnn((32, 32, 3)), teacher)
    with pytest.raises(ValueError, match=r"weight must be in \[0, 1\], got 1.5"):
        distillation.Distiller(small_cnn(), teacher, weight=1.5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        distillation.Distiller(small_cnn(), teacher, temperature=0)
    with pytest.raises(ValueError, match="compile it without loss="):
        distillation.Distiller(small_cnn(), teacher).compile("adam", loss="mse")


_MIRRORED_DISTILLATION = """
    import numpy as np
    import tf_keras as keras
    from qgt_keras import conversion, distillation, models
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 16, 16, 3)).astype("float32"), rng.integers(0, 2, 64)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        teacher = models.small_cnn((16, 16, 3))
        student = conversion.quantize_model(models.small_cnn((16, 16, 3)), bits=2)
        distiller = distillation.Distiller(student, teacher, temperature=2.0, weight=0.5)
        distiller.compile(keras.optimizers.Adam(1e-3), metrics=["accuracy"])
    history = distiller.fit(x, y, batch_size=16, epochs=2, verbose=0).history  # 4 steps per epoch
    single = distillation.Distiller(student, teacher, temperature=2.0, weight=0.5)
    single.compile("adam")
    steps = {entry.regularizer.step for entry in conversion.quantized_kernels(student)}
    print("replicas", strategy.num_replicas_in_sync, "steps", sorted(steps))
    print("loss", history["loss"][-1], "single-device",
          single.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)["loss"])
    print("mirrored-eval", distiller.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)["loss"])
"""


def test_distillation_under_mirrored_strategy_on_two_logical_cpus():
    lines = run_on_two_logical_cpus(_MIRRORED_DISTILLATION)
    assert lines["replicas"] == "2 steps [8]"  # every regularizer counted each global step once
    # The loss over the global batch, as one device computes it: up to the replicas' float32 reduction order, which
    # here moved it by up to 4e-4 (a loss counted per replica, not per global batch, would be off by 2x).
    single = float(lines["loss"].split()[-1])
    assert float(lines["mirrored-eval"]) == pytest.approx(single, rel=2e-3)

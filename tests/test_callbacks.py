import numpy as np
import pytest
import tf_keras as keras

from conftest import small_cnn
from qgt_keras import conversion, distillation
from qgt_keras.callbacks import BatchNormAnchor, QGTMonitor, QGTScheduler
from qgt_keras.conversion import quantize_model


class GateRecorder(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.gates = getattr(self, "gates", []) + [self.model.get_layer("dw1").quantize_gate.numpy()]


def test_schedule_values():
    schedule = QGTScheduler(start_strength=10, end_strength=1000, warmup_steps=5, ramp_steps=10)
    assert [schedule.strength_at(t) for t in (0, 4)] == [0, 0]
    assert schedule.strength_at(5) == pytest.approx(10)
    assert schedule.strength_at(10) == pytest.approx(100)
    assert schedule.strength_at(15) == schedule.strength_at(1000) == 1000


def test_schedule_sets_strengths_and_hands_over_to_hard_quantization(toy_images):
    x, y = toy_images
    model = quantize_model(small_cnn(), bits=2)
    model.compile("adam", "sparse_categorical_crossentropy")
    schedule = QGTScheduler(start_strength=1e-3, end_strength=1e-1, ramp_steps=8, hard_quantization_epochs=1)
    recorder = GateRecorder()
    history = model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[schedule, recorder])
    assert schedule.step == 12
    assert recorder.gates == [0, 0, 1]
    # the strength of each epoch's last step (steps 3, 7 of a ramp over steps 0..8), then the hard phase's
    assert history.history["qgt_strength"] == pytest.approx([10 ** -2.25, 10 ** -1.25, 0.0], rel=1e-5)
    assert model.get_layer("pw1").kernel_regularizer.strength == 0


def test_two_fits_in_a_row_as_the_quick_start_runs_them(toy_images):
    """A QGT phase, then a resumed fit whose every epoch is hard-quantized, under a second scheduler."""
    x, y = toy_images
    model = quantize_model(small_cnn(), bits=2)
    model.compile("adam", "sparse_categorical_crossentropy")
    recorder = GateRecorder()
    ramp = QGTScheduler(1e-3, 1e-1, warmup_steps=4, ramp_steps=4)
    first = model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[ramp, recorder]).history
    hard = QGTScheduler(hard_quantization_epochs=2)
    second = model.fit(x, y, initial_epoch=2, epochs=4, batch_size=32, verbose=0, callbacks=[hard, recorder]).history
    assert recorder.gates == [0, 0, 1, 1]
    assert first["qgt_strength"] == pytest.approx([0.0, 10 ** -1.5], rel=1e-5)  # warmup, then step 7 of 4..8
    assert second["qgt_strength"] == [0.0, 0.0] and model.get_layer("pw1").kernel_regularizer.strength == 0
    assert np.isfinite(first["loss"] + second["loss"]).all()


def test_a_resumed_fit_continues_the_schedule_and_a_fresh_one_restarts_it(toy_images):
    x, y = toy_images
    model = quantize_model(small_cnn(), bits=2)
    model.compile("adam", "sparse_categorical_crossentropy")
    schedule = QGTScheduler(1e-3, 1e-1, ramp_steps=16)  # 4 steps per epoch: the ramp spans 4 epochs
    first = model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[schedule]).history["qgt_strength"]
    resumed = model.fit(x, y, initial_epoch=2, epochs=4, batch_size=32, verbose=0,
                        callbacks=[schedule]).history["qgt_strength"]
    expected = [schedule.strength_at(step) for step in (3, 7, 11, 15)]
    assert first + resumed == pytest.approx(expected, rel=1e-5) and schedule.step == 16
    fresh = model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[schedule]).history["qgt_strength"]
    assert fresh == pytest.approx(expected[:1], rel=1e-5) and schedule.step == 4


def test_the_default_schedule_ends_at_the_default_strength():
    from qgt_keras import callbacks, regularizers
    schedule = QGTScheduler()
    assert schedule.strength_at(0) == pytest.approx(callbacks.DEFAULT_START_STRENGTH)
    assert schedule.strength_at(callbacks.DEFAULT_RAMP_STEPS) == regularizers.DEFAULT_STRENGTH
    assert quantize_model(small_cnn()).get_layer("pw1").kernel_regularizer.strength == pytest.approx(
        regularizers.DEFAULT_STRENGTH)


def test_hard_phase_strength_can_be_kept(toy_images):
    x, y = toy_images
    model = quantize_model(small_cnn(), bits=2)
    model.compile("adam", "sparse_categorical_crossentropy")
    schedule = QGTScheduler(1e-3, 1e-1, ramp_steps=2, hard_quantization_epochs=1, hard_strength=0.05)
    history = model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[schedule])
    assert history.history["qgt_strength"] == pytest.approx([0.1, 0.05])


def test_monitor_logs_total_and_per_layer_terms(toy_images, capsys):
    x, y = toy_images
    model = quantize_model(small_cnn(), bits=2)
    model.compile("adam", "sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=1, verbose=0, callbacks=[QGTMonitor(verbose=1)])
    per_layer = {key: value[0] for key, value in history.history.items() if key.startswith("qgt/")}
    assert set(per_layer) == {"qgt/conv1", "qgt/dw1", "qgt/pw1", "qgt/dense"}
    assert history.history["qgt_loss"][0] == pytest.approx(sum(per_layer.values()), rel=1e-6)
    expected = sum(float(layer.losses[0]) for layer in model.layers if layer.losses)
    assert history.history["qgt_loss"][0] == pytest.approx(expected, rel=1e-4)
    assert 0 < history.history["qgt_error"][0] < 1
    assert "qgt_loss" in capsys.readouterr().out


def test_scheduler_needs_qgt_regularizers(toy_images):
    x, y = toy_images
    model = small_cnn()
    model.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="no QGT regularizer"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[QGTScheduler()])


def test_scheduler_bad_arguments():
    with pytest.raises(ValueError, match="start_strength"):
        QGTScheduler(start_strength=0)
    with pytest.raises(ValueError, match=">= 0"):
        QGTScheduler(ramp_steps=-1)


def test_qgt_pulls_weights_onto_the_grid_under_the_schedule(toy_images):
    x, y = toy_images
    model = quantize_model(small_cnn(), bits=2, edge_bits=None)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    before = model.fit(x, y, epochs=1, verbose=0, callbacks=[QGTMonitor()]).history["qgt_error"][0]
    after = model.fit(x, y, epochs=6, verbose=0, callbacks=[
        QGTScheduler(start_strength=1e-2, end_strength=10, ramp_steps=12), QGTMonitor()]).history["qgt_error"]
    assert after[-1] < before / 10, (before, after)
    assert np.isfinite(after).all()


def test_batchnorm_anchor_leaves_the_statistics_anchored_to_the_final_weights(toy_images, monkeypatch):
    x, y = toy_images
    measured = []  # the models whose moments were computed from scratch
    moments = conversion.batchnorm_input_moments
    monkeypatch.setattr(conversion, "batchnorm_input_moments", lambda model, *a, **k: measured.append(model) or
                        moments(model, *a, **k))
    teacher = small_cnn()
    conversion.recalibrate_batchnorm(teacher, [x[:64] + 0.5])  # statistics that the training images do not give
    student = quantize_model(teacher, bits=2)  # the teacher's weights and statistics, on the grid
    conversion.set_hard_quantization(student)
    distiller = distillation.Distiller(student, teacher, student_inference_mode=True)
    distiller.compile(keras.optimizers.Adam(1e-2))
    batches = [x[:64], x[64:]]
    anchors = []

    class Recorder(BatchNormAnchor):
        def _anchor(self):
            super()._anchor()
            anchors.append(student.get_layer("pw1_bn").moving_mean.numpy())

    distiller.fit(x, y, epochs=2, verbose=0, callbacks=[Recorder(teacher, batches)])
    assert len(anchors) == 3 and not np.allclose(anchors[1], anchors[2])  # before, after epoch 1, after epoch 2
    assert measured == [teacher]  # the frozen teacher's moments once, not once per anchoring
    final = [w.numpy() for w in student.weights if "moving" in w.name]
    conversion.anchor_batchnorm(student, teacher, batches)  # the weights have not moved since: a fixed point
    for kept, again in zip(final, [w.numpy() for w in student.weights if "moving" in w.name]):
        np.testing.assert_allclose(again, kept, rtol=1e-5, atol=1e-6)

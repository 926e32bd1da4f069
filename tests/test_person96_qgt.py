"""Acceptance: on person96, QGT-trained weights survive 2-bit snapping better than plainly trained ones."""

import numpy as np
import pytest
import tf_keras as keras

from qgt_keras import conversion, datasets, models
from qgt_keras.callbacks import QGTScheduler
from qgt_keras.report import evaluate_batch

IMAGE_SIZE = (48, 48)
EPOCHS = 6
BATCH = 32


def _accuracy(model, x, y):
    return evaluate_batch(model, x, y, keras.losses.SparseCategoricalCrossentropy())[1]


def _train(quantize, train, steps_per_epoch):
    keras.utils.set_random_seed(0)
    model = models.small_cnn(IMAGE_SIZE + (3,), filters=16)
    callbacks = []
    if quantize:
        # One float epoch, a geometric ramp over three, then hold.
        model = conversion.quantize_model(model, bits=2, edge_bits=None)
        callbacks = [QGTScheduler(4e-3, 0.4, warmup_steps=steps_per_epoch, ramp_steps=3 * steps_per_epoch)]
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(train, epochs=EPOCHS, verbose=0, callbacks=callbacks)
    return model


@pytest.fixture(scope="module")
def person96():
    root = datasets.bundled_person96_dir()
    train, info = datasets.read_image_folder(
        root / "train", image_size=IMAGE_SIZE, batch_size=BATCH, shuffle=True, seed=0, validate=False)
    test, _ = datasets.read_image_folder(root / "test", image_size=IMAGE_SIZE, batch_size=256, validate=False)
    x, y = (np.concatenate(parts) for parts in zip(*((a.numpy(), b.numpy()) for a, b in test)))
    return train, -(-info.num_examples // BATCH), x, y


def test_qgt_loses_less_accuracy_at_2_bits_than_plain_training(person96):
    train, steps_per_epoch, x, y = person96
    results = {}
    for name, quantize in (("plain", False), ("qgt", True)):
        model = _train(quantize, train, steps_per_epoch)
        float_accuracy = _accuracy(model, x, y)
        snapped = conversion.quantize_model(model, bits=2, edge_bits=None) if not quantize else model
        conversion.snap_weights(snapped)
        results[name] = (float_accuracy, _accuracy(snapped, x, y))
    (plain_float, plain_2bit), (qgt_float, qgt_2bit) = results["plain"], results["qgt"]
    assert plain_float > 0.85, results  # the float model learned the task
    assert qgt_float - qgt_2bit < plain_float - plain_2bit, results
    assert qgt_2bit > plain_2bit + 0.03, results

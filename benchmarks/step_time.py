"""Training step time of a QGT model against its float original: MobileNetV1-0.25, 96x96x3, batch 32.

    python benchmarks/step_time.py [--steps 20] [--rounds 3] [--out benchmarks/results/step_time.json]

Writes benchmarks/results/step_time.json. Both models train on the same random batch with Adam; each
round times `steps` steps of each model after a compiled warm-up, alternating the two so that a busy
machine slows both alike; the reported time per step is the median over rounds. Goal: ratio <= 1.2.
"""

import json
import os
import pathlib
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from absl import app, flags  # noqa: E402

import provenance  # noqa: E402
from qgt_keras import conversion, models  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "step_time.json"
FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 20, "Timed steps per model per round.")
flags.DEFINE_integer("rounds", 3, "Alternating rounds; the median is reported.")
flags.DEFINE_integer("batch", 32, "Batch size.")
flags.DEFINE_string("out", str(RESULTS), "Result file.")


def _seconds_per_step(model, dataset, steps):
    started = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    return (time.perf_counter() - started) / steps


def main(argv):
    del argv
    run = provenance.Run()
    keras.utils.set_random_seed(0)
    float_model = models.mobilenet_v1((96, 96, 3), alpha=0.25)
    qgt_model = conversion.quantize_model(float_model, bits=2)
    rng = np.random.default_rng(0)
    batch = (rng.random((FLAGS.batch, 96, 96, 3), np.float32), rng.integers(0, 2, FLAGS.batch))
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    timings = {"float": [], "qgt": []}
    for name, model in (("float", float_model), ("qgt", qgt_model)):
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
        _seconds_per_step(model, dataset, 3)  # trace and warm up
    for round_index in range(FLAGS.rounds):
        for name, model in (("float", float_model), ("qgt", qgt_model)):
            timings[name].append(_seconds_per_step(model, dataset, FLAGS.steps))
        print(f"round {round_index + 1}/{FLAGS.rounds}: float {timings['float'][-1] * 1e3:.1f} ms/step, "
              f"qgt {timings['qgt'][-1] * 1e3:.1f} ms/step")
    float_step, qgt_step = statistics.median(timings["float"]), statistics.median(timings["qgt"])
    result = {
        "model": "mobilenet_v1_0.25_96x96x3 (2-bit QGT, first/last 8-bit)",
        "batch": FLAGS.batch,
        "float_step_s": round(float_step, 5),
        "qgt_step_s": round(qgt_step, 5),
        "ratio": round(qgt_step / float_step, 3),
        "steps_per_round": FLAGS.steps,
        "rounds": FLAGS.rounds,
        "provenance": run.record(),
    }
    out = pathlib.Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    app.run(main)

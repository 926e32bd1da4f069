"""Training step time of the QGT recipe against float training: MobileNetV1-0.25, 96x96x3, batch 32.

    python benchmarks/step_time.py [--steps 32] [--rounds 3] [--scale_interval 16]
                                   [--out benchmarks/results/step_time.json]

Times, on the same random batch with Adam, the training steps that matter:

* ``float``: the float model (what QGT is compared against);
* ``recipe``: what recipes.qgt runs with its default QGTSchedule: every quantized layer on its grid from the
  first step (the per-channel MSE scale of every kernel estimated in every forward pass, straight-through
  gradients) plus the QGT term at ``hard_strength``;
* ``recipe_scale_interval``: the recipe with each layer's scales re-estimated every ``--scale_interval``
  training steps instead of every step (``QGTSchedule(scale_interval=...)``);
* ``qgt_phase``: the optional QGT phase (float forward pass, the QGT term with its Lloyd scale estimate);
* ``float_distilled``, ``recipe_distilled``, ``recipe_distilled_scale_interval``: the same with the frozen
  float teacher's forward pass of every batch (qgt_keras.distillation), as the benchmark's person detector
  trains.

Each round times ``steps`` steps of each variant after a compiled warm-up, alternating the variants so that a
busy machine slows all alike; the reported time per step is the median over rounds (every round's is kept
beside it: on a shared 2-core machine one round can take twice another). CPU time per step (the process's
threads together, median over rounds) is reported too: it does not count the time the machine gives to
others, so its ratios are steadier; and so is the fastest round's wall time (on this project's 2-core
machine a round runs either with both cores busy or with one, float's step taking ~50 or ~80 ms at the same
CPU time, and the median can land on either mode). Goal (issue 3, 9):
recipe / float <= 1.2 (and recipe_distilled / float_distilled, the same comparison with a teacher).
``--steps`` must be a multiple of ``--scale_interval``: every round then times the same number of
re-estimations, wherever it starts.
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
from qgt_keras import conversion, distillation, models, recipes  # noqa: E402
from qgt_keras.layers import quantized_kernels  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "step_time.json"
FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 32, "Timed steps per variant per round.")
flags.DEFINE_integer("rounds", 3, "Alternating rounds; the median is reported.")
flags.DEFINE_integer("batch", 32, "Batch size.")
flags.DEFINE_integer("bits", 2, "Weight width of the quantized layers (first and last: 8, as the recipe).")
flags.DEFINE_integer("scale_interval", 16, "Training steps between scale re-estimations of recipe_scale_interval.",
                     lower_bound=1)
flags.DEFINE_string("out", str(RESULTS), "Result file.")


def _seconds_per_step(model, dataset, steps):
    """(wall, CPU) seconds per step of ``steps`` training steps; CPU time sums the process's threads."""
    started, cpu_started = time.perf_counter(), time.process_time()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    return (time.perf_counter() - started) / steps, (time.process_time() - cpu_started) / steps


def _quantized(float_model, hard, strength, scale_interval=1):
    """The recipe's model in one of its phases: quantize_model with the recipe's policy defaults, the QGT term
    held at ``strength`` (its own ramp off, as QGTScheduler sets it)."""
    model = conversion.quantize_model(float_model, bits=FLAGS.bits, strength=strength, scale_interval=scale_interval)
    conversion.set_hard_quantization(model, hard)
    for entry in quantized_kernels(model):
        entry.regularizer.ramp_steps = 0
    return model


def main(argv):
    del argv
    if FLAGS.steps % FLAGS.scale_interval:
        raise app.UsageError(f"--steps ({FLAGS.steps}) must be a multiple of --scale_interval ({FLAGS.scale_interval})")
    run = provenance.Run()
    keras.utils.set_random_seed(0)
    schedule = recipes.QGTSchedule()
    float_model = models.mobilenet_v1((96, 96, 3), alpha=0.25)
    teacher = models.mobilenet_v1((96, 96, 3), alpha=0.25)
    variants = {
        "float": float_model,
        "recipe": _quantized(float_model, hard=True, strength=schedule.hard_strength),
        "recipe_scale_interval": _quantized(float_model, hard=True, strength=schedule.hard_strength,
                                            scale_interval=FLAGS.scale_interval),
        "qgt_phase": _quantized(float_model, hard=False, strength=schedule.end_strength),
        "float_distilled": distillation.Distiller(models.mobilenet_v1((96, 96, 3), alpha=0.25), teacher),
        "recipe_distilled": distillation.Distiller(
            _quantized(float_model, hard=True, strength=schedule.hard_strength), teacher),
        "recipe_distilled_scale_interval": distillation.Distiller(
            _quantized(float_model, hard=True, strength=schedule.hard_strength, scale_interval=FLAGS.scale_interval),
            teacher),
    }
    rng = np.random.default_rng(0)
    batch = (rng.random((FLAGS.batch, 96, 96, 3), np.float32), rng.integers(0, 2, FLAGS.batch))
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    timings, cpu_timings = {name: [] for name in variants}, {name: [] for name in variants}
    for model in variants.values():
        recipes.compile_model(model, 1e-3)
        _seconds_per_step(model, dataset, 3)  # trace and warm up
    for round_index in range(FLAGS.rounds):
        for name, model in variants.items():
            wall, cpu = _seconds_per_step(model, dataset, FLAGS.steps)
            timings[name].append(wall)
            cpu_timings[name].append(cpu)
        print(f"round {round_index + 1}/{FLAGS.rounds}: " + ", ".join(
            f"{name} {times[-1] * 1e3:.1f} ms/step ({cpu_timings[name][-1] * 1e3:.1f} CPU)"
            for name, times in timings.items()), flush=True)
    step = {name: statistics.median(times) for name, times in timings.items()}
    fastest = {name: min(times) for name, times in timings.items()}
    cpu_step = {name: statistics.median(times) for name, times in cpu_timings.items()}
    result = {
        "model": f"mobilenet_v1_0.25_96x96x3 ({FLAGS.bits}-bit, first/last 8-bit)",
        "batch": FLAGS.batch,
        "step_s": {name: round(seconds, 5) for name, seconds in step.items()},
        "round_step_s": {name: [round(seconds, 5) for seconds in times] for name, times in timings.items()},
        "cpu_step_s": {name: round(seconds, 5) for name, seconds in cpu_step.items()},
        "fastest_round_step_s": {name: round(seconds, 5) for name, seconds in fastest.items()},
        "cpu_ratio_recipe_to_float": round(cpu_step["recipe"] / cpu_step["float"], 3),
        "cpu_ratio_recipe_distilled_to_float_distilled": round(
            cpu_step["recipe_distilled"] / cpu_step["float_distilled"], 3),
        "cpu_ratio_recipe_scale_interval_to_float": round(cpu_step["recipe_scale_interval"] / cpu_step["float"], 3),
        "cpu_ratio_recipe_distilled_scale_interval_to_float_distilled": round(
            cpu_step["recipe_distilled_scale_interval"] / cpu_step["float_distilled"], 3),
        "ratio_recipe_to_float": round(step["recipe"] / step["float"], 3),
        "ratio_recipe_scale_interval_to_float": round(step["recipe_scale_interval"] / step["float"], 3),
        "fastest_ratio_recipe_to_float": round(fastest["recipe"] / fastest["float"], 3),
        "fastest_ratio_recipe_scale_interval_to_float": round(fastest["recipe_scale_interval"] / fastest["float"], 3),
        "ratio_qgt_phase_to_float": round(step["qgt_phase"] / step["float"], 3),
        "ratio_recipe_distilled_to_float_distilled": round(step["recipe_distilled"] / step["float_distilled"], 3),
        "ratio_recipe_distilled_scale_interval_to_float_distilled": round(
            step["recipe_distilled_scale_interval"] / step["float_distilled"], 3),
        "fastest_ratio_recipe_distilled_scale_interval_to_float_distilled": round(
            fastest["recipe_distilled_scale_interval"] / fastest["float_distilled"], 3),
        "ratio_recipe_distilled_to_float": round(step["recipe_distilled"] / step["float"], 3),
        "scale_interval": FLAGS.scale_interval,
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

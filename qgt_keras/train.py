"""qgt-train: train a (quantized) person detector or Fashion-MNIST model with one of the recipes.

    qgt-train --method=qgt --bits=2 --epochs=3 --init_from=mlperf_tiny_vww_96.h5 --out_dir=runs/qgt2
    qgt-train --dataset=fashion_mnist --model=mobilenet_28 --alpha=1 --image_size=28 --float_epochs=4 \\
        --method=qgt --budget_bytes=12000 --out_dir=runs/fmnist_mixed

Writes into --out_dir: model.keras (the evaluated model, kernels on their grid), qgt_model.keras (the model
with quantized layers, input of qgt-export), calibration.npy (training images for qgt-export), history.json,
result.json, report.{json,md} (the bottleneck report) and weights_vs_grid.png (per-layer weight
histograms against the grid, before and after training).
"""

import json
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from qgt_keras import models, plots, quantizers, recipes, report  # noqa: E402

FLAGS = flags.FLAGS
# Training images saved for qgt-export's activation calibration.
_SAVED_CALIBRATION_IMAGES = 64

flags.DEFINE_enum("dataset", "person_folder", list(recipes.DATASETS), "Data set reader.")
flags.DEFINE_string("data_dir", None, "Data folder (default: the bundled person96; Fashion-MNIST: Debian's "
                    "dataset-fashion-mnist location). Layouts: see qgt_keras.recipes.load_data.")
flags.DEFINE_enum("model", "mobilenet_v1", list(models.MODELS), "Architecture.")
flags.DEFINE_float("alpha", 0.25, "Width multiplier (mobilenet_v1, mobilenet_28).")
flags.DEFINE_bool("grayscale", False, "1-channel input (TFLM person_detect style).")
flags.DEFINE_integer("image_size", 96, "Square input size for image folders and VWW (Fashion-MNIST is 28).",
                     lower_bound=8)
flags.DEFINE_bool("augment", True, "MLPerf augmentation (rotation, shift, zoom, flip) of the training images.")
flags.DEFINE_integer("bits", 2, "Weight bits of the quantized layers.", lower_bound=1, upper_bound=8)
flags.DEFINE_list("bits_per_layer", [], "Per-layer bits, NAME=BITS, e.g. conv1=8,dense=8.")
flags.DEFINE_string("edge_bits", "8", "Bits of the first and last quantized layer, or 'none' to use --bits.")
flags.DEFINE_enum("method", "qgt", ["float", "ptq", "qat", "qgt"],
                  "float | ptq (post-training) | qat (plain STE) | qgt; qgt with --budget_bytes picks bits per "
                  "layer automatically.")
flags.DEFINE_enum("ptq_scale", "mse", list(quantizers.SCALE_METHODS), "Per-channel scale search of --method=ptq.")
flags.DEFINE_integer("budget_bytes", None, "Packed kernel bytes for automatic mixed precision (qgt only).",
                     lower_bound=1)
flags.DEFINE_integer("float_epochs", 0, "Float pre-training epochs before the method's epochs.", lower_bound=0)
flags.DEFINE_integer("epochs", 3, "Epochs of the method (fine-tuning for ptq: float epochs).", lower_bound=1)
flags.DEFINE_integer("qgt_epochs", recipes.QGTSchedule.qgt_epochs,
                     "qgt: first epochs with a float forward pass and a ramped QGT strength; the rest run on the "
                     "grid (STE).", lower_bound=0)
flags.DEFINE_float("start_strength", recipes.QGTSchedule.start_strength, "qgt: QGT strength at the ramp start.")
flags.DEFINE_float("end_strength", recipes.QGTSchedule.end_strength, "qgt: QGT strength at the ramp end.")
flags.DEFINE_float("hard_strength", recipes.QGTSchedule.hard_strength, "qgt: QGT strength while on the grid.",
                   lower_bound=0)
flags.DEFINE_integer("batch", 32, "Batch size.", lower_bound=1)
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate of the method's epochs.")
flags.DEFINE_float("float_learning_rate", 3e-3, "Adam learning rate of --float_epochs.")
flags.DEFINE_enum("lr_schedule", "cosine", list(recipes.LR_SCHEDULES), "Learning-rate schedule of each phase.")
flags.DEFINE_float("bn_momentum", 0.9, "BatchNormalization momentum (low for runs of a few hundred steps).")
flags.DEFINE_string("init_from", None, "Start from these float weights (.h5/.keras), e.g. the MLPerf reference.")
flags.DEFINE_string("out_dir", None, "Output folder (created).")
flags.DEFINE_integer("seed", 0, "Random seed (weights, shuffling, augmentation, subsets).")
flags.DEFINE_integer("limit", None, "Use only this many training images (quick runs).", lower_bound=1)
flags.DEFINE_integer("test_limit", None, "Use only this many test images.", lower_bound=1)
flags.DEFINE_integer("verbose", 1, "Keras fit verbosity: 0 silent, 1 progress bars, 2 one line per epoch.")
flags.mark_flag_as_required("out_dir")


def parse_bits_per_layer(entries):
    """["conv1=8", "dense=8"] -> {"conv1": 8, "dense": 8}; raises ValueError naming a bad entry."""
    parsed = {}
    for entry in entries:
        name, sep, value = entry.partition("=")
        if not sep or not name or not value.strip().isdigit():
            raise ValueError(f"--bits_per_layer entry {entry!r} is not NAME=BITS")
        parsed[name.strip()] = quantizers.check_bits(int(value), f"--bits_per_layer bits of {name!r}")
    return parsed


def parse_edge_bits(value):
    if value.lower() == "none":
        return None
    if not value.isdigit():
        raise ValueError(f"--edge_bits must be 1..8 or 'none', got {value!r}")
    return quantizers.check_bits(int(value), "--edge_bits")


def check_flags(model_layers):
    """Checks flag combinations the flag definitions cannot; returns (bits_per_layer, edge_bits)."""
    bits_per_layer = parse_bits_per_layer(FLAGS.bits_per_layer)
    unknown = sorted(set(bits_per_layer) - set(model_layers))
    if unknown:
        raise ValueError(f"--bits_per_layer names {unknown}, not quantizable layers of {FLAGS.model}: "
                         f"{', '.join(model_layers)}")
    if FLAGS.budget_bytes is not None and FLAGS.method != "qgt":
        raise ValueError(f"--budget_bytes chooses bits per layer for --method=qgt, not {FLAGS.method}")
    if FLAGS.budget_bytes is not None and bits_per_layer:
        raise ValueError("--budget_bytes chooses every layer's bits; do not also pass --bits_per_layer")
    if FLAGS.method == "qgt" and FLAGS.qgt_epochs > FLAGS.epochs:
        raise ValueError(f"--qgt_epochs ({FLAGS.qgt_epochs}) exceeds --epochs ({FLAGS.epochs})")
    if not 0 < FLAGS.start_strength <= FLAGS.end_strength:
        raise ValueError("need 0 < --start_strength <= --end_strength")
    if FLAGS.init_from and not pathlib.Path(FLAGS.init_from).is_file():
        raise ValueError(f"--init_from file {FLAGS.init_from} does not exist")
    return bits_per_layer, parse_edge_bits(FLAGS.edge_bits)


def train(setup, bits_per_layer):
    """Runs the method the flags select; returns its RecipeResult."""
    if FLAGS.method == "float":
        return recipes.float_training(setup)
    if FLAGS.method == "ptq":
        return recipes.ptq(setup, FLAGS.bits, FLAGS.ptq_scale, overrides=bits_per_layer)
    if FLAGS.method == "qat":
        return recipes.qat_ste(setup, FLAGS.bits, overrides=bits_per_layer)
    schedule = recipes.QGTSchedule(FLAGS.qgt_epochs, FLAGS.start_strength, FLAGS.end_strength,
                                   hard_strength=FLAGS.hard_strength)
    if FLAGS.budget_bytes is not None:
        return recipes.qgt_mixed(setup, FLAGS.budget_bytes, schedule)
    return recipes.qgt(setup, FLAGS.bits, schedule, overrides=bits_per_layer)


def write_outputs(out_dir, setup, result, before):
    """Everything the module docstring lists, for ``result`` trained from the float model ``before``."""
    result.model.save(out_dir / "model.keras")
    inspected = result.qgt_model if result.qgt_model is not None else result.model
    if result.qgt_model is not None:
        result.qgt_model.save(out_dir / "qgt_model.keras")
    np.save(out_dir / "calibration.npy", setup.data.calibration[0][:_SAVED_CALIBRATION_IMAGES])
    (out_dir / "history.json").write_text(json.dumps(
        {key: [float(v) for v in values] for key, values in result.history.items()}, indent=1))
    # The float model is inspected at the bits the quantized run used.
    bits_by_layer = result.layer_bits or {name: FLAGS.bits for name in recipes.kernel_sizes(before)}
    bottlenecks = report.summary(inspected, setup.data.calibration, bits=bits_by_layer, print_fn=print)
    (out_dir / "report.json").write_text(bottlenecks.to_json())
    (out_dir / "report.md").write_text(bottlenecks.to_markdown())
    plots.weight_histograms(before, inspected, bits_by_layer, out_dir / "weights_vs_grid.png",
                            title=f"{FLAGS.model} {result.method}: before (float) and after")
    summary = {"method": result.method, "bits": result.bits, "accuracy": result.accuracy,
               "weight_bytes": result.weight_bytes, "train_seconds": result.train_seconds,
               "layer_bits": result.layer_bits, "data": setup.data.description, "flags": flag_values()}
    (out_dir / "result.json").write_text(json.dumps(summary, indent=1))
    return summary


def flag_values():
    """The values of this tool's flags (not absl's own)."""
    return {flag.name: flag.value for flag in FLAGS.get_flags_for_module(__name__)}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    float_model = models.build_model(
        FLAGS.model, **({} if FLAGS.model == "small_cnn" else {"alpha": FLAGS.alpha}))
    try:
        bits_per_layer, edge_bits = check_flags(list(recipes.kernel_sizes(float_model)))
    except ValueError as error:
        raise app.UsageError(str(error))
    setup = recipes.build_setup(
        FLAGS.dataset, FLAGS.model, data_dir=FLAGS.data_dir, alpha=FLAGS.alpha, grayscale=FLAGS.grayscale,
        image_size=FLAGS.image_size, batch_size=FLAGS.batch, limit=FLAGS.limit, test_limit=FLAGS.test_limit,
        init_from=FLAGS.init_from, seed=FLAGS.seed, bn_momentum=FLAGS.bn_momentum, augment=FLAGS.augment,
        pretrain_epochs=FLAGS.float_epochs, finetune_epochs=FLAGS.epochs, learning_rate=FLAGS.float_learning_rate,
        finetune_learning_rate=FLAGS.learning_rate, lr_schedule=FLAGS.lr_schedule, edge_bits=edge_bits,
        verbose=FLAGS.verbose)
    print(f"data: {setup.data.description}")
    before, _, _ = setup.pretrained()
    result = train(setup, bits_per_layer)
    out_dir = pathlib.Path(FLAGS.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = write_outputs(out_dir, setup, result, before)
    print(f"{summary['method']} {summary['bits']}-bit: test accuracy {100 * summary['accuracy']:.2f}%, "
          f"{summary['weight_bytes']:,} kernel bytes; outputs in {out_dir}")


def run():
    app.run(main)


if __name__ == "__main__":
    run()

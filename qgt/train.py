"""qgt-train: train a (quantized) person detector or Fashion-MNIST model with one of the recipes of
qgt_keras.recipes (float, post-training quantization, plain STE QAT, QGT; QGT with --budget_bytes picks the
bits of every layer).

examples:
  qgt-train --method=qgt --bits=2 --epochs=3 --init_from=mlperf --out_dir=runs/qgt2
  qgt-train --dataset=person96_spatial --method=qgt --bits=2 --init_from=mlperf --distill_from=mlperf \\
      --unlabeled_dir=transfer --out_dir=runs/qgt2_distilled
  qgt-train --dataset=fashion_mnist --architecture=mobilenet_28 --alpha=1 --float_epochs=4 \\
      --method=qgt --budget_bytes=12000 --out_dir=runs/fmnist_mixed

--init_from=mlperf starts from the MLPerf Tiny VWW reference weights: $QGT_MLPERF_WEIGHTS or
~/.keras/qgt/mlperf_tiny_vww_96.h5 (download: qgt_keras.models.MLPERF_URL, see the README); --distill_from
trains against a frozen float teacher (a model file, or mlperf) instead of the labels alone, and
--unlabeled_dir adds a batch of unlabeled images of other scenes to each training batch, which teach through
the teacher's soft targets (a folder, or transfer: the bundled data/transfer), those the teacher calls person
drawn for --unlabeled_person_share of them.

Writes into --out_dir: model.keras (the evaluated model, kernels on their grid), qgt_model.keras (the model
with quantized layers in the hard-quantization phase, input of qgt-export), calibration.npy (training
images for qgt-export), history.json, result.json, report.{json,md} (the bottleneck report, on a slice of
the training data) and weights_vs_grid.png (per-layer weight histograms against the grid, before and after
training).
"""

import json
import os
import pathlib
import sys

from qgt import cli

# Training images saved for qgt-export's activation calibration.
_SAVED_CALIBRATION_IMAGES = 64
METHODS = ("float", "ptq", "qat", "qgt")


def build_parser():
    parser = cli.parser("qgt-train", __doc__)
    parser.add_argument("--dataset", default="person_folder",
                        help="Data set reader of qgt_keras.datasets.NAMES: person_folder, person96_spatial, "
                             "vww_tfrecords, vww_coco, fashion_mnist.")
    parser.add_argument("--data_dir", help="Data folder (default: the bundled person96; Fashion-MNIST: Debian's "
                        "dataset-fashion-mnist location). Layouts: qgt_keras.datasets.split_sources.")
    parser.add_argument("--architecture", default="mobilenet_v1",
                        help="Model builder of qgt_keras.models.MODELS: mobilenet_v1, mobilenet_28, small_cnn.")
    parser.add_argument("--alpha", type=float, default=0.25, help="Width multiplier (mobilenet_v1, mobilenet_28).")
    parser.add_argument("--grayscale", action="store_true", help="1-channel input (TFLM person_detect style).")
    parser.add_argument("--image_size", type=cli.positive_int, default=96,
                        help="Square input size for image folders and VWW (Fashion-MNIST is 28).")
    parser.add_argument("--no_augment", dest="augment", action="store_false",
                        help="Train without the MLPerf augmentation (rotation, shift, zoom, flip).")
    cli.add_bits(parser, 2, "Weight width of the quantized layers")
    cli.add_layer_bits(parser, "Per-layer widths, e.g. conv1=8,dense=8.")
    parser.add_argument("--edge_bits", default="8",
                        help="Bits of the first and last quantized layer, or 'none' to use --bits.")
    parser.add_argument("--method", choices=METHODS, default="qgt",
                        help="float | ptq (post-training) | qat (plain STE) | qgt; qgt with --budget_bytes picks the "
                             "bits per layer.")
    parser.add_argument("--ptq_scale", default="mse", help="Per-channel scale search of --method=ptq: max or mse.")
    parser.add_argument("--budget_bytes", type=cli.positive_int,
                        help="Packed kernel bytes for automatic mixed precision (--method=qgt only).")
    parser.add_argument("--float_epochs", type=int, default=0, help="Float pre-training epochs before the method's.")
    parser.add_argument("--epochs", type=cli.positive_int, default=3,
                        help="Epochs of the method (for ptq: of float training).")
    parser.add_argument("--qgt_epochs", type=int, default=0,
                        help="qgt: first epochs with a float forward pass and a ramped QGT strength; the rest run "
                             "on the grid (STE).")
    parser.add_argument("--start_strength", type=float,
                        help="qgt: QGT strength at the ramp start (default: QGTScheduler's).")
    parser.add_argument("--end_strength", type=float,
                        help="qgt: QGT strength at the ramp end (default: QGTScheduler's).")
    parser.add_argument("--hard_strength", type=float,
                        help="qgt: QGT strength while on the grid (default: recipes.QGTSchedule's).")
    parser.add_argument("--scale_interval", type=cli.positive_int, default=1,
                        help="qgt: training steps between re-estimations of the layers' grid scales (1: every "
                             "step; 16 takes about a quarter less CPU time per step, docs/RECIPE.md).")
    parser.add_argument("--batch", type=cli.positive_int, default=32, help="Batch size.")
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="Adam learning rate of the method's epochs.")
    parser.add_argument("--float_learning_rate", type=float, default=3e-3,
                        help="Adam learning rate of --float_epochs.")
    parser.add_argument("--lr_schedule", default="cosine", help="Learning-rate schedule of each phase: cosine or "
                        "constant.")
    parser.add_argument("--bn_momentum", type=float, default=0.9,
                        help="BatchNormalization momentum (low for runs of a few hundred steps).")
    parser.add_argument("--distill_from",
                        help="Train the method against this frozen float teacher (qgt_keras.distillation): a "
                             ".h5/.keras file, or 'mlperf'.")
    parser.add_argument("--distill_temperature", type=float, default=2.0,
                        help="Temperature of the teacher's soft targets (--distill_from).")
    parser.add_argument("--distill_weight", type=float, default=1.0,
                        help="Share of the soft targets in the loss, the rest the labels' (--distill_from; 1: the "
                             "teacher alone).")
    parser.add_argument("--unlabeled_dir",
                        help="With --distill_from: append a batch of these unlabeled images (a folder, searched "
                             "recursively, or 'transfer' for the bundled data/transfer) to each training batch.")
    parser.add_argument("--unlabeled_person_share", type=float, default=0.4,
                        help="With --unlabeled_dir: the images the teacher calls person are drawn for this share "
                             "of the unlabeled ones (0: as they come; photos of other scenes rarely show people).")
    parser.add_argument("--freeze_batchnorm", action="store_true",
                        help="Train the method with BatchNormalization frozen (inference mode: the start's statistics, "
                             "gamma and beta) and do not re-estimate it after snapping. With --distill_from and "
                             "--unlabeled_dir it keeps a float student's function out of scene; quantized "
                             "students gain nothing by it (docs/RECIPE.md).")
    parser.add_argument("--anchor_batchnorm", action="store_true",
                        help="With --distill_from: train the method with BatchNormalization normalizing by statistics "
                             "anchored to the teacher's (set on the training batches before training, after every "
                             "epoch and after snapping, instead of re-estimated on them; gamma and beta train). Out "
                             "of scene it helps 4-bit students, not all-2-bit ones (docs/RECIPE.md).")
    parser.add_argument("--init_from",
                        help="Start from these float weights: a .h5/.keras file, or 'mlperf' for the MLPerf Tiny "
                             "VWW reference (see above).")
    cli.add_out_dir(parser, "Output folder (created).", required=True)
    parser.add_argument("--seed", type=int, default=0, help="Random seed (weights, shuffling, augmentation, subsets).")
    parser.add_argument("--limit", type=cli.positive_int, help="Use only this many training images (quick runs).")
    parser.add_argument("--test_limit", type=cli.positive_int, help="Use only this many test images.")
    parser.add_argument("--verbose", type=int, default=1,
                        help="Keras fit verbosity: 0 silent, 1 progress bars, 2 one line per epoch.")
    return parser


def parse_edge_bits(value):
    """None for 'none', else the integer (checked by the policy)."""
    if value.lower() == "none":
        return None
    if not value.isdigit():
        raise ValueError(f"--edge_bits must be 1..8 or 'none', got {value!r}")
    return int(value)


def check_flags(args):
    """What can be checked before TensorFlow loads: flag combinations and the files the flags name. Creates
    --out_dir."""
    parse_edge_bits(args.edge_bits)
    if args.budget_bytes is not None and args.method != "qgt":
        raise ValueError(f"--budget_bytes chooses bits per layer for --method=qgt, not {args.method}")
    if args.budget_bytes is not None and args.layer_bits:
        raise ValueError("--budget_bytes chooses every layer's bits; do not also pass --layer_bits")
    if args.float_epochs < 0 or args.qgt_epochs < 0:
        raise ValueError("--float_epochs and --qgt_epochs must be >= 0")
    if args.method == "qgt" and args.qgt_epochs > args.epochs:
        raise ValueError(f"--qgt_epochs ({args.qgt_epochs}) exceeds --epochs ({args.epochs})")
    strengths = [value for value in (args.start_strength, args.end_strength) if value is not None]
    if any(value <= 0 for value in strengths) or (len(strengths) == 2 and strengths[0] > strengths[1]):
        raise ValueError("need 0 < --start_strength <= --end_strength")
    for flag in ("init_from", "distill_from"):
        value = getattr(args, flag)
        if value and value != "mlperf" and not os.path.isfile(value):
            raise FileNotFoundError(f"--{flag} file {value} does not exist")
    if not 0 <= args.distill_weight <= 1 or not args.distill_temperature > 0:
        raise ValueError("need 0 <= --distill_weight <= 1 and --distill_temperature > 0")
    if args.unlabeled_dir and not args.distill_from:
        raise ValueError("--unlabeled_dir teaches through the teacher's soft targets: also pass --distill_from")
    if args.anchor_batchnorm and (not args.distill_from or args.freeze_batchnorm):
        raise ValueError("--anchor_batchnorm anchors BatchNormalization to the teacher: it needs --distill_from and "
                         "excludes --freeze_batchnorm")
    if not 0 <= args.unlabeled_person_share < 1:
        raise ValueError(f"--unlabeled_person_share must be in [0, 1), got {args.unlabeled_person_share}")
    if args.unlabeled_person_share and args.unlabeled_dir and args.dataset == "fashion_mnist":
        raise ValueError("--unlabeled_person_share picks the teacher's person images: pass 0 for fashion_mnist")
    if args.unlabeled_dir and args.unlabeled_dir != "transfer" and not os.path.isdir(args.unlabeled_dir):
        raise FileNotFoundError(f"--unlabeled_dir {args.unlabeled_dir} is not a folder")
    if args.data_dir and not os.path.exists(args.data_dir):
        raise FileNotFoundError(f"--data_dir {args.data_dir} does not exist")
    cli.check_out_file_folder(args.out_dir)


def _schedule(args, recipes):
    given = {name: getattr(args, name) for name in ("start_strength", "end_strength", "hard_strength")
             if getattr(args, name) is not None}
    return recipes.QGTSchedule(args.qgt_epochs, scale_interval=args.scale_interval, **given)


def train(setup, args, recipes):
    """Runs the method the flags select; returns its RecipeResult."""
    if args.method == "float":
        return recipes.float_training(setup)
    if args.method == "ptq":
        return recipes.ptq(setup, args.bits, args.ptq_scale, overrides=args.layer_bits)
    if args.method == "qat":
        return recipes.qat_ste(setup, args.bits, overrides=args.layer_bits)
    if args.budget_bytes is not None:
        return recipes.qgt_mixed(setup, args.budget_bytes, _schedule(args, recipes))
    return recipes.qgt(setup, args.bits, _schedule(args, recipes), overrides=args.layer_bits)


def write_outputs(out_dir, setup, result, before, args):
    """Everything the module docstring lists, for ``result`` trained from the float model ``before``."""
    import numpy as np
    from qgt_keras import layer_kinds, plots, report

    result.model.save(out_dir / "model.keras")
    inspected = result.qgt_model if result.qgt_model is not None else result.model
    if result.qgt_model is not None:
        result.qgt_model.save(out_dir / "qgt_model.keras")
    np.save(out_dir / "calibration.npy", setup.data.calibration[0][:_SAVED_CALIBRATION_IMAGES])
    (out_dir / "history.json").write_text(json.dumps(
        {key: [float(v) for v in values] for key, values in result.history.items()}, indent=1))
    # The float model is inspected at the bits the quantized run used.
    bits_by_layer = result.layer_bits or dict.fromkeys(layer_kinds.kernel_sizes(before), args.bits)
    bottlenecks = report.summary(inspected, setup.data.calibration, bits=bits_by_layer, print_fn=print)
    (out_dir / "report.json").write_text(bottlenecks.to_json())
    (out_dir / "report.md").write_text(bottlenecks.to_markdown())
    plots.weight_histograms(before, inspected, bits_by_layer, out_dir / "weights_vs_grid.png",
                            title=f"{args.architecture} {result.method}: before (float) and after")
    summary = {"method": result.method, "bits": result.bits, "accuracy": result.accuracy,
               "weight_bytes": result.weight_bytes, "train_seconds": result.train_seconds,
               "layer_bits": result.layer_bits, "data": setup.data.description, "flags": vars(args)}
    (out_dir / "result.json").write_text(json.dumps(summary, indent=1))
    return summary


def _run(args):
    check_flags(args)
    cli.quiet_tensorflow()
    # After the checks: TensorFlow is slow to import.
    from qgt_keras import datasets, layer_kinds, models, quantizers, recipes, report

    quantizers.check_bits(args.bits, "--bits")
    if parse_edge_bits(args.edge_bits) is not None:
        quantizers.check_bits(parse_edge_bits(args.edge_bits), "--edge_bits")
    for name, bits in args.layer_bits.items():
        quantizers.check_bits(bits, f"--layer_bits width of {name!r}")
    if args.ptq_scale not in quantizers.SCALE_METHODS:
        raise ValueError(f"--ptq_scale must be one of {quantizers.SCALE_METHODS}, got {args.ptq_scale!r}")
    if args.architecture not in models.MODELS:
        raise ValueError(f"--architecture must be one of {', '.join(models.MODELS)}, got {args.architecture!r}")
    init_from = models.weights_file(args.init_from) if args.init_from else None
    distillation = (recipes.Distillation(models.weights_file(args.distill_from), args.distill_temperature,
                                         args.distill_weight) if args.distill_from else None)
    unlabeled_dir = datasets.bundled_transfer_dir() if args.unlabeled_dir == "transfer" else args.unlabeled_dir
    oversample = ((datasets.VWW_CLASS_NAMES.index("person"), args.unlabeled_person_share)
                  if unlabeled_dir and args.unlabeled_person_share else None)
    setup = recipes.build_setup(
        args.dataset, args.architecture, data_dir=args.data_dir, unlabeled_dir=unlabeled_dir,
        unlabeled_oversample=oversample, alpha=args.alpha, grayscale=args.grayscale, image_size=args.image_size,
        batch_size=args.batch, limit=args.limit, test_limit=args.test_limit,
        init_from=init_from, seed=args.seed, bn_momentum=args.bn_momentum, augment=args.augment,
        pretrain_epochs=args.float_epochs, finetune_epochs=args.epochs, learning_rate=args.float_learning_rate,
        finetune_learning_rate=args.learning_rate, lr_schedule=args.lr_schedule, edge_bits=parse_edge_bits(
            args.edge_bits), distillation=distillation, freeze_batchnorm=args.freeze_batchnorm,
        anchor_batchnorm=args.anchor_batchnorm, verbose=args.verbose)
    sizes = layer_kinds.kernel_sizes(setup.build_model())
    unknown = sorted(set(args.layer_bits) - set(sizes))
    if unknown:
        raise ValueError(f"--layer_bits names {unknown}, not quantizable layers of {args.architecture}: "
                         f"{', '.join(sizes)}")
    if args.budget_bytes is not None:
        report.check_budget(sizes, args.budget_bytes)
    print(f"data: {setup.data.description}")
    before, _, _ = setup.pretrained()
    result = train(setup, args, recipes)
    summary = write_outputs(pathlib.Path(args.out_dir), setup, result, before, args)
    print(f"{summary['method']} {summary['bits']}-bit: test accuracy {100 * summary['accuracy']:.2f}%, "
          f"{summary['weight_bytes']:,} kernel bytes; outputs in {args.out_dir}")


def main(argv=None):
    """The command line (the console script's entry point): its exit code."""
    return cli.main(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())

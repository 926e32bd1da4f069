"""qgt-export: a tf_keras model (.keras / .h5, plain or QGT) or an int8 .tflite in; int8, LUT-compressed and
bit-packed .tflite files, their C sources and a size report out, each variant verified in the TFLite-Micro
runtime. The output folder is replaced whole, and only when every check passed (tflm_export.export).

examples:
  qgt-export --model=runs/qgt2/qgt_model.keras --calibration=runs/qgt2/calibration.npy --out_dir=runs/export
  qgt-export --model=trained.keras --calibration=data/person96/train --bits=2 --layer_bits=conv1=8 \\
      --out_dir=runs/export
  qgt-export --model=person_detect.tflite --bits=2 --layer_bits=0=8 --out_dir=runs/export
"""

import os
import sys

from qgt import cli
from tflm_export import layout


def build_parser():
    parser = cli.parser("qgt-export", __doc__)
    parser.add_argument("--model", required=True, help="Model file to export: .keras, .h5 or int8 .tflite.")
    cli.add_out_dir(parser, "Output folder: created, or replaced whole if it holds a previous export.",
                    required=True)
    cli.add_bits(parser, 8, "Weight width of the layers the model does not set itself (a QGT model's layers "
                            "keep their own bits) and --layer_bits does not list")
    cli.add_layer_bits(parser, "Per-layer widths: Keras layer names; for a .tflite, weight tensor names or op "
                               "indices.")
    parser.add_argument("--calibration", help="Calibration and verification inputs (required for Keras "
                        "models): float samples in a .npy (first axis = samples, preprocessed as the model "
                        "expects) or an image folder with one subfolder per class (read as qgt_keras.datasets "
                        "does: [0, 1], resized, grayscale for 1-channel models). Use training data, not the "
                        "test split.")
    parser.add_argument("--calibration_count", type=cli.positive_int, default=200,
                        help="Use at most this many calibration samples.")
    parser.add_argument("--verify_count", type=cli.positive_int, default=16,
                        help="Inputs run through TFLite and TFLite-Micro for the bit-exactness checks.")
    parser.add_argument("--scale", choices=("mse", "max"), default="mse", help="Scale search when snapping weights.")
    parser.add_argument("--name", help="Model name for files and C identifiers (default: the model file name).")
    parser.add_argument("--resnap", action="store_true",
                        help="Snap the layers of a QGT model that are off their grid instead of refusing the model "
                             "(a warning says how far off they were).")
    return parser


def _check(args):
    """What can be checked before TensorFlow loads."""
    if not os.path.exists(args.model):
        raise FileNotFoundError(f"--model {args.model} does not exist")
    if args.calibration is not None and not os.path.exists(args.calibration):
        raise FileNotFoundError(f"--calibration {args.calibration} does not exist")
    layout.check_out_dir(args.out_dir)


def _run(args):
    _check(args)
    cli.quiet_tensorflow()
    from tflm_export import export  # after the checks: TensorFlow takes seconds to load

    report = export.export(args.model, args.out_dir, args.layer_bits, args.bits, args.calibration, args.name,
                           args.verify_count, args.scale, args.calibration_count, args.resnap)
    print(export.markdown_report(report))


def main(argv=None):
    """The command line (the console script's entry point): its exit code."""
    return cli.main(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())

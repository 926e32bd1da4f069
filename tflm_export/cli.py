"""qgt-export: a tf_keras (.keras / .h5, plain or QGT) or int8 .tflite model in; .tflite variants, C sources
and a size report out (see tflm_export.export).

    qgt-export --model=trained.keras --calibration=samples.npy --default_bits=2 --bits=conv1=8 --out=export/
    qgt-export --model=trained.keras --calibration=data/person96/test --out=export/
    qgt-export --model=person_detect.tflite --default_bits=2 --bits=0=8 --out=export/
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402
import numpy as np  # noqa: E402

FLAGS = flags.FLAGS


def _define_flags():
    """Defines the flags when the command runs, not at import: tests and other CLIs (qgt-train also has a
    --model flag) import this module in the same process."""
    flags.DEFINE_string("model", None, "Keras model (.keras, .h5) or int8 .tflite to export.")
    flags.DEFINE_string("out", None, "Output folder.")
    flags.DEFINE_list("bits", [], "Per-layer bits, NAME=BITS: Keras layer names; for a .tflite, weight "
                      "tensor names or op indices.")
    flags.DEFINE_integer("default_bits", 8, "Bits of layers not listed in --bits (1..8).")
    flags.DEFINE_string("calibration", None, "Keras models: calibration and verification inputs, either "
                        "float samples (.npy, first axis = samples, preprocessed as the model expects) or an "
                        "image folder with one subfolder per class (read as qgt_keras.datasets does: [0, 1], "
                        "resized, grayscale for 1-channel models).")
    flags.DEFINE_integer("calibration_count", 200, "Use at most this many calibration samples.")
    flags.DEFINE_integer("verify_count", 16,
                         "Inputs run through TFLite and TFLite-Micro for the bit-exactness check.")
    flags.DEFINE_enum("scale", "mse", ["mse", "max"], "Scale search when snapping weights.")
    flags.DEFINE_string("name", None,
                        "Model name for files and C identifiers (default: the model file name).")
    flags.mark_flags_as_required(["model", "out"])


def parse_bits(entries):
    """{"conv1": 8, 3: 2} from ["conv1=8", "3=2"] (integer keys are .tflite op indices)."""
    bits = {}
    for entry in entries:
        key, sep, value = entry.rpartition("=")
        if not sep or not key or not value.strip().isdigit():
            raise app.UsageError(f"--bits entry {entry!r} is not NAME=BITS")
        bits[int(key) if key.isdigit() else key] = int(value)
    return bits


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # TensorFlow's converter logs every step at INFO
    from tflm_export import export  # deferred: flag errors are reported before TensorFlow loads
    try:
        calibration = FLAGS.calibration
        if calibration and calibration.endswith(".npy"):
            calibration = np.load(calibration)[:FLAGS.calibration_count].astype(np.float32)
        report = export.export(FLAGS.model, FLAGS.out, parse_bits(FLAGS.bits), FLAGS.default_bits, calibration,
                               FLAGS.name, FLAGS.verify_count, FLAGS.scale, FLAGS.calibration_count)
    except (ValueError, OSError) as error:  # ExportError is a ValueError, as are bad bit widths
        print(f"qgt-export: {error}", file=sys.stderr)
        return 1
    print(export.markdown_report(report))
    return 0


def run():
    """Console-script entry point (qgt-export)."""
    _define_flags()
    app.run(main)


if __name__ == "__main__":
    run()

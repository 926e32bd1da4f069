"""What the three commands (qgt-train, qgt-export, qgt-quickstart) share: one vocabulary of flags and the
plumbing around them.

    --bits          the default weight width, 1..8
    --layer_bits    per-layer widths, NAME=BITS,... (parse_layer_bits)
    --model         a model file (qgt-export's input)
    --architecture  a model builder of qgt_keras.models (qgt-train, qgt-quickstart)
    --out_dir       the output folder

Flags are parsed before TensorFlow is imported (this module imports none of it), so ``--help`` answers at
once and a bad flag fails before the seconds TensorFlow takes to load.
"""

import argparse
import os
import sys


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and each flag's default (where it has one) after its help."""

    def _get_help_string(self, action):
        if action.default in (None, False, {}, argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help
        return f"{action.help} (default: %(default)s)"


def parser(prog, description):
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=_HelpFormatter)


def parse_layer_bits(text):
    """{"conv1": 8, 3: 2} from "conv1=8,3=2" (keys that are integers are .tflite op indices). The widths are
    checked by the library, which knows which layers exist."""
    bits = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = entry.rpartition("=")
        if not sep or not key or not value.strip().lstrip("-").isdigit():
            raise argparse.ArgumentTypeError(f"--layer_bits entry {entry!r} is not NAME=BITS")
        bits[int(key) if key.isdigit() else key] = int(value)
    return bits


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_bits(parser, default, help):
    parser.add_argument("--bits", type=int, default=default, help=help + " (1..8)")


def add_layer_bits(parser, help):
    parser.add_argument("--layer_bits", type=parse_layer_bits, default={}, metavar="NAME=BITS,...", help=help)


def add_out_dir(parser, help, **options):
    parser.add_argument("--out_dir", help=help, **options)


def check_out_file_folder(path):
    """Creates the output folder ``path`` (for commands that write files into it) or raises ValueError saying
    why it cannot be one, before any work is done."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ValueError(f"--out_dir {path} exists and is not a folder")
    os.makedirs(path, exist_ok=True)
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"--out_dir {path} is not writable")


def quiet_tensorflow():
    """Keeps TensorFlow's C++ start-up lines and the converter's INFO logs out of the output; call it
    before importing TensorFlow."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from absl import logging
    logging.set_verbosity(logging.WARNING)


def main(parser, work, argv=None):
    """Parses ``argv`` (default: the command line) with ``parser`` and runs ``work(args)``; returns the exit
    code. A bad flag is argparse's usage error (exit 2); an error a user can fix (ValueError, OSError: bad
    input, missing files, and the library's own errors, which subclass them) is one line and exit 1."""
    args = parser.parse_args(argv)
    try:
        work(args)
    except (ValueError, OSError) as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return 1
    return 0

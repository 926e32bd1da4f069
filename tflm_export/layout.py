"""The export's output folder: the names of what it holds, and which existing folder an export may replace.

    <name>_float.tflite        Keras input only: the float baseline
    <name>_int8.tflite         full-integer, weights on their b-bit grids, weight scales and biases rounded
                               to the packed format's grids (pack.round_parameters)
    <name>_lut.tflite          TFLM LUT compression (TFLM_DECODE), runs on stock TFLite-Micro; left out,
                               with a note in the report, when it would not be smaller than the int8 model
    <name>_packed.tflite       bit-packed QGT custom ops (docs/FORMAT.md)
    c/<variant>/model_data.h, model_data.cc   for int8, lut and packed
    c/packed/qgt_model.h, qgt_model.c         the packed model as plain C over the QGT kernel library
                                               (tflm_export.codegen); left out, with a note in the report,
                                               for a model with ops the kernel library does not run
    size_report.json, size_report.md

Free of TensorFlow imports, so a command line can check its output folder before loading TensorFlow.
"""

import os

REPORT_JSON = "size_report.json"
REPORT_MARKDOWN = "size_report.md"


def model_file(name, variant):
    return f"{name}_{variant}.tflite"


def c_folder(variant):
    return os.path.join("c", variant)


def check_out_dir(path):
    """Raises ValueError unless ``path`` may become an export folder: absent, an empty folder, or a previous
    export (it holds a size report). Any other folder holds someone's files, which an export would delete."""
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path):
        raise ValueError(f"output folder {path} exists and is not a folder")
    if os.listdir(path) and not os.path.isfile(os.path.join(path, REPORT_JSON)):
        raise ValueError(f"output folder {path} holds files and no {REPORT_JSON}, so it is not a previous "
                         "export, which an export replaces as a whole: choose a new or empty folder")

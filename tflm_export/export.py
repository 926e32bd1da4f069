"""The whole export: a model in, the int8 / LUT / packed .tflite files, C sources and a size report out.

Output folder layout (every file written atomically; when verification fails only the size report is
written and ExportError raised):

    <name>_float.tflite        Keras input only: the float baseline
    <name>_int8.tflite         full-integer, weights on their b-bit grids, weight scales and biases rounded
                               to the packed format's grids (pack.round_parameters)
    <name>_lut.tflite          TFLM LUT compression (TFLM_DECODE), runs on stock TFLite-Micro
    <name>_packed.tflite       bit-packed QGT custom ops (docs/FORMAT.md)
    c/<variant>/model_data.h, model_data.cc   for int8, lut and packed
    size_report.json, size_report.md
"""

import json
import os

import numpy as np

from tflm_export import c_source, convert, lut, pack, tflite_model, verify
from tflm_export.files import write_atomic

C_VARIANTS = ("int8", "lut", "packed")


def calibration_images(folder, input_shape, count=200):
    """Up to ``count`` images of an image folder (one subfolder per class, as qgt_keras.datasets reads it)
    sized and colored for a model input of ``input_shape`` (height, width, channels), in [0, 1]."""
    from qgt_keras import datasets  # deferred: only this path needs the data pipeline
    height, width, channels = input_shape
    dataset, _ = datasets.read_image_folder(folder, image_size=(height, width), grayscale=channels == 1,
                                            batch_size=count, limit=count, validate=False)
    images, _ = next(iter(dataset))
    return images.numpy().astype(np.float32)


def _load(model_path, calibration, bits, default_bits, method, calibration_count):
    """(float bytes or None, int8 bytes, {weight tensor: bits}, calibration array or None) for a .tflite or
    a Keras model file; ``calibration`` is an array of samples or an image folder path."""
    with open(model_path, "rb") as f:
        head = f.read(8)
    if head[4:8] == tflite_model.FILE_IDENTIFIER or model_path.endswith(".tflite"):
        with open(model_path, "rb") as f:
            source = f.read()
        layer_bits = convert.resolve_tflite_bits(tflite_model.read(source), bits, default_bits)
        return None, convert.snap_tflite(source, bits, default_bits, method), layer_bits, None
    import tf_keras as keras  # deferred: a .tflite export needs no Keras
    if calibration is None:
        raise tflite_model.ExportError("a Keras model needs calibration samples (real data: TFLite-Micro "
                                       "aborts on activation ranges calibrated on nothing)")
    keras_model = keras.models.load_model(model_path, compile=False)
    if isinstance(calibration, (str, os.PathLike)):
        calibration = calibration_images(calibration, tuple(keras_model.input_shape[1:]), calibration_count)
    plain, bits = convert.plain_keras_model(keras_model, bits)
    conversion = convert.convert_keras(plain, calibration, bits, default_bits, method)
    return convert.to_float_tflite(plain), conversion.tflite, conversion.bits, np.asarray(calibration)


def nominal_bits(int8_tflite, layer_bits):
    """The bit width that most weights of the model have (``layer_bits``: weight tensor name -> bits)."""
    model = tflite_model.read(int8_tflite)
    counts = {}
    for op in convert.weight_ops(model):
        bits = layer_bits[tflite_model.tensor_name(model, op.weights)]
        size = int(np.prod(model.subgraphs[0].tensors[op.weights].shape))
        counts[bits] = counts.get(bits, 0) + size
    return max(sorted(counts), key=counts.get)


def _row(name, variant, bits, model_bytes, arena):
    return {"model": name, "variant": variant, "bits": bits, **verify.size_breakdown(model_bytes),
            "arena_bytes": arena}


def size_table(rows, lead, arena_header="arena B"):
    """Markdown table lines of size rows: the ``lead`` columns ((header, row key) pairs), then file, weight,
    parameter and graph bytes and the arena."""
    headers = [header for header, _ in lead] + ["file B", "weights B", "params B", "graph B", arena_header]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        arena = "n/a" if row["arena_bytes"] is None else f"{row['arena_bytes']:,}"
        sizes = [f"{row[key]:,}" for key in ("file_bytes", "weight_bytes", "param_bytes", "graph_bytes")]
        lines.append("| " + " | ".join([str(row[key]) for _, key in lead] + sizes + [arena]) + " |")
    return lines


def markdown_report(report):
    """The size report as a markdown table plus the verification lines."""
    lines = [f"# Size report: {report['model']}", ""]
    lines += size_table(report["rows"], [("variant", "variant"), ("bits (most weights)", "bits")])
    lines += ["", "Verification (model outputs, int8):", ""]
    for variant, result in report["verification"].items():
        against = {"tflite": "tf.lite reference kernels",
                   "tflm": "the int8 model in TFLite-Micro"}[result["reference"]]
        lines.append(f"- {variant} in TFLite-Micro vs {against}: "
                     f"{'bit-exact' if result['bit_exact'] else 'differs'} on {result['inputs']} inputs "
                     f"({result['mismatched_outputs']} differ, max |diff| {result['max_abs_diff']})")
    if not report["verification"]["int8"]["bit_exact"] and report["int8_agrees_with_tflite"]:
        lines.append("  (one step: tf.lite's per-channel FULLY_CONNECTED rounds once, TFLite-Micro twice)")
    layers = report["packed_layers"]
    lines += [f"- packed: decoder round trip {'exact' if report['packed_round_trip'] else 'NOT exact'}; "
              f"{layers['layers']} decoded layers vs TFLite-Micro's int8 layers on {layers['inputs']} inputs: "
              f"{'bit-exact' if layers['bit_exact'] else 'differ: ' + ', '.join(layers['mismatched_layers'])}"]
    lines += ["", "Weight bits per layer (weight tensor: bits):", ""]
    lines += [f"- `{tensor}`: {bits}" for tensor, bits in report["layer_bits"].items()]
    return "\n".join(lines + [""])


def export(model_path, out_dir, bits=None, default_bits=8, calibration=None, name=None, verify_count=16,
           method="mse", calibration_count=200):
    """Runs the whole export (see the module docstring); returns the report dict.

    ``calibration`` (Keras models only): an array of input samples or an image folder (see
    :func:`calibration_images`, which reads ``calibration_count`` images); its first ``verify_count``
    samples are also the verification inputs (random int8 inputs for a .tflite).
    """
    name = c_source.identifier(name or os.path.splitext(os.path.basename(model_path))[0])
    float_bytes, int8, layer_bits, calibration = _load(model_path, calibration, bits, default_bits, method,
                                                       calibration_count)
    int8 = pack.round_parameters(int8)  # so that int8, LUT and packed compute the same thing
    lut_bytes = lut.compress_model(int8)
    packed = pack.pack_model(int8)
    round_trip = all(a.equals(b) for a, b in zip(pack.expected_layers(int8), pack.unpack_model(packed)))

    inputs = (verify.quantize_inputs(int8, calibration[:verify_count]) if calibration is not None
              else verify.random_inputs(int8, verify_count))
    checks = {"int8": verify.compare(int8, inputs),
              "lut": verify.compare(lut_bytes, inputs, reference_bytes=int8, reference_runtime="tflm")}
    packed_check = verify.check_packed_layers(int8, packed, inputs)
    variants = {"int8": int8, "lut": lut_bytes, "packed": packed}
    arenas = {"int8": checks["int8"]["arena_bytes"], "lut": checks["lut"]["arena_bytes"], "packed": None}

    bits = nominal_bits(int8, layer_bits)
    rows = [_row(name, "float", 32, float_bytes, None)] if float_bytes is not None else []
    rows += [_row(name, variant, bits, data, arenas[variant]) for variant, data in variants.items()]
    report = {"model": name, "source": os.path.basename(model_path), "default_bits": default_bits,
              "layer_bits": layer_bits, "rows": rows, "verification": checks, "packed_round_trip": round_trip,
              "packed_layers": packed_check,
              "int8_agrees_with_tflite": verify.agrees_with_tflite(checks["int8"], int8)}

    write_atomic(os.path.join(out_dir, "size_report.json"), json.dumps(report, indent=2, sort_keys=True) + "\n")
    write_atomic(os.path.join(out_dir, "size_report.md"), markdown_report(report))
    if not (round_trip and packed_check["bit_exact"] and checks["lut"]["bit_exact"]
            and report["int8_agrees_with_tflite"]):
        # Only the report: models and C sources that failed verification must not reach firmware.
        raise tflite_model.ExportError(f"verification failed, see {os.path.join(out_dir, 'size_report.md')}")
    if float_bytes is not None:
        write_atomic(os.path.join(out_dir, f"{name}_float.tflite"), float_bytes)
    for variant, data in variants.items():
        write_atomic(os.path.join(out_dir, f"{name}_{variant}.tflite"), data)
        if arenas[variant] is not None:
            arena, origin = arenas[variant], "measured on a 64-bit host"
        else:  # QGT kernels keep 5 B per channel in the arena where TFLM int8 ones keep 8: the int8 arena bounds it
            arena, origin = arenas["int8"], "of the int8 variant, an upper bound here, measured on a 64-bit host"
        c_source.write(os.path.join(out_dir, "c", variant), data, f"{name}_{variant}", arena,
                       f"{name}_{variant}.tflite", origin)
    return report

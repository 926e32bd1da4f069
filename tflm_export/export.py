"""The whole export: a model in, the int8 / LUT / packed .tflite files, C sources (``model_data`` for
TFLite-Micro, and the packed model as interpreter-free C, :mod:`tflm_export.codegen`) and a size report out
(the folder's layout: :mod:`tflm_export.layout`).

The folder is written whole or not at all: every file goes into a staging folder beside it, which takes
its place only after every variant passed verification (``files.write_folder``). Bad input, a failed
verification or SIGTERM leave the previous output as it was (or none); the arguments and the output folder
are checked before any work.
"""

import dataclasses
import json
import os

import numpy as np

from qgt_keras import serialization
from tflm_export import (c_model, c_source, codegen, keras_convert, layout, lut, pack, snap, termination,
                         tflite_model, verify)
from tflm_export.files import write_folder
from tflm_export.tflite_model import ExportError


@dataclasses.dataclass
class _Source:
    """A model read and converted: its float baseline (Keras input only), the int8 model, the bits of each
    weight tensor, and the calibration samples with what the report says about them (None without)."""
    float_tflite: bytes
    int8: bytes
    layer_bits: dict
    samples: np.ndarray
    calibration: dict


def calibration_images(folder, input_shape, count=200):
    """(images, unreadable files skipped): up to ``count`` images of an image folder (one subfolder per
    class, as qgt_keras.datasets reads it) sized and colored for a model input of ``input_shape`` (height,
    width, channels), in [0, 1]. Unreadable images are left out and counted; none readable is an error."""
    from qgt_keras import datasets  # deferred: only this path needs the data pipeline
    height, width, channels = input_shape
    dataset, info = datasets.read_image_folder(folder, image_size=(height, width), grayscale=channels == 1,
                                               batch_size=count, limit=count)
    images, _ = next(iter(dataset))
    return images.numpy().astype(np.float32), len(info.skipped)


def calibration_samples(calibration, input_shape, count):
    """(float32 samples, report entry) from an array, a .npy file or an image folder, checked against the
    model input shape ``input_shape`` (without the batch axis; None for a free dimension)."""
    input_shape = tuple(input_shape)
    source = "array"
    if isinstance(calibration, (str, os.PathLike)):
        source = os.fspath(calibration)
        if os.path.isdir(source):
            if len(input_shape) != 3 or None in input_shape:
                raise ExportError(f"calibration folder {source}: images need a model input of fixed (height, "
                                  f"width, channels), this one is {input_shape}; pass a .npy of samples")
            images, skipped = calibration_images(source, input_shape, count)
            return images, {"source": source, "samples": len(images), "unreadable_skipped": skipped}
        if not os.path.isfile(source):
            raise FileNotFoundError(f"calibration {source} is neither an image folder nor a .npy file")
        try:
            calibration = np.load(source, allow_pickle=False)
        except (ValueError, OSError) as error:
            raise ExportError(f"calibration file {source} is not a .npy array: {error}") from error
    samples = np.asarray(calibration)
    if samples.dtype.kind not in "biuf":
        raise ExportError(f"calibration samples ({source}) are of type {samples.dtype}, expected numbers")
    wanted = "(N, " + ", ".join("?" if d is None else str(d) for d in input_shape) + ")"
    if samples.ndim != len(input_shape) + 1 or any(
            d is not None and d != s for d, s in zip(input_shape, samples.shape[1:])):
        raise ExportError(f"calibration samples ({source}) have shape {samples.shape}; the model input takes "
                          f"{wanted}")
    samples = samples[:count].astype(np.float32)
    if len(samples) == 0:
        raise ExportError(f"calibration samples ({source}) hold no sample")
    bad = int(np.count_nonzero(~np.isfinite(samples)))
    if bad:
        raise ExportError(f"calibration samples ({source}) hold {bad} non-finite values (NaN or inf)")
    return samples, {"source": source, "samples": len(samples)}


def _load(model_path, calibration, bits, default_bits, method, calibration_count, resnap):
    """The :class:`_Source` of a .tflite or a Keras model file."""
    if not os.path.exists(model_path):
        raise FileNotFoundError(f"model file {model_path} does not exist")
    head = b""
    if os.path.isfile(model_path):
        with open(model_path, "rb") as f:
            head = f.read(8)
    if head[4:8] == tflite_model.FILE_IDENTIFIER or model_path.endswith(".tflite"):
        with open(model_path, "rb") as f:
            source = f.read()
        model = tflite_model.read(source)
        layer_bits = snap.resolve_tflite_bits(model, bits, default_bits)
        int8 = snap.snap_tflite(source, bits, default_bits, method)
        samples, info = None, None
        if calibration is not None:  # verification inputs instead of random ones
            input_shape = tflite_model.io_details(model)["inputs"][0]["shape"][1:]
            samples, info = calibration_samples(calibration, input_shape, calibration_count)
        return _Source(None, int8, layer_bits, samples, info)
    if calibration is None:
        raise ExportError("a Keras model needs calibration samples (real data: TFLite-Micro aborts on activation "
                          "ranges calibrated on nothing)")
    keras_model = serialization.load_model(model_path)
    samples, info = calibration_samples(calibration, keras_model.input_shape[1:], calibration_count)
    plain, bits = keras_convert.plain_keras_model(keras_model, bits, resnap)
    conversion = keras_convert.convert_keras(plain, samples, bits, default_bits, method)
    return _Source(keras_convert.to_float_tflite(plain), conversion.tflite, conversion.bits, samples, info)


def nominal_bits(int8_tflite, layer_bits):
    """The bit width that most weights of the model have (``layer_bits``: weight tensor name -> bits)."""
    model = tflite_model.read(int8_tflite)
    counts = {}
    for op in tflite_model.weight_ops(model):
        bits = layer_bits[tflite_model.tensor_name(model, op.weights)]
        size = int(np.prod(model.subgraphs[0].tensors[op.weights].shape))
        counts[bits] = counts.get(bits, 0) + size
    return max(sorted(counts), key=counts.get)


def _lut_variant(int8):
    """(LUT bytes or None, a note for the report or None)."""
    try:
        compressed = lut.compress_model(int8)
    except ExportError as error:
        return None, f"lut: not written ({error})"
    if len(compressed) >= len(int8):
        return compressed, (f"lut: {len(compressed):,} B, not smaller than the int8 model's {len(int8):,} B: "
                            "the LUT tables and decode ops cost more than few-valued weights save here")
    return compressed, None


def pixel_table(int8_tflite):
    """The quantized model input of each 8-bit pixel value as the training pipeline preprocesses it
    (qgt_keras.datasets), or None when the input is not an NHWC image of 1 or 3 channels."""
    shape = tflite_model.io_details(tflite_model.read(int8_tflite))["inputs"][0]["shape"]
    if len(shape) != 4 or shape[-1] not in (1, 3):
        return None
    from qgt_keras import datasets  # deferred, as in calibration_images
    return verify.quantize_inputs(int8_tflite, datasets.pixel_levels(grayscale=shape[-1] == 1))


def _generated_model(packed, int8, name):
    """(codegen.GeneratedModel, None), or (None, why not) for a model the generated C cannot run."""
    try:
        return codegen.generate(packed, f"{name}_model", pixel_table(int8), layout.model_file(name, "packed")), None
    except ExportError as error:
        return None, f"not written: {error}"


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


def _verification_lines(report):
    lines = []
    for variant, result in report["verification"].items():
        against = {"tflite": "tf.lite reference kernels",
                   "tflm": "the int8 model in TFLite-Micro"}[result["reference"]]
        lines.append(f"- {variant} in TFLite-Micro vs {against}: "
                     f"{'bit-exact' if result['bit_exact'] else 'differs'} on {result['inputs']} inputs "
                     f"({result['mismatched_outputs']} differ, max |diff| {result['max_abs_diff']})")
    if not report["verification"]["int8"]["bit_exact"] and report["int8_agrees_with_tflite"]:
        lines.append("  (one step: tf.lite's per-channel FULLY_CONNECTED rounds once, TFLite-Micro twice)")
    layers = report["packed_layers"]
    lines.append(f"- packed: decoder round trip {'exact' if report['packed_round_trip'] else 'NOT exact'}; "
                 f"{layers['layers']} decoded layers vs TFLite-Micro's int8 layers on {layers['inputs']} inputs: "
                 f"{'bit-exact' if layers['bit_exact'] else 'differ: ' + ', '.join(layers['mismatched_layers'])}")
    return lines


def markdown_report(report):
    """The size report as a markdown table plus the calibration, verification and notes lines."""
    lines = [f"# Size report: {report['model']}", ""]
    lines += size_table(report["rows"], [("variant", "variant"), ("bits (most weights)", "bits")])
    calibration = report["calibration"]
    if calibration is not None:
        skipped = calibration.get("unreadable_skipped")
        lines += ["", f"Calibration: {calibration['samples']} samples from {calibration['source']}"
                  + (f" ({skipped} unreadable images skipped)" if skipped else "") + "."]
    lines += ["", "Verification (model outputs, int8):", ""] + _verification_lines(report)
    lines += ["", "Generated C model (interpreter-free, the QGT kernel library):", ""]
    lines += c_model.markdown_lines(report["c_model"])
    if report["notes"]:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in report["notes"]]
    lines += ["", "Weight bits per layer (weight tensor: bits):", ""]
    lines += [f"- `{tensor}`: {bits}" for tensor, bits in report["layer_bits"].items()]
    return "\n".join(lines + [""])


def _passed(report):
    checks = report["verification"]
    return (report["packed_round_trip"] and report["packed_layers"]["bit_exact"] and report["int8_agrees_with_tflite"]
            and ("lut" not in checks or checks["lut"]["bit_exact"]) and c_model.passed(report["c_model"]))


def _outputs(name, report, variants, float_tflite, arenas, generated):
    """{relative path: bytes or text} of everything the export folder holds."""
    outputs = {layout.REPORT_JSON: json.dumps(report, indent=2, sort_keys=True) + "\n",
               layout.REPORT_MARKDOWN: markdown_report(report)}
    if float_tflite is not None:
        outputs[layout.model_file(name, "float")] = float_tflite
    for variant, data in variants.items():
        outputs[layout.model_file(name, variant)] = data
        if arenas[variant] is not None:
            arena, origin = arenas[variant], "measured on a 64-bit host"
        else:  # QGT kernels keep 5 B per channel in the arena where TFLM int8 ones keep 8: the int8 arena bounds it
            arena, origin = arenas["int8"], "of the int8 variant, an upper bound here, measured on a 64-bit host"
        for file_name, text in c_source.render_files(data, f"{name}_{variant}", arena,
                                                     layout.model_file(name, variant), origin).items():
            outputs[os.path.join(layout.c_folder(variant), file_name)] = text
    if generated is not None:
        for file_name, text in generated.files().items():
            outputs[os.path.join(layout.c_folder("packed"), file_name)] = text
    return outputs


def export(model_path, out_dir, bits=None, default_bits=8, calibration=None, name=None, verify_count=16,
           method="mse", calibration_count=200, resnap=False):
    """Runs the whole export (see the module docstring); returns the report dict.

    ``bits`` maps Keras layer names (for a .tflite: weight tensor names or op indices) to bits, the others
    get ``default_bits``; a QGT model's layers default to their own bits. ``calibration`` (required for
    Keras models): an array of input samples, a .npy file or an image folder (see
    :func:`calibration_images`); at most ``calibration_count`` samples are used and the first
    ``verify_count`` are also the verification inputs (random int8 inputs for a .tflite without them).
    ``resnap``: snap the kernels of a QGT model that are off their grid instead of refusing them (see
    ``keras_convert.plain_keras_model``).
    """
    for value, what in ((verify_count, "verify_count"), (calibration_count, "calibration_count")):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ExportError(f"{what} must be a positive integer, got {value!r}")
    layout.check_out_dir(out_dir)
    with termination.sigterm_raises():
        name = c_source.identifier(name or os.path.splitext(os.path.basename(model_path))[0])
        source = _load(model_path, calibration, bits, default_bits, method, calibration_count, resnap)
        int8 = pack.round_parameters(source.int8)  # so that int8, LUT and packed compute the same
        lut_bytes, lut_note = _lut_variant(int8)
        packed = pack.pack_model(int8)
        generated, c_model_note = _generated_model(packed, int8, name)
        round_trip = all(a.equals(b) for a, b in zip(pack.expected_layers(int8), pack.unpack_model(packed)))

        inputs = (verify.quantize_inputs(int8, source.samples[:verify_count]) if source.samples is not None
                  else verify.random_inputs(int8, verify_count))
        checks = {"int8": verify.compare(int8, inputs)}
        variants = {"int8": int8}
        if lut_bytes is not None:
            checks["lut"] = verify.compare(lut_bytes, inputs, reference_bytes=int8, reference_runtime="tflm")
            variants["lut"] = lut_bytes
        variants["packed"] = packed
        packed_check = verify.check_packed_layers(int8, packed, inputs)
        if generated is None:
            c_model_entry = {"note": c_model_note}
        else:
            c_model_entry = c_model.report_entry(generated, inputs, verify.run_tflm(int8, inputs)[0], [
                os.path.join(layout.c_folder("packed"), file_name) for file_name in codegen.FILE_NAMES])
        arenas = {variant: checks[variant]["arena_bytes"] if variant in checks else None for variant in variants}

        nominal = nominal_bits(int8, source.layer_bits)
        rows = [_row(name, "float", 32, source.float_tflite, None)] if source.float_tflite is not None else []
        rows += [_row(name, variant, nominal, data, arenas[variant]) for variant, data in variants.items()]
        report = {"model": name, "source": os.path.basename(model_path), "default_bits": default_bits,
                  "layer_bits": source.layer_bits, "rows": rows, "verification": checks,
                  "packed_round_trip": round_trip, "packed_layers": packed_check,
                  "int8_agrees_with_tflite": verify.agrees_with_tflite(checks["int8"], int8),
                  "calibration": source.calibration, "notes": [lut_note] if lut_note else [],
                  "c_model": c_model_entry}
        if not _passed(report):  # models and C sources that failed verification must not reach firmware
            raise ExportError(f"verification failed, nothing written to {out_dir}:\n"
                              + "\n".join(_verification_lines(report) + c_model.markdown_lines(report["c_model"])))
        write_folder(out_dir, _outputs(name, report, variants, source.float_tflite, arenas, generated))
    return report

"""Model size benchmark: MobileNetV1-0.25 person detection at 2 bits, every export variant.

Runs the qgt-export pipeline (tflm_export.export) on

* ``mobilenet_v1_96x96x1``: qgt_keras.models.mobilenet_v1((96, 96, 1), alpha=0.25), the TFLM person
  detection architecture, with the MLPerf Tiny VWW reference weights copied in (its RGB stem summed to one
  channel), calibrated on bundled person96 test images (grayscale);
* ``tflm_person_detect``: TFLM's own person_detect.tflite (third-party int8 model), snapped after training;

at 2 bits with the first layer at 8 bits (post-training snapping: these numbers are sizes, not accuracy),
and writes benchmarks/results/model_size.{json,md}. Goal (issue 4): the packed C array <= 64 KB (QGT paper
81 KB; TFLM LUT-2bit ~192 KB; int8 ~300 KB). The export rounds the int8 model's parameters to the packed
format's grids (tflm_export.pack.round_parameters); what that costs is measured on the trained
8-bit int8 models (TFLM person_detect, MLPerf Tiny VWW) over the bundled person96 test images, because
post-training 2-bit snapping leaves the 2-bit models at chance.

The TFLite-Micro Python runtime cannot run the QGT custom ops, so the packed arena needs a TFLM build with
them: ``--tflm_runner`` names a host program of ``arduino/QGT/extras/tflm_host/qgt_tflm_host.cpp`` built
against a TFLM host library (built by hand: this repository holds no script that builds TFLM) and
``--tflm_build`` says which (commit, command). The packed and the int8 variant then run in it on the
verification inputs; the packed arena is the recording allocator's total (what the Python runtime reports for
the int8 rows), with the int8 variant's arena in the same build and the bytes of the int8 kernels'
per-channel multiplier and shift arrays (8 B per channel) beside it.

    python benchmarks/model_size.py [--out_dir=benchmarks/results] [--tflm_runner=PATH --tflm_build=TEXT]
"""

import argparse
import json
import os
import re
import subprocess
import tempfile

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


import person_network  # noqa: E402
import provenance  # noqa: E402
from qgt_keras import datasets  # noqa: E402
from tflm_export import export, layout, pack, tflite_model, verify  # noqa: E402
from tflm_export.files import write_atomic  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE_MODELS = person_network.REFERENCE_MODELS
RESULTS = os.path.join(HERE, "results")
BITS, FIRST_LAYER_BITS = 2, 8
GOAL_BYTES = 64 * 1024
CALIBRATION_IMAGES = 200
VERIFY_INPUTS = 8


def _keras_model(folder):
    path = os.path.join(folder, "mobilenet_v1_96x96x1.keras")
    person_network.mobilenet_v1_96x96x1().save(path)
    return path


# (file, grayscale input, float range the int8 input quantizes) of the trained int8 reference models
TRAINED_INT8 = {"tflm_person_detect": ("tflm_person_detect.tflite", True, (-1.0, 1.0)),
                "mlperf_tiny_vww_96": ("mlperf_tiny_vww_96_int8.tflite", False, (0.0, 1.0))}


def _test_set(grayscale):
    dataset, _ = datasets.read_image_folder(datasets.bundled_person96_dir() / "test", grayscale=grayscale)
    images, labels = zip(*((x.numpy(), y.numpy()) for x, y in dataset))
    return np.concatenate(images), np.concatenate(labels)


def _predictions(int8, images):
    return verify.run_tflite(int8, verify.quantize_inputs(int8, images)).argmax(-1)


def parameter_rounding_accuracy():
    """Accuracy of each trained int8 model before and after pack.round_parameters (default: 2-byte biases in
    layers of <= 64 channels; and every bias in 1 byte), with the share of unchanged predictions."""
    rows = []
    for name, (file_name, grayscale, (low, high)) in TRAINED_INT8.items():
        path = os.path.join(REFERENCE_MODELS, file_name)
        if not os.path.exists(path):
            continue
        with open(path, "rb") as f:
            int8 = tflite_model.write(tflite_model.read(f.read()))  # repairs quantized dimensions TFLite rejects
        images, labels = _test_set(grayscale)
        images = low + images * (high - low)
        before = _predictions(int8, images)
        row = {"model": name, "images": int(len(labels)), "int8_accuracy": float(np.mean(before == labels))}
        for variant, wide_bias_channels in (("rounded", 64), ("rounded_1_byte_biases", 0)):
            after = _predictions(pack.round_parameters(int8, wide_bias_channels), images)
            row[f"{variant}_accuracy"] = float(np.mean(after == labels))
            row[f"{variant}_same_predictions"] = float(np.mean(after == before))
        rows.append(row)
    return rows


def per_channel_array_bytes(int8):
    """Bytes of the per-channel output multipliers and shifts (2 x int32 per channel) TFLM's int8 kernels
    keep for the model's per-channel quantized weight ops."""
    model = tflite_model.read(int8)
    channels = 0
    for op in tflite_model.weight_ops(model):
        scales, _ = tflite_model.tensor_scales(model, op.weights)
        channels += len(scales) if len(scales) > 1 else 0
    return 8 * channels


def run_tflm_with_qgt_ops(runner, model_path, inputs, folder):
    """(outputs, arena total, smallest arena) of ``model_path`` in the TFLM host runner."""
    inputs_path, outputs_path = os.path.join(folder, "inputs.bin"), os.path.join(folder, "outputs.bin")
    np.asarray(inputs, np.int8).tofile(inputs_path)
    done = subprocess.run([runner, model_path, inputs_path, outputs_path], capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{runner} {model_path} exited with {done.returncode}: {done.stderr[-1000:]}")
    total = re.search(r"Arena allocation total (\d+) bytes", done.stderr + done.stdout)
    smallest = re.search(r"smallest_arena_bytes (\d+)", done.stdout)
    outputs = np.fromfile(outputs_path, np.int8).reshape(len(inputs), -1)
    return outputs, int(total.group(1)), int(smallest.group(1))


def tflm_qgt_arenas(runner, folder, name):
    """The packed and int8 variants of the export in ``folder`` in the TFLM host runner (see the module
    docstring): arenas, per-channel array bytes and whether packed, int8 and the Python runtime agree."""
    paths = {variant: os.path.join(folder, layout.model_file(name, variant)) for variant in ("int8", "packed")}
    with open(paths["int8"], "rb") as f:
        int8 = f.read()
    images, _ = _test_set(grayscale=tflite_model.io_details(tflite_model.read(int8))["inputs"][0]["shape"][3] == 1)
    inputs = verify.quantize_inputs(int8, images[:VERIFY_INPUTS])
    reference, _, _ = verify.run_tflm(int8, inputs)
    measured = {}
    with tempfile.TemporaryDirectory() as scratch:
        for variant, path in paths.items():
            outputs, total, smallest = run_tflm_with_qgt_ops(runner, path, inputs, scratch)
            measured[variant] = {"arena_bytes": total, "smallest_arena_bytes": smallest,
                                 "bit_exact_with_python_int8": bool(np.array_equal(outputs, reference))}
    per_channel = per_channel_array_bytes(int8)
    return {"packed_arena_bytes": measured["packed"]["arena_bytes"],
            "packed_smallest_arena_bytes": measured["packed"]["smallest_arena_bytes"],
            "int8_arena_bytes": measured["int8"]["arena_bytes"],
            "int8_smallest_arena_bytes": measured["int8"]["smallest_arena_bytes"],
            "int8_per_channel_array_bytes": per_channel,
            "goal_arena_bytes": measured["int8"]["arena_bytes"] - per_channel,
            "packed_bit_exact_with_python_int8": measured["packed"]["bit_exact_with_python_int8"],
            "int8_bit_exact_with_python_int8": measured["int8"]["bit_exact_with_python_int8"],
            "inputs": int(len(inputs))}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", default=RESULTS, help="Where model_size.{json,md} go.")
    parser.add_argument("--tflm_runner", help="Host TFLM program with the QGT ops (arduino/QGT/extras/tflm_host).")
    parser.add_argument("--tflm_build", default="", help="Which TFLM build the runner links (commit, command).")
    args = parser.parse_args()
    out_dir = args.out_dir
    run = provenance.Run()
    reports, arenas = [], {}
    with tempfile.TemporaryDirectory() as folder:
        keras_path = _keras_model(folder)
        exports = [(keras_path, "keras", {"conv1": FIRST_LAYER_BITS}, str(datasets.bundled_person96_dir() / "train"),
                    "mobilenet_v1_96x96x1")]
        person_detect = os.path.join(REFERENCE_MODELS, "tflm_person_detect.tflite")
        if os.path.exists(person_detect):
            exports.append((person_detect, "tflite", {0: FIRST_LAYER_BITS}, None, "tflm_person_detect"))
        for source, subfolder, bits, calibration, name in exports:
            out = os.path.join(folder, subfolder)
            # min_agreement 0: snapped after training, the 2-bit models are at chance (sizes, not accuracy)
            reports.append(export.export(source, out, bits, BITS, calibration, name, VERIFY_INPUTS,
                                         calibration_count=CALIBRATION_IMAGES, min_agreement=0.0))
            if args.tflm_runner:
                arenas[name] = tflm_qgt_arenas(args.tflm_runner, out, name)
    rows = [row for report in reports for row in report["rows"]]
    for row in rows:
        if row["variant"] == "packed" and row["model"] in arenas:
            row["arena_bytes"] = arenas[row["model"]]["packed_arena_bytes"]
    checks = {report["model"]: {"int8_agrees_with_tflite": report["int8_agrees_with_tflite"],
                                "lut_bit_exact_with_int8": report["verification"]["lut"]["bit_exact"],
                                "packed_round_trip": report["packed_round_trip"],
                                "packed_layers_bit_exact": report["packed_layers"]["bit_exact"]}
              for report in reports}
    result = {"bits": BITS, "first_layer_bits": FIRST_LAYER_BITS, "goal_packed_bytes": GOAL_BYTES,
              "rows": rows, "checks": checks, "parameter_rounding_accuracy": parameter_rounding_accuracy()}
    if arenas:
        result["tflm_with_qgt_ops"] = {"runner": "arduino/QGT/extras/tflm_host/qgt_tflm_host.cpp",
                                       "build": args.tflm_build, "models": arenas}
    result["provenance"] = run.record()
    write_atomic(os.path.join(out_dir, "model_size.json"), json.dumps(result, indent=2) + "\n")
    write_atomic(os.path.join(out_dir, "model_size.md"), _markdown(result))
    print(_markdown(result))


def _tflm_arena_lines(result):
    tflm = result.get("tflm_with_qgt_ops")
    if tflm is None:
        return ["Packed arena: n/a (the TFLite-Micro Python runtime cannot run the QGT ops; run with --tflm_runner)."]
    lines = [f"Packed arena: the QGT ops in TFLite-Micro ({tflm['runner']}, {tflm['build']}); the recording "
             "allocator's total, as the Python runtime reports for int8. Goal: the int8 arena (same build) minus "
             "the int8 kernels' per-channel multiplier and shift arrays.", "",
             "| model | packed arena B | smallest B | int8 arena B (same build) | per-channel arrays B | goal B | "
             "bit-exact with the Python int8 run |", "|---|---|---|---|---|---|---|"]
    for model, m in tflm["models"].items():
        verdict = "meets" if m["packed_arena_bytes"] <= m["goal_arena_bytes"] else "misses"
        lines.append(f"| {model} | {m['packed_arena_bytes']:,} | {m['packed_smallest_arena_bytes']:,} | "
                     f"{m['int8_arena_bytes']:,} | {m['int8_per_channel_array_bytes']:,} | {m['goal_arena_bytes']:,} "
                     f"({verdict}) | packed {'yes' if m['packed_bit_exact_with_python_int8'] else 'NO'}, int8 "
                     f"{'yes' if m['int8_bit_exact_with_python_int8'] else 'NO'} ({m['inputs']} inputs) |")
    return lines


def _markdown(result):
    lines = ["# Model size: MobileNetV1-0.25 96x96x1 person detection, "
             f"{result['bits']}-bit weights (first layer {result['first_layer_bits']}-bit)", "",
             provenance.describe(result["provenance"]) + " Post-training snapping (sizes, not accuracy); packed "
             f"format version {pack.FORMAT_VERSION} on parameters rounded by `pack.round_parameters`; calibrated "
             "on person96 training images.", ""]
    lines += export.size_table(result["rows"], [("model", "model"), ("variant", "variant")], "TFLM arena B")
    lines += ["", f"Goal: packed C array <= {result['goal_packed_bytes']:,} B (QGT paper: 81 KB).", ""]
    for row in result["rows"]:
        if row["variant"] == "packed":
            verdict = "meets" if row["file_bytes"] <= result["goal_packed_bytes"] else "misses"
            lines.append(f"- {row['model']}: packed {row['file_bytes']:,} B {verdict} the goal")
    lines += ["", "Checks (TFLite-Micro Python runtime):", ""]
    for model, checks in result["checks"].items():
        lines.append(f"- {model}: " + ", ".join(f"{name} {'yes' if ok else 'NO'}" for name, ok in checks.items()))
    lines += [""] + _tflm_arena_lines(result) + ["",
              "Cost of rounding the int8 parameters to the packed format's grids (`pack.round_parameters`), "
              "trained 8-bit int8 models on the bundled person96 test images (accuracy; share of unchanged "
              "predictions):", "",
              "| model | images | int8 | rounded (default) | same | all biases 1 byte | same |",
              "|---|---|---|---|---|---|---|"]
    for row in result["parameter_rounding_accuracy"]:
        lines.append(f"| {row['model']} | {row['images']} | {row['int8_accuracy']:.1%} | {row['rounded_accuracy']:.1%} "
                     f"| {row['rounded_same_predictions']:.1%} | {row['rounded_1_byte_biases_accuracy']:.1%} "
                     f"| {row['rounded_1_byte_biases_same_predictions']:.1%} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

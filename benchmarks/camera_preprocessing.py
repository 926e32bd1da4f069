"""How far the sketch's camera path is from the inputs the model was trained on.

The person96 test crops (96x96, what training feeds: v / 255 then the model's input quantization) against
the same crops made into QCIF camera frames (tflm_export.camera.frame_from_image: scaled to 144x144
bicubic, edge columns to 176 wide, stored as Arduino_OV767X stores RGB565 or GRAYSCALE) and preprocessed
as the sketch does (tflm_export.camera.to_input: centred 144x144 window, area resize to 96x96, the 256-entry
table). All three run through the person_detection example's shipped packed model as the board computes it
(its generated C, built for the host; shipped_model.py). Writes <out>.json and <out>.md.

Usage: python benchmarks/camera_preprocessing.py [--out=benchmarks/results/camera_preprocessing]
    [--model_data=FILE] (another qgt-export model_data.cc)
"""

import argparse
import json
import os
import tempfile

import numpy as np

import provenance
import shipped_model

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from qgt_keras import datasets  # noqa: E402
from tflm_export import camera, codegen, export, person, tflite_model, verify  # noqa: E402
from tflm_export.files import write_atomic  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
QCIF = (176, 144)


def test_crops():
    """(uint8 crops (N, 96, 96, 3), labels) of the bundled person96 test split, as training reads them."""
    dataset, _ = datasets.read_image_folder(datasets.bundled_person96_dir() / "test", batch_size=128)
    images, labels = zip(*((x.numpy(), y.numpy()) for x, y in dataset))
    floats, labels = np.concatenate(images), np.concatenate(labels)
    crops = np.round(floats * 255.0)
    assert np.abs(crops - floats * 255.0).max() < 1e-3, "the pipeline's floats are not v / 255"
    return crops.astype(np.uint8), floats, labels


def _scores(outputs, output_quant):
    scale, zero_point = output_quant
    return np.array([person.score_permille(o, codegen.PERSON_INDEX, scale, zero_point) for o in outputs])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(RESULTS, "camera_preprocessing"),
                        help="output path without extension")
    parser.add_argument("--model_data", default=os.path.join(shipped_model.EXAMPLE, "model_data.cc"),
                        help="the model_data.cc of a packed model (default: the example's shipped model)")
    args = parser.parse_args()
    run = provenance.Run()
    packed = shipped_model.packed_model(args.model_data)
    details = tflite_model.io_details(tflite_model.read(packed))
    shape = tuple(details["inputs"][0]["shape"][1:])
    output_quant = (details["outputs"][0]["scale"], details["outputs"][0]["zero_point"])
    crops, floats, labels = test_crops()
    table = export.pixel_table(packed)  # what qgt-export writes into the generated model
    trained = verify.quantize_inputs(packed, floats)
    framed = {fmt: np.stack([camera.to_input(camera.frame_from_image(c, *QCIF, fmt), *QCIF, fmt, table, shape)
                             for c in crops]) for fmt in camera.FORMATS}
    with tempfile.TemporaryDirectory() as folder:  # one build and run for every input
        outputs = shipped_model.output_codes(packed, np.concatenate([trained, *framed.values()]), folder)
    reference_outputs, *framed_outputs = np.split(outputs, 1 + len(framed))
    reference = _scores(reference_outputs, output_quant)
    rows = [{"path": "as trained (crop / 255)", "accuracy": float(np.mean(reference_outputs.argmax(-1) == labels))}]
    for (fmt, inputs), outputs in zip(framed.items(), framed_outputs):
        scores = _scores(outputs, output_quant)
        steps = np.abs(inputs.astype(np.int16) - trained.astype(np.int16))
        rows.append({"path": f"camera {fmt} frame", "accuracy": float(np.mean(outputs.argmax(-1) == labels)),
                     "same_decisions": float(np.mean(outputs.argmax(-1) == reference_outputs.argmax(-1))),
                     "mean_abs_score_diff_permille": float(np.mean(np.abs(scores - reference))),
                     "p95_abs_score_diff_permille": float(np.percentile(np.abs(scores - reference), 95)),
                     "max_abs_score_diff_permille": int(np.max(np.abs(scores - reference))),
                     "mean_abs_input_diff_steps": float(steps.mean())})
    result = {"model": os.path.relpath(args.model_data, os.path.join(HERE, "..")), "model_bytes": len(packed),
              "images": int(len(labels)), "input_shape": list(shape), "rows": rows, "provenance": run.record()}
    write_atomic(args.out + ".json", json.dumps(result, indent=2) + "\n")
    write_atomic(args.out + ".md", _markdown(result))
    print(_markdown(result))


def _markdown(result):
    lines = ["# Camera preprocessing vs the inputs as trained", "",
             provenance.describe(result["provenance"]) + f" {result['images']} person96 test crops, model "
             f"`{result['model']}` ({result['model_bytes']:,} B packed), input {result['input_shape']}, run as its "
             "generated C (host build).", "",
             "Camera path: crop -> QCIF frame (144x144 bicubic, edge columns) -> the sketch's preprocessing "
             "(centred 144x144 window, area resize to 96x96, 256-entry table). Scores: person probability in "
             "thousandths; differences against the as-trained input of the same crop.", "",
             "| input | accuracy | same decision | mean / p95 / max score diff | mean input diff (steps) |",
             "|---|---|---|---|---|"]
    for row in result["rows"]:
        if "same_decisions" not in row:
            lines.append(f"| {row['path']} | {100 * row['accuracy']:.1f}% | - | - | - |")
            continue
        lines.append(f"| {row['path']} | {100 * row['accuracy']:.1f}% | {100 * row['same_decisions']:.1f}% | "
                     f"{row['mean_abs_score_diff_permille']:.1f} / {row['p95_abs_score_diff_permille']:.0f} / "
                     f"{row['max_abs_score_diff_permille']} | {row['mean_abs_input_diff_steps']:.2f} |")
    return "\n".join(lines + [""])


if __name__ == "__main__":
    main()

"""The person_detection example's shipped 2-bit model, as the board computes it (its generated C, built for
the host, bit-exact with the Cortex-M4 build), on person96's test split and out of scene (data/ood) against
the MLPerf Tiny VWW float teacher it was trained from: what a user flashing the example gets.

    python benchmarks/shipped_model.py [--out=benchmarks/results/shipped_model] [--model_data=FILE]

``--model_data`` scores another qgt-export model_data.cc (e.g. ``runs/export/c/packed/model_data.cc``).

Writes <out>.json and <out>.md. The inputs are the crops quantized with the model's input scale and zero point
(verify.quantize_inputs); the camera path adds its own resizing and is tested in tests/test_sketch_path.py.
"""

import argparse
import json
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

import deployed  # noqa: E402
import generalization  # noqa: E402
import person_network  # noqa: E402
import provenance  # noqa: E402
from qgt_keras import datasets, serialization  # noqa: E402
from tflm_export import c_source, codegen, export, model_runner, verify  # noqa: E402
from tflm_export.files import write_atomic  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "arduino", "QGT", "examples", "person_detection")
PREFIX = "person_model"


def packed_model(model_data):
    with open(model_data) as f:
        return c_source.model_bytes_of(f.read())


def output_codes(packed, inputs, folder):
    """The int8 output codes (one row per input) of the generated C model of ``packed`` (host build) on int8
    ``inputs`` (N, H, W, C)."""
    generated = codegen.generate(packed, PREFIX, export.pixel_table(packed))
    program = model_runner.build_host(generated, folder)
    results = model_runner.run_host(program, generated, inputs, folder)
    if any(results.statuses):
        raise RuntimeError(f"the generated model returned statuses {sorted(set(results.statuses))}")
    return results.outputs.reshape(len(inputs), -1)


def person_probabilities(packed, images, folder):
    """P(person) of the generated C model of ``packed`` on float ``images`` in [0, 1] (host build)."""
    codes = output_codes(packed, verify.quantize_inputs(packed, images), folder)
    return deployed.output_values(packed, codes)[:, codegen.PERSON_INDEX]  # the model ends in a softmax


def person96_test():
    dataset, _ = datasets.read_image_folder(datasets.bundled_person96_dir() / "test", batch_size=256)
    images, labels = zip(*((x.numpy(), y.numpy()) for x, y in dataset))
    return np.concatenate(images), np.concatenate(labels)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(HERE, "results", "shipped_model"),
                        help="output path without extension")
    parser.add_argument("--model_data", default=os.path.join(EXAMPLE, "model_data.cc"),
                        help="the model_data.cc of a packed model (default: the example's shipped model)")
    args = parser.parse_args(argv)
    run = provenance.Run()
    packed = packed_model(args.model_data)
    ood = datasets.read_out_of_scene()
    test_images, test_labels = person96_test()
    teacher = serialization.load_model(person_network.MLPERF_WEIGHTS)
    teacher_person = generalization.person_probability(
        lambda x: teacher.predict(x, verbose=0, batch_size=128), ood.images)
    with tempfile.TemporaryDirectory() as folder:
        student = person_probabilities(packed, np.concatenate([ood.images, test_images]), folder)
    ood_person, test_person = student[:len(ood.images)], student[len(ood.images):]
    result = {"model_bytes": len(packed),
              "person96_test_accuracy": float(np.mean((test_person > generalization.THRESHOLD) == test_labels)),
              "person96_test_images": len(test_labels),
              "ood": generalization.out_of_scene(ood_person, teacher_person, ood)}
    result["provenance"] = run.record()
    write_atomic(args.out + ".json", json.dumps(result, indent=1) + "\n")
    o = result["ood"]
    report = "\n".join([
        "# The shipped person_detection model, as the board computes it", "",
        provenance.describe(result["provenance"]), "",
        f"The example's packed model ({len(packed):,} B), its generated C built for the host, on the crops "
        "quantized with its input scale and zero point.", "",
        "| measurement | value |", "|---|---:|",
        f"| person96 test split accuracy ({len(test_labels)} crops) | {100 * result['person96_test_accuracy']:.2f}% |",
        f"| data/ood: agreement with the MLPerf float teacher ({len(ood.images)} crops) | "
        f"{100 * o['agreement']:.2f}% |",
        f"| data/ood: AUC against the teacher's decisions | {o['auc_vs_teacher']:.4f} |",
        f"| data/ood labeled crops: accuracy | {100 * o['labeled_accuracy']:.2f}% |",
        f"| data/ood labeled crops: person recall | {100 * o['person_recall']:.2f}% |",
        f"| data/ood labeled crops: non-person specificity | {100 * o['non_person_specificity']:.2f}% |", ""])
    write_atomic(args.out + ".md", report)
    print(report)


if __name__ == "__main__":
    main()

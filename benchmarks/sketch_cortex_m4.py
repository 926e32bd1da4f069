"""The person_detection sketch's work per frame on the emulated Cortex-M4 (qemu mps2-an386, exact executed
instructions): the camera preprocessing (QCIF RGB565 frame -> 96x96x3 input) and one invoke of the shipped
generated model (arduino/QGT/examples/person_detection), with the sketch-path runner
(tflm_export/sketch_runner.c) built as the Arduino core builds libraries (-Os) and at -O2, with and without
the model's QGT_WEIGHT_BITS_MASK. The latency estimate divides instructions by 64 MHz: instructions are not
cycles (loads, multiplies and taken branches take more) and the nRF52840 adds flash wait states on cache
misses, so it is a lower-bound-style estimate, not a measurement on the board. Frames: TFLM's person.bmp /
no_person.bmp made into QCIF frames. Writes benchmarks/results/sketch_cortex_m4.{json,md}.

Usage: python benchmarks/sketch_cortex_m4.py
"""

import argparse
import json
import os
import re
import tempfile

import numpy as np
from PIL import Image

import provenance
from tflm_export import camera, sketch_runner, toolchain
from tflm_export.files import write_atomic

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
EXAMPLE = os.path.join(HERE, "..", "arduino", "QGT", "examples", "person_detection")
TFLM_TESTDATA = os.path.join(HERE, "..", "..", "shared", "datasets", "tflm_testdata")
QCIF = (176, 144)
CLOCK_HZ = 64e6
ON, OFF = 600, 400
BUILDS = (("-Os", False), ("-Os", True), ("-O2", False), ("-O2", True))  # (optimization, weight-bits mask)


def frames():
    """TFLM's person.bmp (int8 values stored as raw bytes) and no_person.bmp as QCIF RGB565 frames."""
    person = np.asarray(Image.open(os.path.join(TFLM_TESTDATA, "person.bmp")))
    no_person = np.asarray(Image.open(os.path.join(TFLM_TESTDATA, "no_person.bmp")))
    images = [(person.astype(np.int8).astype(np.int16) + 128).astype(np.uint8), no_person]
    return [camera.frame_from_image(image, *QCIF, "rgb565") for image in images]


def _model_macro(name):
    with open(os.path.join(EXAMPLE, "qgt_model.h")) as f:
        return int(re.search(rf"#define \w+_{name} (0x[0-9a-fA-F]+|\d+)", f.read()).group(1), 0)


def measure(folder, optimize, masked, shipped_frames):
    example = os.path.abspath(EXAMPLE)
    defines = ["QGT_RUNNER_SEMIHOST", "QGT_RUNNER_MODEL=person_model", "QGT_RUNNER_MACRO=PERSON_MODEL"]
    if masked:
        defines.append(f"QGT_WEIGHT_BITS_MASK=0x{_model_macro('WEIGHT_BITS_MASK'):x}")
    elf = toolchain.build_cortex_m4([sketch_runner.RUNNER_SOURCE, os.path.join(example, "qgt_model.c")], folder,
                                    "sketch.elf", optimize=optimize, include_dirs=[example], defines=defines)
    results = sketch_runner.run_cortex_m4(elf, folder, shipped_frames, *QCIF, "rgb565", _model_macro("INPUT_BYTES"),
                                          _model_macro("OUTPUT_BYTES"), ON, OFF)
    preprocessing, invoke = (max(values) for values in zip(*results.instructions))
    return {"optimize": optimize, "weight_bits_mask": masked, "preprocessing_instructions": preprocessing,
            "invoke_instructions": invoke, "preprocessing_ms_at_64mhz": round(preprocessing / CLOCK_HZ * 1e3, 1),
            "invoke_ms_at_64mhz": round(invoke / CLOCK_HZ * 1e3, 1), "scores": results.scores,
            "outputs": results.outputs.tolist()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", default=RESULTS, help="Where sketch_cortex_m4.{json,md} go.")
    out_dir = parser.parse_args().out_dir
    run = provenance.Run()
    shipped_frames = frames()
    with tempfile.TemporaryDirectory() as folder:
        rows = [measure(folder, optimize, masked, shipped_frames) for optimize, masked in BUILDS]
    outputs = {json.dumps(row["outputs"]) for row in rows}
    result = {"model": "arduino/QGT/examples/person_detection (person_model)", "frames": ["person.bmp", "no_person.bmp"],
              "clock_hz": CLOCK_HZ, "rows": rows, "same_outputs_in_every_build": len(outputs) == 1,
              "provenance": run.record()}
    write_atomic(os.path.join(out_dir, "sketch_cortex_m4.json"), json.dumps(result, indent=2) + "\n")
    write_atomic(os.path.join(out_dir, "sketch_cortex_m4.md"), _markdown(result))
    print(_markdown(result))


def _markdown(result):
    lines = ["# The person_detection sketch per frame on the emulated Cortex-M4", "",
             provenance.describe(result["provenance"]) + " Exact executed instructions on qemu mps2-an386 of the "
             "camera preprocessing (QCIF RGB565 -> 96x96x3) and one invoke of the shipped generated model, on "
             "TFLM's person.bmp and no_person.bmp as QCIF frames (the larger of the two). Milliseconds: "
             "instructions / 64 MHz, an estimate (instructions are not cycles; flash wait states).", "",
             "| build | QGT_WEIGHT_BITS_MASK | preprocessing | ms | invoke | ms |", "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['optimize']} | {'the model' if row['weight_bits_mask'] else 'all widths'} | "
                     f"{row['preprocessing_instructions']:,} | {row['preprocessing_ms_at_64mhz']} | "
                     f"{row['invoke_instructions']:,} | {row['invoke_ms_at_64mhz']} |")
    lines += ["", f"Outputs identical in every build: {'yes' if result['same_outputs_in_every_build'] else 'NO'} "
              f"(person scores {result['rows'][0]['scores']} in thousandths). The Arduino mbed_nano core compiles "
              "libraries at -Os."]
    return "\n".join(lines + [""])


if __name__ == "__main__":
    main()

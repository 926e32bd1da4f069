"""The generated C model of MobileNetV1-0.25 96x96x1 person detection on the emulated Cortex-M4: exact
executed instructions per layer and per inference, flash and RAM, for 1-, 2-, 4-bit (first layer 8-bit)
and all-8-bit packed weights, on the DSP path and the portable one.

The network is qgt_keras.models.mobilenet_v1((96, 96, 1), alpha=0.25) with the MLPerf Tiny VWW weights
copied in (as benchmarks/model_size.py), converted once to int8 on bundled person96 test images, then
snapped to each width after training (tflm_export.snap; the instruction counts and sizes do not depend on
accuracy), its parameters rounded and packed as qgt-export does. Each packed model's generated C (tflm_export.codegen)
is built with arm-none-eabi-gcc -O2 for qemu's mps2-an386 (Cortex-M4F) and run on two real person96 test
crops; its outputs must equal the TFLite-Micro runtime's on the int8 model. Instructions are counted
exactly by a TCG plugin (tflm_export.emulator; instructions, not cycles), per op between the generated
model's layer hooks; flash (text + rodata) and RAM (data + bss) come from the link map, the peak stack of
invoke from stack painting. Writes cortex_m4.{json,md,png} to --out_dir (benchmarks/results); about a
minute on 2 cores, and tests/test_benchmark_cortex_m4.py runs it in CI.

    python benchmarks/cortex_m4.py [--out_dir=benchmarks/results]
"""

import argparse
import json
import os
import sys
import tempfile

import numpy as np

import person_network
import provenance

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from qgt_keras import datasets  # noqa: E402
from tflm_export import codegen, export, keras_convert, model_runner, pack, snap, verify  # noqa: E402
from tflm_export.files import write_atomic  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
MODEL = "mobilenet_v1_96x96x1"
WIDTHS = (1, 2, 4, 8)  # the first layer stays 8-bit
CALIBRATION_IMAGES = 200
RUN_INPUTS = 2
RUNTIMES = {"generated_c_dsp": False, "generated_c_portable": True}  # runtime: portable path?
# ../shared/ANCHORS.md (same emulator, exact counts, TFLite-Micro at tflite-micro 90b983c2, person_detect)
ANCHORS = {"tflm_reference_instructions": 95_592_356, "tflm_cmsis_nn_instructions": 22_929_259,
           "tflm_cmsis_nn_per_mac": {"pointwise": 2.35, "depthwise": 8.6}, "tflm_arena_bytes": 82_296,
           "tflm_runtime_flash_bytes": {"reference": 47_800, "cmsis_nn": 90_600}}
GOALS = {"ram_bytes": 40 * 1024, "flash_bytes": 16 * 1024, "instructions_2bit_dsp": 11_500_000,
         "ratio_2bit_to_8bit": 1.1, "pointwise_2bit_per_mac": 1.6, "depthwise_2bit_per_mac": 4.0}


def _images(count, grayscale=True):
    dataset, _ = datasets.read_image_folder(datasets.bundled_person96_dir() / "test", grayscale=grayscale,
                                            batch_size=count, limit=count)
    return next(iter(dataset))[0].numpy()


def _int8_model():
    """The all-8-bit int8 .tflite of the network (MLPerf weights when ../shared has them)."""
    return keras_convert.convert_keras(person_network.mobilenet_v1_96x96x1(), _images(CALIBRATION_IMAGES), None,
                                       8).tflite


def _labels(layers):
    """conv1, dw1, pw1, ..., pool, reshape, dense, softmax, and each op's kind."""
    names, counts = [], {}
    kinds = []
    for layer in layers:
        if layer.op == "QGT_DEPTHWISE_CONV_2D":
            kind, stem = "depthwise", "dw"
        elif layer.op == "QGT_CONV_2D":
            pointwise = layer.overlap.kind == "gap"  # 1x1, stride 1: the kernels' pointwise path
            kind, stem = ("pointwise", "pw") if pointwise else ("first conv (8-bit)", "conv")
        else:
            kind = stem = {"QGT_FULLY_CONNECTED": "dense", "AVERAGE_POOL_2D": "pool", "RESHAPE": "reshape",
                           "SOFTMAX": "softmax"}[layer.op]
        counts[stem] = counts.get(stem, 0) + 1
        names.append(f"{stem}{counts[stem]}" if stem in ("dw", "pw", "conv") else stem)
        kinds.append(kind)
    return names, kinds


def measure(generated, int8, inputs, portable, folder):
    """One row. The model built as firmware builds it: every input run and checked against TFLite-Micro, the
    first one (passed in place, without a copy) counted alone, its flash and RAM; built with the layer hook:
    the first input's instructions per op."""
    elf = model_runner.build_cortex_m4(generated, os.path.join(folder, "firmware"), portable=portable)
    checked = model_runner.run_cortex_m4(elf, generated, inputs, count=False).results
    expected = verify.run_tflm(int8, inputs)[0].reshape(len(inputs), -1)
    if checked.statuses != [0] * len(inputs) or not np.array_equal(checked.outputs, expected):
        raise SystemExit(f"the generated C model differs from TFLite-Micro ({'portable' if portable else 'DSP'} path): "
                         f"statuses {checked.statuses}, outputs {checked.outputs.tolist()} vs {expected.tolist()}")
    run = model_runner.run_cortex_m4(elf, generated, inputs[:1])
    hooked = model_runner.build_cortex_m4(generated, os.path.join(folder, "layers"), portable=portable, layer_hook=True)
    per_op = model_runner.run_cortex_m4(hooked, generated, inputs[:1], per_op=True).op_instructions
    footprint = model_runner.footprint(elf)
    names, kinds = _labels(generated.layers)
    layers = [{"layer": name, "kind": kind, "op": layer.op, "weights_bits": layer.weight_bits, "macs": layer.macs,
               "instructions": n, "instructions_per_mac": round(n / layer.macs, 3) if layer.macs else None}
              for name, kind, layer, n in zip(names, kinds, generated.layers, per_op)]
    macs = sum(layer.macs for layer in generated.layers if layer.weight_bits)
    stack = max(checked.stack_bytes)
    return {"instructions": run.invoke_instructions, "macs": macs,
            "instructions_per_mac": round(run.invoke_instructions / macs, 3),
            "generated_code_instructions": run.by_function[f"{generated.prefix}_invoke"],
            "flash_bytes": footprint.firmware_flash, "model_bytes": footprint.model_data_flash,
            "ram_bytes": footprint.static_ram + stack, "buffer_bytes": generated.buffer_bytes, "stack_bytes": stack,
            "kernels_flash_bytes": footprint.kernel_flash, "model_code_flash_bytes": footprint.model_code_flash,
            "libc_flash_bytes": footprint.libc_flash, "by_kind": by_kind(layers), "layers": layers}


def by_kind(layers):
    totals = {}
    for row in layers:
        if row["macs"]:
            total = totals.setdefault(row["kind"], [0, 0])
            total[0] += row["instructions"]
            total[1] += row["macs"]
    return {kind: {"instructions": i, "macs": m, "instructions_per_mac": round(i / m, 3)} for kind, (i, m) in totals.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", default=RESULTS, help="Where cortex_m4.{json,md,png} go.")
    out_dir = parser.parse_args().out_dir
    run = provenance.Run()
    commit = run.record()["commit"]
    rows = []
    inputs_float = _images(RUN_INPUTS)
    int8_8bit = _int8_model()
    with tempfile.TemporaryDirectory() as folder:
        for bits in WIDTHS:
            int8 = pack.round_parameters(snap.snap_tflite(int8_8bit, {0: 8}, bits))  # as qgt-export does
            packed = pack.pack_model(int8)
            generated = codegen.generate(packed, f"{MODEL}_model", export.pixel_table(int8))
            inputs = verify.quantize_inputs(int8, inputs_float)
            for runtime, portable in RUNTIMES.items():
                row = {"model": MODEL, "weights_bits": bits, "runtime": runtime, "packed_file_bytes": len(packed),
                       **measure(generated, int8, inputs, portable, os.path.join(folder, f"{bits}bit_{runtime}")),
                       "commit": commit}
                rows.append(row)
                print(f"{bits}-bit {runtime}: {row['instructions']:,} instructions, {row['instructions_per_mac']}/MAC, "
                      f"flash {row['flash_bytes']:,} B + model {row['model_bytes']:,} B, RAM {row['ram_bytes']:,} B",
                      file=sys.stderr)
    result = {"model": f"{MODEL} (MobileNetV1-0.25, MLPerf Tiny VWW weights, post-training snapped)",
              "inputs": f"{RUN_INPUTS} person96 test crops (grayscale), outputs equal to TFLite-Micro's",
              "counting": "qemu-system-arm mps2-an386, TCG plugin counting every executed instruction (exact)",
              "anchors": ANCHORS, "goals": GOALS, "rows": rows}
    result["provenance"] = run.record()
    os.makedirs(out_dir, exist_ok=True)
    write_atomic(os.path.join(out_dir, "cortex_m4.json"), json.dumps(result, indent=2) + "\n")
    write_atomic(os.path.join(out_dir, "cortex_m4.md"), markdown(result))
    plot(result, os.path.join(out_dir, "cortex_m4.png"))
    print(markdown(result))


def _row(result, bits, runtime):
    return next(r for r in result["rows"] if r["weights_bits"] == bits and r["runtime"] == runtime)


def goals(result):
    """[(goal, value, met)] of the issue's goals."""
    dsp2, dsp8 = _row(result, 2, "generated_c_dsp"), _row(result, 8, "generated_c_dsp")
    g = result["goals"]
    worst_ram = max(r["ram_bytes"] for r in result["rows"])
    flash = {r["weights_bits"]: r["flash_bytes"] for r in result["rows"] if r["runtime"] == "generated_c_dsp"}
    ratio = dsp2["instructions"] / dsp8["instructions"]
    pointwise, depthwise = (dsp2["by_kind"][k]["instructions_per_mac"] for k in ("pointwise", "depthwise"))
    return [
        (f"RAM (buffer + static data + peak stack) <= {g['ram_bytes']:,} B", f"{worst_ram:,} B (largest of all rows)",
         worst_ram <= g["ram_bytes"]),
        (f"firmware flash besides the model <= {g['flash_bytes']:,} B, 2-bit person model (DSP build, kernels for "
         "2 and 8 bits)", f"{flash[2]:,} B (" + ", ".join(f"{b}-bit {v:,}" for b, v in sorted(flash.items()) if b != 2)
         + " B)", flash[2] <= g["flash_bytes"]),
        (f"2-bit DSP <= {g['instructions_2bit_dsp']:,} instructions", f"{dsp2['instructions']:,}",
         dsp2["instructions"] <= g["instructions_2bit_dsp"]),
        (f"2-bit DSP beats TFLM + CMSIS-NN ({ANCHORS['tflm_cmsis_nn_instructions']:,})", f"{dsp2['instructions']:,}",
         dsp2["instructions"] < ANCHORS["tflm_cmsis_nn_instructions"]),
        (f"2-bit <= {g['ratio_2bit_to_8bit']}x our 8-bit (DSP)", f"{ratio:.3f}x", ratio <= g["ratio_2bit_to_8bit"]),
        (f"pointwise 2-bit <= {g['pointwise_2bit_per_mac']} instructions/MAC", f"{pointwise}",
         pointwise <= g["pointwise_2bit_per_mac"]),
        (f"depthwise 2-bit <= {g['depthwise_2bit_per_mac']} instructions/MAC", f"{depthwise}",
         depthwise <= g["depthwise_2bit_per_mac"])]


def markdown(result):
    prov = result["provenance"]
    lines = ["# MobileNetV1-0.25 96x96x1 person detection as generated C on the emulated Cortex-M4", "",
             f"{provenance.describe(prov)} Model: {result['model']}; inputs: {result['inputs']}; counting: "
             f"{result['counting']}. Instructions, not cycles.", "",
             "flash = kernel library + generated code + the C library functions they call (text + rodata), "
             "everything but the model's constants; model = the generated constants (blobs, filters, "
             "multiplier tables, params, pixel table); RAM = data + bss (the one activation buffer) + the peak "
             "stack of invoke (painted). Totals, flash and RAM are of the model built as firmware builds it "
             "(QGT_WEIGHT_BITS_MASK set to the model's widths); the per-layer counts come from a second build with a "
             "marker call after each op (a few instructions per op more). Glue: the instructions of the generated "
             "invoke itself, outside the kernels and the C library.", "",
             "| weights | runtime | instructions | per MAC | pointwise /MAC | depthwise /MAC | first conv /MAC | glue | "
             "flash B | model B | RAM B (buffer + stack) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        k = r["by_kind"]
        lines.append(f"| {r['weights_bits']}-bit | {r['runtime']} | {r['instructions']:,} | {r['instructions_per_mac']} "
                     f"| {k['pointwise']['instructions_per_mac']} | {k['depthwise']['instructions_per_mac']} | "
                     f"{k['first conv (8-bit)']['instructions_per_mac']} | {r['generated_code_instructions']:,} | "
                     f"{r['flash_bytes']:,} | {r['model_bytes']:,} | "
                     f"{r['ram_bytes']:,} ({r['buffer_bytes']:,} + {r['stack_bytes']}) |")
    dsp = {r["weights_bits"]: r for r in result["rows"] if r["runtime"] == "generated_c_dsp"}
    a = result["anchors"]
    dsp2 = dsp[2]
    lines += ["", "Against TFLite-Micro on the same emulator (../shared/ANCHORS.md, person_detect int8):", "",
              f"- instructions: 2-bit DSP {dsp2['instructions']:,} vs TFLM reference kernels "
              f"{a['tflm_reference_instructions']:,} ({a['tflm_reference_instructions'] / dsp2['instructions']:.1f}x "
              f"fewer) and CMSIS-NN {a['tflm_cmsis_nn_instructions']:,} "
              f"({a['tflm_cmsis_nn_instructions'] / dsp2['instructions']:.2f}x fewer); our 8-bit DSP "
              f"{dsp[8]['instructions']:,}",
              f"- per MAC, CMSIS-NN: pointwise {a['tflm_cmsis_nn_per_mac']['pointwise']}, depthwise "
              f"{a['tflm_cmsis_nn_per_mac']['depthwise']}; ours (2-bit DSP): pointwise "
              f"{dsp2['by_kind']['pointwise']['instructions_per_mac']}, depthwise "
              f"{dsp2['by_kind']['depthwise']['instructions_per_mac']}",
              f"- RAM: {dsp2['ram_bytes']:,} B vs TFLM's int8 arena {a['tflm_arena_bytes']:,} B "
              f"({dsp2['ram_bytes'] / a['tflm_arena_bytes']:.2f}x; the arena excludes TFLM's stack)",
              f"- flash besides the model: {dsp2['flash_bytes']:,} B (kernels {dsp2['kernels_flash_bytes']:,}, generated "
              f"code {dsp2['model_code_flash_bytes']:,}, C library {dsp2['libc_flash_bytes']:,}) vs the TFLM runtime "
              f"{a['tflm_runtime_flash_bytes']['reference']:,} B (reference) / "
              f"{a['tflm_runtime_flash_bytes']['cmsis_nn']:,} B (CMSIS-NN)", "", "Goals:", ""]
    lines += [f"- {'met' if met else 'NOT met'}: {goal}: {value}" for goal, value, met in goals(result)]
    lines += ["", "Per layer, DSP path (instructions; per MAC in parentheses):", "",
              "| layer | MACs | " + " | ".join(f"{b}-bit" for b in sorted(dsp)) + " |",
              "|---|---|" + "---|" * len(dsp)]
    for i, row in enumerate(dsp[2]["layers"]):
        cells = []
        for b in sorted(dsp):
            r = dsp[b]["layers"][i]
            cells.append(f"{r['instructions']:,}" + (f" ({r['instructions_per_mac']})" if r["macs"] else ""))
        lines.append(f"| {row['layer']} | {row['macs']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""])


def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dsp = {r["weights_bits"]: r for r in result["rows"] if r["runtime"] == "generated_c_dsp"}
    names = [row["layer"] for row in dsp[2]["layers"] if row["macs"]]
    x = np.arange(len(names))
    width = 0.8 / len(dsp)
    figure, axis = plt.subplots(figsize=(13, 4.5))
    for i, bits in enumerate(sorted(dsp)):
        values = [row["instructions"] / 1e6 for row in dsp[bits]["layers"] if row["macs"]]
        axis.bar(x + (i - (len(dsp) - 1) / 2) * width, values, width, label=f"{bits}-bit (first layer 8-bit)"
                 if bits < 8 else "8-bit")
    axis.set_xticks(x, names, rotation=60)
    axis.set_ylabel("million instructions")
    axis.set_title("MobileNetV1-0.25 96x96x1, generated C, Cortex-M4 DSP path: instructions per layer")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()

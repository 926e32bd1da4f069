"""Instructions per MAC of the QGT kernels on the layers of MobileNetV1-0.25 96x96x1 (person detection),
on the emulated Cortex-M4 (qemu mps2-an386, exact executed-instruction counts: tflm_export.emulator).

Every conv / depthwise / fully connected layer of the network is one case of tflm_export.kernel_runner
with random codes at 2 bits and at 8 bits (the first layer at 8 bits in both), realistic scales and
biases; its output is checked against tflm_export.reference, and the instructions of its kernel call
(parameter expansion and requantization included) are counted, for the DSP path and the portable one.
Also the library's flash for 2- and 8-bit weights (text + rodata, arm-none-eabi-gcc -O2, section garbage
collection): per object, and what an image calling only the per-inference kernels links (a generated model
precomputes parsing and parameters). Writes benchmarks/results/kernel_instructions.{json,md}.
Usage: python benchmarks/kernel_instructions.py
"""

import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

import provenance

from qgt_keras.models import MOBILENET_V1_BLOCKS  # noqa: E402
from tflm_export import kernel_runner, pack, reference, requant, toolchain  # noqa: E402
from tflm_export.files import write_atomic  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
ALPHA, SIZE = 0.25, 96
KIND = {"conv": "CONV_2D", "depthwise": "DEPTHWISE_CONV_2D", "fully_connected": "FULLY_CONNECTED"}
WIDTHS = "QGT_WEIGHT_BITS_MASK=0x104"  # the person model's 2- and 8-bit layers
# What a generated model calls per inference; volatile pointers keep the calls (and their code) in the image.
RUNTIME_CALLS = r"""
#include "qgt_kernels.h"
static qgt_conv_params conv; static qgt_fc_params fc; static qgt_pool_params pool; static qgt_softmax_params soft;
static qgt_quant_params quant; static qgt_dims dims; static qgt_filter filter;
static int8_t data[64]; static uint32_t scratch[16];
int main(void) {
  void *volatile keep = data;
  int8_t *x = (int8_t *)keep;
  int status = qgt_conv2d(&conv, &quant, &dims, x, &filter, &dims, x, scratch, sizeof scratch);
  status += qgt_depthwise_conv2d(&conv, &quant, &dims, x, &filter, &dims, x, scratch, sizeof scratch);
  status += qgt_fully_connected(&fc, &quant, &dims, x, &filter, &dims, x, scratch, sizeof scratch);
  status += qgt_average_pool2d(&pool, &dims, x, &dims, x);
  return status + qgt_softmax(&soft, 1, 2, x, x);
}
"""


def layers():
    """(name, kind, input dims (n, h, w, c), filter shape, stride) of MobileNetV1-0.25 96x96x1."""
    found, size, channels = [("conv1", "conv", (1, SIZE, SIZE, 1), [8, 3, 3, 1], 2)], SIZE // 2, 8
    for i, (stride, filters) in enumerate(MOBILENET_V1_BLOCKS, start=1):
        found.append((f"dw{i}", "depthwise", (1, size, size, channels), [1, 3, 3, channels], stride))
        size = -(-size // stride)
        out = int(filters * ALPHA)
        found.append((f"pw{i}", "conv", (1, size, size, channels), [out, 1, 1, channels], 1))
        channels = out
    found.append(("dense", "fully_connected", (1, 1, 1, channels), [2, channels, 1, 1], 1))
    return found


def case(rng, name, kind, dims, shape, stride, bits):
    """A kernel_runner case of one layer with random codes of ``bits`` bits, and its MAC count."""
    if bits == 1:
        codes = rng.choice(np.array([-1, 1]), shape)
    else:
        codes = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), shape)
    taps = int(np.prod(shape[1:3])) * (1 if kind == "depthwise" else shape[3])
    if kind == "fully_connected":
        taps = shape[1]
    channels = shape[3] if kind == "depthwise" else shape[0]
    input_scale, output_scale = 6 / 255, 6 / 255  # ReLU6 outputs of a trained model: zero point -128, full range
    real = 60 / (math.sqrt(taps) * 74 * max(1.0, 2.0 ** (bits - 2)))  # outputs spread over the int8 range
    exponent, scale_codes = requant.scale_codes(real * output_scale / input_scale * 2.0 ** rng.uniform(-1, 1, channels))
    # uniform int8 inputs with zero point -128 add 127.5 * (sum of a channel's codes) on average: the bias takes it
    # off, as a trained layer's does, so outputs spread over the ReLU6 range instead of saturating
    code_sums = codes.reshape(-1, channels).sum(0) if kind == "depthwise" else codes.reshape(channels, -1).sum(1)
    bias = np.round(-127.5 * code_sums + rng.normal(0, 200, channels)).astype(np.int32)
    multiplier, shift = requant.layer_multipliers(input_scale, output_scale, scale_codes, exponent)
    options = {"activation": 3 if kind != "fully_connected" else 0, "padding": 0, "keep_num_dims": False,
               "stride_w": stride if kind != "fully_connected" else 0, "stride_h": stride if kind != "fully_connected" else 0,
               "dilation_w": 1 if kind != "fully_connected" else 0, "dilation_h": 1 if kind != "fully_connected" else 0,
               "depth_multiplier": 1 if kind == "depthwise" else 0, "filter_shape": list(shape)}
    layer = pack.PackedLayer(0, KIND[kind], bits, codes.astype(np.int8), multiplier, bias, shift, options)
    if kind == "fully_connected":
        layer.codes = layer.codes.reshape(shape[:2])
    option_bytes, blob = pack.encode_layer(layer, exponent, scale_codes)
    x = rng.integers(-128, 128, dims).astype(np.int8)
    expected = reference.run_layer(layer, x, -128, output_scale, -128)
    macs = int(np.prod(expected.shape)) * taps
    return kernel_runner.Case(kind, dims, x, input_scale, -128, output_scale, -128, options=option_bytes, blob=blob,
                              expected=expected, label=name), macs


def measure(bits, portable, folder):
    rng = np.random.default_rng(bits)
    built = [case(rng, name, kind, dims, shape, stride, 8 if name == "conv1" else bits)
             for name, kind, dims, shape, stride in layers()]
    cases = [c for c, _ in built]
    elf = kernel_runner.build_cortex_m4(folder, portable=portable)
    run, results = kernel_runner.run_cortex_m4(elf, cases, folder, timeout_s=600, count=True)
    wrong = kernel_runner.mismatches(cases, results)
    if wrong:
        raise SystemExit("kernel outputs differ from the reference: " + "; ".join(wrong))
    rows = []
    for (c, macs), instructions in zip(built, kernel_runner.kernel_instructions(run)):
        rows.append({"layer": c.label, "kind": c.kind, "macs": macs, "instructions": instructions,
                     "instructions_per_mac": round(instructions / macs, 3)})
    return rows


def _kind_of(row):
    if row["layer"] == "conv1":
        return "first conv (8-bit)"
    return {"conv": "pointwise", "depthwise": "depthwise", "fully_connected": "fully connected"}[row["kind"]]


def summary(rows):
    kinds = {}
    for row in rows:
        total = kinds.setdefault(_kind_of(row), [0, 0])
        total[0] += row["instructions"]
        total[1] += row["macs"]
    return {kind: {"instructions": i, "macs": m, "instructions_per_mac": round(i / m, 3)} for kind, (i, m) in kinds.items()}


def _text_and_rodata(sizes):
    return sum(v for k, v in sizes.items() if k.startswith((".text", ".rodata")))


def flash(folder):
    """Text + rodata bytes of each library object (2- and 8-bit build, -O2, one section per function) and of the
    kernels an image calling only the per-inference ones links (the difference to the same image calling none)."""
    objects = {}
    for source in toolchain.library_sources():
        obj = os.path.join(folder, os.path.basename(source)[:-2] + ".o")
        subprocess.run([toolchain.require(toolchain.ARM_CC), *toolchain.C_FLAGS, *toolchain.CORTEX_M4_FLAGS, "-O2",
                        "-ffunction-sections", "-fdata-sections", f"-D{WIDTHS}", "-c", source, "-o", obj], check=True)
        objects[os.path.basename(obj)] = _text_and_rodata(toolchain.section_sizes(obj))
    linked = {}
    for name, code in (("runtime", RUNTIME_CALLS), ("empty", "int main(void) { return 0; }\n")):
        source = os.path.join(folder, name + ".c")
        with open(source, "w") as f:
            f.write(code)
        elf = toolchain.build_cortex_m4([source], folder, name + ".elf", defines=[WIDTHS])
        linked[name] = _text_and_rodata(toolchain.section_sizes(elf))
    return {"objects": objects, "all_objects": sum(objects.values()),
            "runtime_kernels_linked": linked["runtime"] - linked["empty"]}


def main():
    run = provenance.Run()
    result = {"model": "MobileNetV1-0.25 96x96x1 layers, random codes", "runs": []}
    with tempfile.TemporaryDirectory() as folder:
        result["flash"] = flash(folder)
    for bits in (2, 8):
        for portable in (False, True):
            with tempfile.TemporaryDirectory() as folder:
                rows = measure(bits, portable, folder)
            total = sum(r["instructions"] for r in rows)
            macs = sum(r["macs"] for r in rows)
            result["runs"].append({"weights_bits": bits, "path": "portable" if portable else "dsp",
                                   "instructions": total, "macs": macs,
                                   "instructions_per_mac": round(total / macs, 3), "by_kind": summary(rows),
                                   "layers": rows})
            print(f"{bits}-bit {'portable' if portable else 'dsp'}: {total:,} instructions, {total / macs:.3f}/MAC",
                  file=sys.stderr)
    result["provenance"] = run.record()
    os.makedirs(RESULTS, exist_ok=True)
    write_atomic(os.path.join(RESULTS, "kernel_instructions.json"), json.dumps(result, indent=2) + "\n")
    write_atomic(os.path.join(RESULTS, "kernel_instructions.md"), markdown(result))
    print(markdown(result))


def markdown(result):
    prov = result["provenance"]
    lines = ["# QGT kernels on the emulated Cortex-M4: instructions per MAC, MobileNetV1-0.25 96x96x1 layers", "",
             "Produced by `python benchmarks/kernel_instructions.py`: exact executed instructions (qemu mps2-an386, "
             "TCG counting plugin) of each kernel call on random codes (first layer 8-bit), outputs checked against "
             "tflm_export.reference. Kernels only: no pooling, softmax or model glue.", "",
             f"Commit {prov['commit']}{' (with uncommitted changes)' if prov['uncommitted_changes'] else ''}, "
             f"{prov['machine']}, {prov['wall_s']} s.", "",
             "| weights | path | instructions | MACs | per MAC | pointwise | depthwise | first conv |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        k = r["by_kind"]
        lines.append(f"| {r['weights_bits']}-bit | {r['path']} | {r['instructions']:,} | {r['macs']:,} | "
                     f"{r['instructions_per_mac']} | {k['pointwise']['instructions_per_mac']} | "
                     f"{k['depthwise']['instructions_per_mac']} | {k['first conv (8-bit)']['instructions_per_mac']} |")
    fl = result["flash"]
    lines += ["", f"Flash, 2- and 8-bit build (`-D{WIDTHS}`, `-O2`, text + rodata): "
              f"{fl['runtime_kernels_linked']:,} B linked by an image that calls only the per-inference kernels "
              "(conv, depthwise, fully connected, average pool, softmax: what a generated model calls); "
              f"{fl['all_objects']:,} B for every object (parsing and parameter setup included, as TFLite-Micro glue "
              "links them).", "", "| object | bytes |", "|---|---|"]
    lines += [f"| {name} | {size:,} |" for name, size in sorted(fl["objects"].items())]
    lines += ["", "Per layer (DSP path):", "", "| layer | MACs | 2-bit instr | per MAC | 8-bit instr | per MAC |",
              "|---|---|---|---|---|---|"]
    dsp = {r["weights_bits"]: r for r in result["runs"] if r["path"] == "dsp"}
    for low, high in zip(dsp[2]["layers"], dsp[8]["layers"]):
        lines.append(f"| {low['layer']} | {low['macs']:,} | {low['instructions']:,} | {low['instructions_per_mac']} | "
                     f"{high['instructions']:,} | {high['instructions_per_mac']} |")
    return "\n".join(lines + [""])


if __name__ == "__main__":
    main()

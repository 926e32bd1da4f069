"""The generated C model's entry in the export report: verified on the host (portable path) against the
TFLite-Micro runtime, then built for the Cortex-M4 (DSP path) and run once on qemu mps2-an386 for its
footprint: RAM (the static buffer and other static data, plus the peak stack measured by painting) and
flash (kernel library, generated code, generated constants, the C library functions they call), and the
instructions of one inference. Where a compiler or qemu is missing the entry says so instead of failing.
"""

import os
import tempfile

import numpy as np

from tflm_export import emulator, model_runner, toolchain
from tflm_export.tflite_model import ExportError

NOT_MEASURED = "not measured (arm-none-eabi-gcc / qemu-system-arm not found)"
NOT_VERIFIED = "not verified (gcc not found)"


def _host_check(generated, inputs, expected, folder):
    try:
        program = model_runner.build_host(generated, folder)
    except toolchain.ToolchainMissing:
        return {"note": NOT_VERIFIED}
    results = model_runner.run_host(program, generated, inputs, folder)
    differs = np.any(results.outputs != expected, axis=1) | (np.asarray(results.statuses) != 0)
    return {"inputs": int(len(inputs)), "bit_exact": not bool(differs.any()), "mismatched_outputs": int(differs.sum())}


def cortex_m4_run(generated, inputs, folder):
    """Builds ``generated`` for the Cortex-M4 (DSP path) in ``folder`` and runs it on int8 ``inputs`` on qemu:
    {"statuses", "outputs" (inputs, output bytes), "instructions" (the first input's inference),
    "stack_bytes", "ram_bytes", "kernels_flash_bytes", "model_code_flash_bytes", "model_data_flash_bytes",
    "libc_flash_bytes", "firmware_flash_bytes"}. Raises toolchain.ToolchainMissing without the cross compiler
    or qemu, ExportError when the image fails to build or run."""
    try:
        elf = model_runner.build_cortex_m4(generated, folder)
        run = model_runner.run_cortex_m4(elf, generated, inputs)
    except (emulator.EmulatorError, toolchain.BuildError) as error:
        raise ExportError(f"the generated C model failed on the emulated Cortex-M4: {error}") from error
    footprint = model_runner.footprint(elf)
    stack = max(run.results.stack_bytes)
    return {"statuses": run.results.statuses, "outputs": run.results.outputs, "instructions": run.invoke_instructions,
            "stack_bytes": stack, "ram_bytes": footprint.static_ram + stack,
            "kernels_flash_bytes": footprint.kernel_flash, "model_code_flash_bytes": footprint.model_code_flash,
            "model_data_flash_bytes": footprint.model_data_flash, "libc_flash_bytes": footprint.libc_flash,
            "firmware_flash_bytes": footprint.firmware_flash}


def _cortex_m4_measurement(generated, inputs, expected, folder):
    try:
        run = cortex_m4_run(generated, inputs[:1], folder)
    except toolchain.ToolchainMissing:
        return {"note": NOT_MEASURED}
    outputs, statuses = run.pop("outputs"), run.pop("statuses")
    return {"bit_exact": statuses == [0] and bool(np.array_equal(outputs[0], expected[0])), **run}


def report_entry(generated, inputs, expected, files):
    """The report entry of ``generated`` (a codegen.GeneratedModel) for int8 ``inputs`` whose outputs in the
    TFLite-Micro runtime are ``expected``; ``files`` are its paths in the export folder."""
    expected = np.asarray(expected, np.int8).reshape(len(inputs), -1)
    with tempfile.TemporaryDirectory() as folder:
        host = _host_check(generated, inputs, expected, os.path.join(folder, "host"))
        cortex_m4 = _cortex_m4_measurement(generated, inputs, expected, os.path.join(folder, "cortex_m4"))
    return {"files": list(files), "prefix": generated.prefix, "buffer_bytes": generated.buffer_bytes,
            "largest_activation_bytes": generated.largest_activation_bytes, "host": host, "cortex_m4": cortex_m4}


def passed(entry):
    """False when a run disagreed with TFLite-Micro (a note instead of a run passes)."""
    return all(part.get("bit_exact", True) for part in (entry.get("host", {}), entry.get("cortex_m4", {})))


def markdown_lines(entry):
    """The report's lines about the generated C model."""
    if "note" in entry:
        return [f"- {entry['note']}"]
    lines = [f"- `{'`, `'.join(entry['files'])}` (`{entry['prefix']}_invoke`): one static buffer of "
             f"{entry['buffer_bytes']:,} B for every activation and scratch (largest activation "
             f"{entry['largest_activation_bytes']:,} B)"]
    host, m4 = entry["host"], entry["cortex_m4"]
    lines.append(f"- host build (portable C) vs the int8 model in TFLite-Micro: {host['note']}" if "note" in host else
                 f"- host build (portable C) vs the int8 model in TFLite-Micro: "
                 f"{'bit-exact' if host['bit_exact'] else 'differs'} on {host['inputs']} inputs "
                 f"({host['mismatched_outputs']} differ)")
    if "note" in m4:
        lines.append(f"- Cortex-M4 (DSP path, qemu mps2-an386): {m4['note']}")
    else:
        lines += [f"- Cortex-M4 (DSP path, qemu mps2-an386): {'bit-exact' if m4['bit_exact'] else 'DIFFERS'} on one "
                  f"input, {m4['instructions']:,} instructions per inference",
                  f"- RAM {m4['ram_bytes']:,} B: buffer and static data {m4['ram_bytes'] - m4['stack_bytes']:,} B + peak "
                  f"stack {m4['stack_bytes']:,} B (painted)",
                  f"- flash: kernels {m4['kernels_flash_bytes']:,} B + generated code {m4['model_code_flash_bytes']:,} B "
                  f"+ C library {m4['libc_flash_bytes']:,} B = {m4['firmware_flash_bytes']:,} B besides the model's "
                  f"constants ({m4['model_data_flash_bytes']:,} B: blobs, filters, multiplier tables, params)"]
    return lines

"""Runs bare-metal Cortex-M4F images (:mod:`tflm_export.toolchain`) on qemu's ``mps2-an386`` and counts
their executed instructions exactly.

Counting uses a TCG plugin of our own (``tflm_export/cortex_m4/insn_count_plugin.c``): an inline counter
before every guest instruction, per instruction address, so the total is exact (as qemu's
``-d exec,nochain -singlestep`` trace or unicorn would count: instructions, not cycles; a conditional
instruction that is skipped counts). The per-address counts give a per-function breakdown from the ELF's
symbols, and a marker function gives per-region counts: the plugin records the running total each time
the marker's first instruction executes.
"""

import bisect
import dataclasses
import os
import shutil
import subprocess

from tflm_export import termination, toolchain

QEMU = "qemu-system-arm"
MACHINE = "mps2-an386"
_PLUGIN_SOURCE = os.path.join(toolchain.CORTEX_M4_DIR, "insn_count_plugin.c")


@dataclasses.dataclass
class Run:
    """A finished emulation: qemu's exit status (main's result), console output, instruction counts."""
    exit_code: int
    output: str
    instructions: "InstructionCount" = None


@dataclasses.dataclass
class InstructionCount:
    total: int
    by_function: dict  # function name -> instructions executed in it
    marks: list  # running total at each execution of the marker function


class EmulatorError(RuntimeError):
    """qemu failed, timed out or the image faulted; the message holds its output."""


def require_qemu():
    path = shutil.which(QEMU)
    if path is None:
        raise toolchain.ToolchainMissing(f"{QEMU} not found (apt-get install qemu-system-arm)")
    return path


def run(elf, cwd, timeout_s=120, count=False, mark=None, plugin_dir=None):
    """Runs ``elf`` with semihosting, working directory ``cwd`` (where its host files are); returns a
    :class:`Run`. ``count`` counts instructions (the plugin is built into ``plugin_dir``, default ``cwd``);
    ``mark`` names a function whose executions delimit regions."""
    command = [require_qemu(), "-M", MACHINE, "-nographic", "-monitor", "none", "-serial", "none",
               "-semihosting-config", "enable=on,target=native", "-kernel", os.path.abspath(elf)]
    counts_path = os.path.join(os.path.abspath(cwd), "instruction_counts.txt")
    symbols = None
    if count:
        plugin = toolchain.build_qemu_plugin(_PLUGIN_SOURCE, plugin_dir or cwd, "insn_count_plugin.so")
        symbols = toolchain.function_symbols(elf)
        arguments = [f"out={counts_path}"]
        if mark is not None:
            addresses = [start for start, _, name in symbols if name == mark]
            if not addresses:
                raise EmulatorError(f"marker function {mark!r} not found in {elf}")
            arguments.append(f"mark={addresses[0]:x}")
        command += ["-plugin", ",".join([plugin, *arguments])]
    try:
        done = termination.run(command, cwd=cwd, timeout=timeout_s)
    except subprocess.TimeoutExpired as error:
        raise EmulatorError(f"qemu timed out after {timeout_s} s running {elf}") from error
    output = done.stdout + done.stderr
    if "processor fault" in output:
        raise EmulatorError(f"{elf} faulted: {output[-2000:]}")
    result = Run(done.returncode, output)
    if count:
        result.instructions = _read_counts(counts_path, symbols)
    return result


def _read_counts(path, symbols):
    if not os.path.exists(path):
        raise EmulatorError(f"the instruction counter wrote no {path}")
    total, marks, by_function = 0, [], {}
    starts = [start for start, _, _ in symbols]
    with open(path) as f:
        for line in f:
            kind, *values = line.split()
            if kind == "total":
                total = int(values[0])
            elif kind == "mark":
                marks.append(int(values[0]))
            elif kind == "pc":
                count = int(values[1])
                name = "(outside code)"
                if values[0] != "other":
                    address = int(values[0], 16)
                    i = bisect.bisect_right(starts, address) - 1
                    if i >= 0 and address < symbols[i][0] + max(symbols[i][1], 2):
                        name = symbols[i][2]
                    else:
                        name = "(no symbol)"
                by_function[name] = by_function.get(name, 0) + count
    return InstructionCount(total, by_function, marks)

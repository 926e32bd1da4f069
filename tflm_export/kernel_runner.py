"""Kernel cases run through the C library by one program (``tflm_export/kernel_runner.c``), the way its
adapters call it (parse, params, quant, scratch size, kernel): on the host, built with the sanitizers, or
on the emulated Cortex-M4, with instruction counts per kernel call (the runner calls ``qgt_runner_mark``
right before and after each kernel). A :class:`Case` carries its input and the expected status and output;
:func:`encode` writes the case file the runner reads, :func:`decode` reads its results (the format is in
the runner's header comment), :func:`mismatches` compares.
"""

import dataclasses
import os
import struct

import numpy as np

from tflm_export import emulator, kernel_abi, requant, termination, toolchain

RUNNER_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernel_runner.c")
MARK = "qgt_runner_mark"
KINDS = ("conv", "depthwise", "fully_connected", "average_pool", "softmax", "argmax")
_HEADER_FIELDS = 24  # kind, dims (4), scales and zero points (4), extra (6), override (4), layout, scratch
# delta, options / blob / input lengths
ANY_ERROR = "any error"


STATUS = kernel_abi.status_codes()


@dataclasses.dataclass
class Case:
    kind: str
    dims: tuple  # input n, h, w, c (fully connected: rows, 1, 1, in)
    input: np.ndarray  # int8
    input_scale: float = 1.0
    input_zp: int = 0
    output_scale: float = 1.0
    output_zp: int = 0
    extra: tuple = (0, 0, 0, 0, 0, 0)
    override: tuple = (0, 0, 0, 0)
    layout: int = 0
    scratch_delta: int = 0
    options: bytes = b""
    blob: bytes = b""
    expected: np.ndarray = None  # expected output, or None with a non-OK expected status
    expected_status: object = "QGT_OK"  # a status name or ANY_ERROR
    label: str = ""

    def header(self):
        fields = [KINDS.index(self.kind), *self.dims, requant.float32_bits(self.input_scale), self.input_zp,
                  requant.float32_bits(self.output_scale), self.output_zp, *self.extra, *self.override, self.layout,
                  self.scratch_delta, len(self.options), len(self.blob), self.input.size]
        assert len(fields) == _HEADER_FIELDS
        return struct.pack(f"<{len(fields)}I", *[f & 0xFFFFFFFF for f in fields])


def _padded(data):
    data = bytes(data)
    return data + b"\x00" * (-len(data) % 4)


def encode(cases):
    return b"QGTC" + struct.pack("<I", len(cases)) + b"".join(
        c.header() + _padded(c.options) + _padded(c.blob) + _padded(c.input.astype(np.int8).tobytes()) for c in cases)


def decode(data, count):
    """[(status, output bytes)] of a results file."""
    results, at = [], 0
    for _ in range(count):
        status, length = struct.unpack_from("<ii", data, at)
        at += 8
        results.append((status, data[at:at + length]))
        at += length + (-length % 4)
    return results


def mismatches(cases, results):
    """Descriptions of the cases whose status or output differs from what is expected."""
    wrong = []
    if len(results) != len(cases):
        return [f"{len(results)} results for {len(cases)} cases"]
    for i, (case, (status, output)) in enumerate(zip(cases, results)):
        name = {v: k for k, v in STATUS.items()}.get(status, str(status))
        if case.expected_status == ANY_ERROR:
            ok = status != STATUS["QGT_OK"]
        else:
            ok = status == STATUS[case.expected_status]
        if ok and case.expected is not None:
            dtype = np.int32 if case.kind == "argmax" else np.int8
            ok = np.array_equal(np.frombuffer(output, dtype), case.expected.reshape(-1).astype(dtype))
        if not ok:
            wrong.append(f"case {i} ({case.kind} {case.label}): status {name}, expected {case.expected_status}")
    return wrong


def build_host(out_dir, sanitize=True):
    """The runner for the host (portable path), with AddressSanitizer and UBSan by default."""
    return toolchain.build_host_program([RUNNER_SOURCE], out_dir, "kernel_runner_sanitized" if sanitize
                                        else "kernel_runner", sanitize=sanitize)


def build_cortex_m4(out_dir, portable=False, optimize="-O2"):
    """The runner as a Cortex-M4F image (DSP path, or the portable one), reading its files by semihosting."""
    return toolchain.build_cortex_m4([RUNNER_SOURCE], out_dir, "kernel_runner_portable.elf" if portable
                                     else "kernel_runner.elf", portable=portable, optimize=optimize,
                                     defines=["QGT_RUNNER_SEMIHOST"])


def run_host(program, cases, folder):
    """(exit code, stderr, results) of the host runner on ``cases`` (files in ``folder``)."""
    cases_path, results_path = os.path.join(folder, "cases.bin"), os.path.join(folder, "results.bin")
    with open(cases_path, "wb") as f:
        f.write(encode(cases))
    done = termination.run([program, cases_path, results_path], timeout=600)
    with open(results_path, "rb") as f:
        return done.returncode, done.stderr, decode(f.read(), len(cases))


def run_cortex_m4(elf, cases, folder, timeout_s=300, count=False):
    """(emulator.Run, results) of the Cortex-M4 runner on ``cases`` (files in ``folder``); with ``count``,
    ``kernel_instructions`` of the run gives each case's kernel call."""
    with open(os.path.join(folder, "cases.bin"), "wb") as f:
        f.write(encode(cases))
    run = emulator.run(elf, folder, timeout_s=timeout_s, count=count, mark=MARK if count else None)
    with open(os.path.join(folder, "results.bin"), "rb") as f:
        return run, decode(f.read(), len(cases))


def kernel_instructions(run):
    """Instructions of each kernel call of a counted run, in case order (cases refused before their kernel
    call have none)."""
    marks = run.instructions.marks
    return [after - before for before, after in zip(marks[0::2], marks[1::2])]



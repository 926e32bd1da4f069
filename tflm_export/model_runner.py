"""Builds a generated C model (:mod:`tflm_export.codegen`) with the kernel library and runs it through one
program (``tflm_export/model_runner.c``): on the host (portable path, optionally with the sanitizers) and on
the emulated Cortex-M4 (qemu mps2-an386, DSP or portable path) with exact instruction counts per op
(:mod:`tflm_export.emulator`), the peak stack of invoke by stack painting, and flash and RAM per part of the
image (kernel library, generated model, C library, the runner itself) from the link map.
"""

import dataclasses
import os
import re
import struct

import numpy as np

from tflm_export import emulator, termination, toolchain

RUNNER_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_runner.c")
HOOK = "qgt_runner_layer"  # the model's layer hook and the instruction counter's region marker
MAP_FILE = "firmware.map"
_MAX_OUTPUT_BYTES = 4096  # model_runner.c's output array


@dataclasses.dataclass
class Results:
    statuses: list  # per input: the qgt_status invoke returned
    outputs: np.ndarray  # (inputs, output bytes) int8
    stack_bytes: list  # per input: peak stack of invoke (Cortex-M4; 0 on the host)


@dataclasses.dataclass
class Footprint:
    """Bytes of a Cortex-M4 image by part ("kernels", "model", "libc", "runner") and kind ("text",
    "rodata", "data", "bss")."""
    parts: dict

    def bytes(self, part, *kinds):
        return sum(self.parts.get(part, {}).get(kind, 0) for kind in kinds)

    @property
    def kernel_flash(self):
        return self.bytes("kernels", "text", "rodata", "data")

    @property
    def model_code_flash(self):
        """The generated invoke and its helpers."""
        return self.bytes("model", "text")

    @property
    def model_data_flash(self):
        """The generated constants: blobs, filters, multiplier tables, params, dims, the pixel table."""
        return self.bytes("model", "rodata", "data")

    @property
    def libc_flash(self):
        """memcpy / memmove / memset and the like, which the kernels and the model call."""
        return self.bytes("libc", "text", "rodata", "data")

    @property
    def firmware_flash(self):
        """Everything but the model's constants and the runner: kernels, generated code, C library."""
        return self.kernel_flash + self.model_code_flash + self.libc_flash

    @property
    def static_ram(self):
        """data + bss of the kernels, the model (its buffer) and the C library."""
        return sum(self.bytes(part, "data", "bss") for part in ("kernels", "model", "libc"))


def write_sources(generated, folder):
    """qgt_model.h / qgt_model.c of ``generated`` in ``folder``; returns the .c path."""
    os.makedirs(folder, exist_ok=True)
    for name, text in generated.files().items():
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)
    return os.path.join(folder, "qgt_model.c")


def _defines(generated, layer_hook):
    """The runner's model (with the layer hook, or as firmware builds it); the kernel library built for the
    model's weight widths only."""
    return [f"QGT_RUNNER_MODEL={generated.prefix}", f"QGT_WEIGHT_BITS_MASK=0x{generated.weight_bits_mask:x}",
            *([f"QGT_MODEL_LAYER_HOOK={HOOK}"] if layer_hook else [])]


def build_host(generated, folder, sanitize=False):
    """The runner with the model for the host (portable path); returns the program's path."""
    source = write_sources(generated, folder)
    return toolchain.build_host_program([RUNNER_SOURCE, source], folder, "model_runner_sanitized" if sanitize else
                                        "model_runner", sanitize=sanitize, include_dirs=[folder],
                                        defines=_defines(generated, layer_hook=False))


def build_cortex_m4(generated, folder, portable=False, layer_hook=False):
    """The runner with the model as a Cortex-M4F image (DSP path, or the portable one) with a link map, in a
    folder of its own; ``layer_hook`` marks the end of each op for per-op instruction counts (it costs a few
    instructions and bytes per op; without it the model is built as firmware builds it). Returns the ELF."""
    source = write_sources(generated, folder)
    name = "model_runner_portable.elf" if portable else "model_runner.elf"
    return toolchain.build_cortex_m4([RUNNER_SOURCE, source], folder, name, portable=portable, include_dirs=[folder],
                                     defines=[*_defines(generated, layer_hook), "QGT_RUNNER_SEMIHOST"],
                                     extra_flags=["-save-temps=obj", f"-Wl,-Map={os.path.join(folder, MAP_FILE)}",
                                                  "-Wl,--cref"])


def _encode(generated, inputs):
    inputs = np.asarray(inputs, np.int8).reshape(len(inputs), -1)
    if inputs.shape[1] != generated.input.bytes:
        raise ValueError(f"inputs of {inputs.shape[1]} bytes; the model takes {generated.input.bytes}")
    if generated.output.bytes > _MAX_OUTPUT_BYTES:
        raise ValueError(f"the runner writes at most {_MAX_OUTPUT_BYTES} output bytes; the model has "
                         f"{generated.output.bytes}")
    pad = b"\x00" * (-inputs.shape[1] % 4)
    return b"QGTI" + struct.pack("<3I", len(inputs), inputs.shape[1], generated.output.bytes) + b"".join(
        row.tobytes() + pad for row in inputs)


def _decode(data, count, output_bytes):
    statuses, stacks, outputs, at = [], [], [], 0
    for _ in range(count):
        status, stack = struct.unpack_from("<iI", data, at)
        at += 8
        outputs.append(np.frombuffer(data[at:at + output_bytes], np.int8))
        at += output_bytes + (-output_bytes % 4)
        statuses.append(status)
        stacks.append(stack)
    if len(outputs) != count or any(len(o) != output_bytes for o in outputs):
        raise RuntimeError(f"the model runner wrote results for fewer than {count} inputs")
    return Results(statuses, np.stack(outputs), stacks)


def run_host(program, generated, inputs, folder):
    """:class:`Results` of the host runner on ``inputs`` (files in ``folder``)."""
    inputs_path, results_path = os.path.join(folder, "inputs.bin"), os.path.join(folder, "results.bin")
    with open(inputs_path, "wb") as f:
        f.write(_encode(generated, inputs))
    done = termination.run([program, inputs_path, results_path], timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{program} exited with {done.returncode}: {done.stderr[-2000:]}")
    with open(results_path, "rb") as f:
        return _decode(f.read(), len(inputs), generated.output.bytes)


@dataclasses.dataclass
class CortexM4Run:
    results: Results
    op_instructions: list  # per op of the first input (layer-hook builds): from the previous hook to its own
    invoke_instructions: int  # the first input's whole invoke
    by_function: dict  # instructions per function, all inputs and the runner together


def run_cortex_m4(elf, generated, inputs, count=True, per_op=False, timeout_s=600):
    """:class:`CortexM4Run` of the Cortex-M4 runner on ``inputs`` (files in the ELF's folder); without
    ``count`` the instruction fields are None; ``per_op`` (an image built with ``layer_hook``) fills
    ``op_instructions``."""
    folder = os.path.dirname(elf)
    with open(os.path.join(folder, "inputs.bin"), "wb") as f:
        f.write(_encode(generated, inputs))
    run = emulator.run(elf, folder, timeout_s=timeout_s, count=count, mark=HOOK if count else None)
    if run.exit_code != 0:
        raise emulator.EmulatorError(f"{elf} exited with {run.exit_code}: {run.output[-2000:]}")
    with open(os.path.join(folder, "results.bin"), "rb") as f:
        results = _decode(f.read(), len(inputs), generated.output.bytes)
    if not count:
        return CortexM4Run(results, None, None, None)
    wanted = len(generated.layers) + 2 if per_op else 2  # before invoke, [after each op,] after invoke
    marks = run.instructions.marks[:wanted]
    if len(marks) != wanted:
        raise emulator.EmulatorError(f"{len(marks)} marks where the first invoke makes {wanted}")
    steps = None
    if per_op:
        steps = [b - a for a, b in zip(marks, marks[1:])]
        tail = steps.pop()  # the output copy and return belong to the last op
        steps[-1] += tail
    return CortexM4Run(results, steps, marks[-1] - marks[0], run.instructions.by_function)


_INPUT_SECTION = re.compile(r"^ (\.\S+|COMMON)\s*(?:(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(\S.*))?$")
_SECTION_VALUES = re.compile(r"^\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(\S.*)$")
_KINDS = ((".text", "text"), (".rodata", "rodata"), (".data", "data"), (".bss", "bss"), ("COMMON", "bss"))


def _part(object_path, library_members=frozenset()):
    """Which part of the image an object file of the link map belongs to; an archive member (libc_nano.a(
    lib_a-memcpy.o), libgcc.a(...)) is "libc" when it is in ``library_members`` (needed by the kernels or
    the model), else the runner's."""
    name = os.path.basename(object_path)
    if "(" in object_path:
        return "libc" if object_path in library_members else "runner"
    source = name.split("-", 1)[-1][:-2] if name.endswith(".o") else name  # -save-temps: <elf>-<source>.o
    if source + ".c" in {os.path.basename(s) for s in toolchain.library_sources()}:
        return "kernels"
    return "model" if source == "qgt_model" else "runner"


def footprint(elf):
    """The :class:`Footprint` of an image built by :func:`build_cortex_m4`, from its link map."""
    with open(os.path.join(os.path.dirname(elf), MAP_FILE)) as f:
        text = f.read()
    start, cref = text.index("Linker script and memory map"), text.find("Cross Reference Table")
    members = _library_members(text[cref:]) if cref >= 0 else frozenset()
    memory_map = text[start:cref if cref > start else len(text)]
    parts, pending = {}, None
    for line in memory_map.splitlines():
        if pending is not None:
            values = _SECTION_VALUES.match(line)
            if values:
                _add(parts, pending, int(values.group(2), 16), values.group(3), members)
            pending = None
            continue
        match = _INPUT_SECTION.match(line)
        if not match:
            continue
        if match.group(2) is None:
            pending = match.group(1)  # a long section name: address, size and file on the next line
        else:
            _add(parts, match.group(1), int(match.group(3), 16), match.group(4), members)
    return Footprint(parts)


def _library_members(cross_reference):
    """The archive members of the link map's cross reference table that the kernels or the model need,
    directly or through other such members."""
    referrers, symbol_file = {}, None
    for line in cross_reference.splitlines()[3:]:
        fields = line.split()
        if not fields:
            continue
        if not line[0].isspace():  # "symbol    defining file"
            symbol_file = fields[-1] if len(fields) >= 2 else None
        elif symbol_file is not None:
            referrers.setdefault(symbol_file, set()).add(fields[-1])
    needed = set()
    while True:
        more = {member for member, users in referrers.items() if "(" in member and member not in needed and any(
            user in needed or ("(" not in user and _part(user) in ("kernels", "model")) for user in users)}
        if not more:
            return frozenset(needed)
        needed |= more


def _add(parts, section, size, object_path, members):
    for prefix, kind in _KINDS:
        if section.startswith(prefix) and size and object_path.strip().endswith((".o", ".o)")):
            part = parts.setdefault(_part(object_path.strip(), members), {})
            part[kind] = part.get(kind, 0) + size
            return

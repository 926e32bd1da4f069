"""The person_detection sketch's path (``tflm_export/sketch_runner.c``: frame -> qgt_camera_to_input ->
generated model -> qgt_person_update) built with a generated C model folder (``qgt_model.h`` /
``qgt_model.c`` of tflm_export.codegen, C prefix given) for the host, with the sanitizers, or for the emulated Cortex-M4 with instruction counts of
the preprocessing and of the invoke of each frame.
"""

import dataclasses
import os
import struct

import numpy as np

from tflm_export import camera, emulator, termination, toolchain

RUNNER_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sketch_runner.c")
MARK = "qgt_runner_mark"
FORMAT_CODES = {"gray8": 0, "rgb565": 1}


@dataclasses.dataclass
class Results:
    statuses: list  # per frame: the first qgt_status that was not QGT_OK, else 0
    scores: list  # person score in thousandths (-1 where a call failed)
    present: list  # the decision after each frame
    inputs: np.ndarray  # (frames, input bytes) int8: what the preprocessing wrote
    outputs: np.ndarray  # (frames, output bytes) int8
    instructions: list = None  # Cortex-M4 with count: per frame (preprocessing, invoke)


def _sources(model_dir):
    return [RUNNER_SOURCE, os.path.join(os.path.abspath(model_dir), "qgt_model.c")]


def _model_defines(prefix):
    return [f"QGT_RUNNER_MODEL={prefix}", f"QGT_RUNNER_MACRO={prefix.upper()}"]


def build_host(model_dir, prefix, out_dir, sanitize=True):
    """The runner for the host (portable kernels) with the generated model in ``model_dir`` (C prefix
    ``prefix``), with AddressSanitizer and UBSan by default."""
    return toolchain.build_host_program(_sources(model_dir), out_dir, "sketch_runner", sanitize=sanitize,
                                        include_dirs=[os.path.abspath(model_dir)],
                                        defines=_model_defines(prefix))


def build_cortex_m4(model_dir, prefix, out_dir):
    """The runner as a Cortex-M4F image (DSP kernels), reading its files by semihosting."""
    return toolchain.build_cortex_m4(_sources(model_dir), out_dir, "sketch_runner.elf",
                                     include_dirs=[os.path.abspath(model_dir)],
                                     defines=["QGT_RUNNER_SEMIHOST", *_model_defines(prefix)])


def _padded(data):
    return data + b"\x00" * (-len(data) % 4)


def encode(frames, width, height, fmt, on_permille, off_permille):
    header = struct.pack("<4s6I", b"QGTF", len(frames), width, height, FORMAT_CODES[fmt], on_permille, off_permille)
    expected = width * height * (2 if fmt == "rgb565" else 1)
    for frame in frames:
        if len(frame) != expected:
            raise camera.CameraError(f"{fmt} frame of {width}x{height} needs {expected} bytes, got {len(frame)}")
    return header + b"".join(_padded(bytes(f)) for f in frames)


def decode(data, count, input_bytes, output_bytes):
    statuses, scores, present, inputs, outputs, at = [], [], [], [], [], 0
    for _ in range(count):
        status, score, on = struct.unpack_from("<3i", data, at)
        at += 12
        inputs.append(np.frombuffer(data, np.int8, input_bytes, at))
        at += input_bytes + (-input_bytes % 4)
        outputs.append(np.frombuffer(data, np.int8, output_bytes, at))
        at += output_bytes + (-output_bytes % 4)
        statuses.append(status)
        scores.append(score)
        present.append(bool(on))
    return Results(statuses, scores, present, np.stack(inputs), np.stack(outputs))


def run_host(program, folder, frames, width, height, fmt, input_bytes, output_bytes, on_permille, off_permille):
    """:class:`Results` of the host runner on ``frames`` (files in ``folder``)."""
    frames_path, results_path = os.path.join(folder, "frames.bin"), os.path.join(folder, "results.bin")
    with open(frames_path, "wb") as f:
        f.write(encode(frames, width, height, fmt, on_permille, off_permille))
    done = termination.run([program, frames_path, results_path], timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{program} exited with {done.returncode}: {done.stderr[-2000:]}")
    with open(results_path, "rb") as f:
        return decode(f.read(), len(frames), input_bytes, output_bytes)


def run_cortex_m4(elf, folder, frames, width, height, fmt, input_bytes, output_bytes, on_permille, off_permille,
                  timeout_s=600):
    """:class:`Results` of the Cortex-M4 runner with ``instructions`` per frame (preprocessing, invoke)."""
    with open(os.path.join(folder, "frames.bin"), "wb") as f:
        f.write(encode(frames, width, height, fmt, on_permille, off_permille))
    run = emulator.run(elf, folder, timeout_s=timeout_s, count=True, mark=MARK)
    if run.exit_code != 0:
        raise RuntimeError(f"{elf} exited with {run.exit_code}: {run.output[-2000:]}")
    with open(os.path.join(folder, "results.bin"), "rb") as f:
        results = decode(f.read(), len(frames), input_bytes, output_bytes)
    marks = run.instructions.marks
    spans = [after - before for before, after in zip(marks[0::2], marks[1::2])]
    results.instructions = [tuple(spans[2 * i:2 * i + 2]) for i in range(len(frames))]
    return results

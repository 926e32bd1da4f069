"""Runs a model in the TFLite-Micro Python runtime, in a process of its own (``python -m``).

The runtime aborts the whole process on some bad models (e.g. degenerate activation ranges of an
uncalibrated net) without a Python exception; running it in a child lets the caller report that instead of
dying. Kept free of TensorFlow imports so the child starts quickly.

Usage: python -m tflm_export.tflm_runner MODEL.tflite INPUTS.npy OUTPUTS.npz [TENSOR,TENSOR,...]
Writes ``outputs`` (one row per input), ``arena_bytes`` (the recording allocator's total) and, for each
listed tensor index i of subgraph 0, ``tensor_i`` (its values after each input).
"""

import os
import re
import sys
import tempfile

import numpy as np
from tflite_micro.python.tflite_micro import runtime

_ARENA_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")
# The runtime's default arena (10x the model) is too small for a small model with large activations (a
# 96x96x3 input); the arena total reported is what the model uses, whatever the arena offered.
_MIN_ARENA_BYTES = 8 << 20


def _arena_bytes(interpreter):
    """The recording allocator's arena total, which the runtime only prints to file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            interpreter.print_allocations()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        match = _ARENA_TOTAL.search(capture.read().decode("utf-8", "replace"))
    return int(match.group(1)) if match else -1


def run(model_path, inputs_path, outputs_path, tensor_list=""):
    with open(model_path, "rb") as f:
        model = f.read()
    inputs = np.load(inputs_path)
    tensors = [int(t) for t in tensor_list.split(",") if t]
    # Preserving every tensor changes the arena, so the arena is measured by a plain interpreter.
    arena = max(10 * len(model), _MIN_ARENA_BYTES)
    interpreter = runtime.Interpreter.from_bytes(model, arena_size=arena)
    watcher = (runtime.Interpreter.from_bytes(model, arena_size=arena,
                                              intrepreter_config=runtime.InterpreterConfig.kPreserveAllTensors)
               if tensors else None)
    outputs, seen = [], {t: [] for t in tensors}
    for sample in inputs:
        interpreter.set_input(sample[None], 0)
        interpreter.invoke()
        outputs.append(np.array(interpreter.get_output(0))[0])
        if watcher is not None:
            watcher.set_input(sample[None], 0)
            watcher.invoke()
            for t in tensors:
                seen[t].append(np.array(watcher.GetTensor(t, 0)["tensor_data"]))
    np.savez(outputs_path, outputs=np.stack(outputs), arena_bytes=_arena_bytes(interpreter),
             **{f"tensor_{t}": np.stack(values) for t, values in seen.items()})


if __name__ == "__main__":
    run(*sys.argv[1:5])

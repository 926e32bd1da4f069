"""Bit-exactness between TFLite and TFLite-Micro, the TFLM arena size, and where a model's bytes go."""

import os
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf

from tflm_export import convert, pack, tflite_model
from tflm_export.tflite_model import ExportError

DECODE_OP = "TFLM_DECODE"
_QUANT_BYTES = {"scale": 4, "zeroPoint": 8}  # float32 scales, int64 zero points
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_inputs(model_bytes, count, seed=0):
    """``count`` uniformly random int8 inputs shaped like the model's input (batch axis first)."""
    details = tflite_model.io_details(tflite_model.read(model_bytes))["inputs"][0]
    if details["dtype"] != "int8":
        raise ExportError(f"model input is {details['dtype']}, expected int8")
    rng = np.random.default_rng(seed)
    return rng.integers(-128, 128, size=[count] + details["shape"][1:], dtype=np.int8)


def quantize_inputs(model_bytes, samples):
    """Float samples (N, ...) quantized with the model's input scale and zero point to int8."""
    details = tflite_model.io_details(tflite_model.read(model_bytes))["inputs"][0]
    q = np.round(np.asarray(samples, np.float64) / details["scale"]) + details["zero_point"]
    return np.clip(q, -128, 127).astype(np.int8)


def run_tflite(model_bytes, inputs):
    """Outputs of tf.lite.Interpreter with its reference kernels for each input, stacked.

    Reference kernels, because TFLite-Micro implements those: TFLite's optimized int8 kernels differed by
    one step on 2-bit person_detect (large multipliers, left shifts), the reference ones matched.
    """
    interpreter = tf.lite.Interpreter(
        model_content=bytes(model_bytes),
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_REF)
    interpreter.allocate_tensors()
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    outputs = []
    for sample in inputs:
        interpreter.set_tensor(input_index, sample[None])
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(output_index)[0].copy())
    return np.stack(outputs)


def run_tflm(model_bytes, inputs, timeout_s=600):
    """(outputs, arena bytes) from the TFLite-Micro Python runtime, run in a child process.

    Raises ExportError when the runtime fails or aborts (it kills its process on, e.g., a model whose
    activation ranges were calibrated on no real data).
    """
    with tempfile.TemporaryDirectory() as folder:
        model_path, inputs_path, outputs_path = (os.path.join(folder, n) for n in
                                                 ("model.tflite", "inputs.npy", "outputs.npz"))
        with open(model_path, "wb") as f:
            f.write(bytes(model_bytes))
        np.save(inputs_path, np.asarray(inputs))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")])))
        done = subprocess.run([sys.executable, "-m", "tflm_export.tflm_runner", model_path, inputs_path, outputs_path],
                              capture_output=True, text=True, env=env, timeout=timeout_s)
        if done.returncode != 0 or not os.path.exists(outputs_path):
            raise ExportError(f"TFLite-Micro runtime failed (exit code {done.returncode}; a negative code is a "
                              f"crash, e.g. degenerate activation ranges from calibration on no real data): "
                              f"{done.stderr.strip()[-600:]}")
        result = np.load(outputs_path)
        return result["outputs"], int(result["arena_bytes"])


def compare(model_bytes, inputs, reference_bytes=None):
    """Runs ``model_bytes`` in TFLite-Micro and ``reference_bytes`` (default: the same model) in TFLite.

    Returns {"inputs", "bit_exact", "mismatched_outputs", "max_abs_diff", "arena_bytes"}. A LUT model is
    compared against its uncompressed int8 model passed as ``reference_bytes`` (TFLite has no DECODE op).
    """
    expected = run_tflite(reference_bytes if reference_bytes is not None else model_bytes, inputs).astype(np.int32)
    actual, arena = run_tflm(model_bytes, inputs)
    actual = actual.astype(np.int32).reshape(expected.shape)
    differs = np.any((expected != actual).reshape(len(expected), -1), axis=1)
    return {"inputs": int(len(expected)), "bit_exact": not bool(differs.any()),
            "mismatched_outputs": int(differs.sum()),
            "max_abs_diff": int(np.max(np.abs(expected - actual))) if expected.size else 0,
            "arena_bytes": arena}


def _buffer_bytes(model, tensor_index):
    data = model.buffers[model.subgraphs[0].tensors[tensor_index].buffer].data
    return 0 if data is None else len(data)


def _quantization_bytes(model, tensor_index):
    q = model.subgraphs[0].tensors[tensor_index].quantization
    if q is None:
        return 0
    return sum(len(getattr(q, field)) * size for field, size in _QUANT_BYTES.items()
               if getattr(q, field) is not None)


def size_breakdown(model_bytes):
    """{"file_bytes", "weight_bytes", "param_bytes", "graph_bytes"} of a float, int8, LUT or packed model.

    weight_bytes: the data of conv / depthwise / fully connected weights (packed codes; LUT indices).
    param_bytes: what turns them into outputs per channel: biases, the scale and zero point vectors of
    weight and bias tensors, LUT value tables, packed parameter blocks and custom options.
    graph_bytes: everything else (ops, activation tensors, names, flatbuffer tables, alignment).
    """
    model = tflite_model.read(model_bytes)
    weights = params = 0
    counted = set()
    for op in model.subgraphs[0].operators or []:
        name = tflite_model.op_name(model, op)
        inputs = [int(i) for i in op.inputs]
        fresh = [i for i in inputs if i >= 0 and i not in counted]
        if name in convert.WEIGHT_OPS:
            weights += _buffer_bytes(model, inputs[1]) if inputs[1] in fresh else 0
            params += sum(_quantization_bytes(model, i) for i in inputs[1:] if i >= 0 and i in fresh)
            params += _buffer_bytes(model, inputs[2]) if len(inputs) > 2 and inputs[2] in fresh else 0
        elif name in pack.BUILTIN_OF_CUSTOM:
            weights += _buffer_bytes(model, inputs[1]) if inputs[1] in fresh else 0
            params += (_buffer_bytes(model, inputs[2]) if inputs[2] in fresh else 0) + len(op.customOptions)
        elif name == DECODE_OP:  # inputs: (encoded, ancillary) per decoded tensor
            weights += sum(_buffer_bytes(model, i) for i in inputs[0::2] if i in fresh)
            params += sum(_buffer_bytes(model, i) for i in inputs[1::2] if i in fresh)
            params += sum(_quantization_bytes(model, i) for i in fresh)
        else:
            continue
        counted.update(inputs)
    return {"file_bytes": len(model_bytes), "weight_bytes": weights, "param_bytes": params,
            "graph_bytes": len(model_bytes) - weights - params}

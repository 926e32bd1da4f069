"""Bit-exactness between TFLite and TFLite-Micro, the TFLM arena size, and where a model's bytes go."""

import os
import sys
import tempfile

import numpy as np
import tensorflow as tf

from tflm_export import pack, reference, termination, tflite_model
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


def run_tflm(model_bytes, inputs, tensors=(), timeout_s=600):
    """(outputs, arena bytes, {tensor index: values per input}) from the TFLite-Micro Python runtime, run in
    a child process; ``tensors`` lists the subgraph-0 tensors whose values to return.

    Raises ExportError when the runtime fails or aborts (it kills its process on, e.g., a model whose
    activation ranges were calibrated on no real data). SIGTERM kills the child and removes its folder
    (see :mod:`tflm_export.termination`).
    """
    with termination.sigterm_raises(), tempfile.TemporaryDirectory() as folder:
        model_path, inputs_path, outputs_path = (os.path.join(folder, n) for n in
                                                 ("model.tflite", "inputs.npy", "outputs.npz"))
        with open(model_path, "wb") as f:
            f.write(bytes(model_bytes))
        np.save(inputs_path, np.asarray(inputs))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")])))
        command = [sys.executable, "-m", "tflm_export.tflm_runner", model_path, inputs_path, outputs_path,
                   ",".join(str(int(t)) for t in tensors)]
        done = termination.run(command, env=env, timeout=timeout_s)
        if done.returncode != 0 or not os.path.exists(outputs_path):
            raise ExportError(f"TFLite-Micro runtime failed (exit code {done.returncode}; a negative code is a "
                              f"crash, e.g. degenerate activation ranges from calibration on no real data): "
                              f"{done.stderr.strip()[-600:]}")
        result = np.load(outputs_path)
        return (result["outputs"], int(result["arena_bytes"]),
                {int(t): result[f"tensor_{int(t)}"] for t in tensors})


def compare(model_bytes, inputs, reference_bytes=None, reference_runtime="tflite"):
    """Runs ``model_bytes`` in TFLite-Micro and ``reference_bytes`` (default: the same model) in
    ``reference_runtime`` ("tflite": tf.lite reference kernels; "tflm": TFLite-Micro).

    Returns {"inputs", "bit_exact", "mismatched_outputs", "max_abs_diff", "arena_bytes", "reference"}.
    A LUT model is compared against its uncompressed int8 model passed as ``reference_bytes`` (TFLite has
    no DECODE op). Known difference: tf.lite's reference per-channel FULLY_CONNECTED rounds once where TFLM
    rounds twice (see tflm_export.reference), so a model with one may differ from tf.lite by one step.
    """
    reference_bytes = reference_bytes if reference_bytes is not None else model_bytes
    if reference_runtime == "tflite":
        expected = run_tflite(reference_bytes, inputs).astype(np.int32)
    elif reference_runtime == "tflm":
        expected = run_tflm(reference_bytes, inputs)[0].astype(np.int32)
    else:
        raise ValueError(f"reference_runtime must be 'tflite' or 'tflm', got {reference_runtime!r}")
    actual, arena, _ = run_tflm(model_bytes, inputs)
    actual = actual.astype(np.int32).reshape(expected.shape)
    differs = np.any((expected != actual).reshape(len(expected), -1), axis=1)
    return {"inputs": int(len(expected)), "bit_exact": not bool(differs.any()),
            "mismatched_outputs": int(differs.sum()),
            "max_abs_diff": int(np.max(np.abs(expected - actual))) if expected.size else 0,
            "arena_bytes": arena, "reference": reference_runtime}


def has_per_channel_fully_connected(model_bytes):
    """Whether a FULLY_CONNECTED op has per-channel weights (where tf.lite and TFLM may differ by one step)."""
    model = tflite_model.read(model_bytes)
    return any(op.kind == "FULLY_CONNECTED" and len(tflite_model.tensor_scales(model, op.weights)[0]) > 1
               for op in tflite_model.weight_ops(model))


def agrees_with_tflite(result, model_bytes):
    """A :func:`compare` result against tf.lite is acceptable: bit-exact, or off by at most one step in a
    model with a per-channel FULLY_CONNECTED (the known rounding difference)."""
    return result["bit_exact"] or (result["max_abs_diff"] <= 1 and has_per_channel_fully_connected(model_bytes))


def check_packed_layers(int8_bytes, packed_bytes, inputs):
    """Each packed layer, decoded and run by :mod:`tflm_export.reference`, against TFLite-Micro.

    TFLite-Micro runs the int8 model on ``inputs``; every QGT op of the packed model is fed the input tensor
    TFLM computed for its op and must reproduce TFLM's output tensor bit for bit. Zero points and scales of
    activations come from the packed model, so this also checks that it carries what a kernel needs.
    Returns {"layers", "inputs", "bit_exact", "mismatched_layers"}.
    """
    packed = tflite_model.read(packed_bytes)
    ops = {op.op_index: op for op in tflite_model.weight_ops(tflite_model.read(int8_bytes))}
    layers = pack.unpack_model(packed_bytes)
    if sorted(ops) != [layer.op_index for layer in layers]:
        raise ExportError("the packed model's QGT ops are not the int8 model's weight ops")
    watched = sorted({t for op in ops.values() for t in (op.input, op.output)})
    _, _, values = run_tflm(int8_bytes, inputs, watched)
    mismatched = []
    for layer in layers:
        op = ops[layer.op_index]
        packed_op = packed.subgraphs[0].operators[layer.op_index]
        packed_input, packed_output = (packed.subgraphs[0].tensors[int(packed_op.inputs[0])],
                                       packed.subgraphs[0].tensors[int(packed_op.outputs[0])])
        input_q, output_q = packed_input.quantization, packed_output.quantization
        for sample in range(len(inputs)):
            expected = values[op.output][sample]
            input_shape = [int(d) for d in packed_input.shape]
            actual = reference.run_layer(layer, values[op.input][sample].reshape(input_shape),
                                         int(input_q.zeroPoint[0]), float(output_q.scale[0]),
                                         int(output_q.zeroPoint[0]))
            if not np.array_equal(actual.reshape(-1), expected.reshape(-1)):
                mismatched.append(f"op {layer.op_index} ({layer.kind})")
                break
    return {"layers": len(layers), "inputs": int(len(inputs)), "bit_exact": not mismatched,
            "mismatched_layers": mismatched}


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
        if name in tflite_model.WEIGHT_OPS:
            weights += _buffer_bytes(model, inputs[1]) if inputs[1] in fresh else 0
            params += sum(_quantization_bytes(model, i) for i in inputs[1:] if i >= 0 and i in fresh)
            params += _buffer_bytes(model, inputs[2]) if len(inputs) > 2 and inputs[2] in fresh else 0
        elif name in pack.BUILTIN_OF_CUSTOM:
            options = bytes(np.asarray(op.customOptions, np.uint8))
            blob_weights, blob_params = pack.blob_sizes(pack.BUILTIN_OF_CUSTOM[name], options)
            weights += blob_weights
            params += blob_params + len(options)
        elif name == DECODE_OP:  # inputs: (encoded, ancillary) per decoded tensor
            weights += sum(_buffer_bytes(model, i) for i in inputs[0::2] if i in fresh)
            params += sum(_buffer_bytes(model, i) for i in inputs[1::2] if i in fresh)
            params += sum(_quantization_bytes(model, i) for i in fresh)
        else:
            continue
        counted.update(inputs)
    return {"file_bytes": len(model_bytes), "weight_bytes": weights, "param_bytes": params,
            "graph_bytes": len(model_bytes) - weights - params}

"""The QGT kernels layer by layer against the TFLite-Micro runtime's intermediate tensors
(kPreserveAllTensors) of an exported person detector: MobileNetV1-0.25 96x96x1 (qgt_keras.models) with the
MLPerf Tiny VWW weights, 2-bit weights (first layer 8-bit), calibrated and run on real person96 images. Every
op of the packed model runs through the kernel runner on the inputs TFLite-Micro fed the int8 op, on the host
(sanitizers) and on the emulated Cortex-M4 (DSP path), and must reproduce TFLite-Micro's output bit for bit."""

import numpy as np
import pytest

from test_tflm_export_common import reference_model
from tflm_export import emulator, export, keras_convert, kernel_runner, pack, requant, tflite_model, toolchain, verify
from tflm_export.kernel_runner import Case

IMAGES = 3
_KIND = {"QGT_CONV_2D": "conv", "QGT_DEPTHWISE_CONV_2D": "depthwise", "QGT_FULLY_CONNECTED": "fully_connected",
         "AVERAGE_POOL_2D": "average_pool", "SOFTMAX": "softmax"}


@pytest.fixture(scope="module")
def person_model():
    """(int8 bytes, packed bytes, int8 inputs) of the exported 2-bit person detector."""
    from qgt_keras import datasets, models
    weights = reference_model("mlperf_tiny_vww_96.h5")
    model = models.init_from(models.mobilenet_v1((96, 96, 1), alpha=0.25), weights)
    images, _ = export.calibration_images(str(datasets.bundled_person96_dir() / "test"), (96, 96, 1), 48)
    plain, bits = keras_convert.plain_keras_model(model, {"conv1": 8})
    int8 = pack.round_parameters(keras_convert.convert_keras(plain, images, bits, default_bits=2).tflite)
    return int8, pack.pack_model(int8), verify.quantize_inputs(int8, images[:IMAGES])


def _quant(model, index):
    q = model.subgraphs[0].tensors[index].quantization
    return float(np.float32(q.scale[0])), int(q.zeroPoint[0])


@pytest.fixture(scope="module")
def layer_cases(person_model):
    """One case per op and image, with TFLite-Micro's input and output tensors of the int8 model."""
    int8_bytes, packed_bytes, inputs = person_model
    int8, packed = tflite_model.read(int8_bytes), tflite_model.read(packed_bytes)
    ops = int8.subgraphs[0].operators
    watched = sorted({int(t) for op in ops for t in (op.inputs[0], op.outputs[0])})
    _, _, values = verify.run_tflm(int8_bytes, inputs, watched)
    cases, names = [], [tflite_model.op_name(packed, op) for op in packed.subgraphs[0].operators]
    assert names.count("QGT_CONV_2D") == 14 and names.count("QGT_DEPTHWISE_CONV_2D") == 13
    for index, (op, packed_op, name) in enumerate(zip(ops, packed.subgraphs[0].operators, names)):
        source, target = int(op.inputs[0]), int(op.outputs[0])
        shape = [int(d) for d in int8.subgraphs[0].tensors[source].shape]
        if name == "RESHAPE":  # a view: the same bytes
            for sample in range(len(inputs)):
                assert values[target][sample].tobytes() == values[source][sample].tobytes()
            continue
        kind = _KIND[name]
        dims = tuple([1] * (4 - len(shape)) + shape) if kind != "fully_connected" else (1, 1, 1, int(np.prod(shape)))
        (input_scale, input_zp), (output_scale, output_zp) = _quant(int8, source), _quant(int8, target)
        extra, options, blob = (0, 0, 0, 0, 0, 0), b"", b""
        if kind in ("conv", "depthwise", "fully_connected"):
            options = bytes(np.asarray(packed_op.customOptions, np.uint8))
            blob = bytes(tflite_model.tensor_array(packed, int(packed_op.inputs[1])))
        elif kind == "average_pool":
            o = op.builtinOptions
            extra = (int(o.padding), int(o.strideW), int(o.strideH), int(o.filterWidth), int(o.filterHeight),
                     int(o.fusedActivationFunction))
        else:
            extra = (requant.float32_bits(op.builtinOptions.beta), 0, 0, 0, 0, 0)
        for sample in range(len(inputs)):
            cases.append(Case(kind, dims, values[source][sample].astype(np.int8).reshape(-1), input_scale, input_zp,
                              output_scale, output_zp, extra=extra, options=options, blob=blob,
                              expected=values[target][sample].astype(np.int8), label=f"op {index} {name}"))
    return cases


def test_the_model_is_the_person_detector(layer_cases):
    kinds = [c.kind for c in layer_cases]
    assert kinds.count("conv") == 14 * IMAGES and kinds.count("depthwise") == 13 * IMAGES
    assert {"fully_connected", "average_pool", "softmax"} <= set(kinds)
    softmax = [c.expected for c in layer_cases if c.kind == "softmax"]
    assert len({s.tobytes() for s in softmax}) > 1  # real images give different scores


def test_layers_match_tflite_micro_on_the_host_under_the_sanitizers(layer_cases, tmp_path):
    try:
        runner = kernel_runner.build_host(str(tmp_path))
    except toolchain.ToolchainMissing as missing:
        pytest.skip(str(missing))
    exit_code, stderr, results = kernel_runner.run_host(runner, layer_cases, str(tmp_path))
    assert exit_code == 0 and "runtime error" not in stderr and "AddressSanitizer" not in stderr, stderr[-2000:]
    assert kernel_runner.mismatches(layer_cases, results) == []


def test_layers_match_tflite_micro_on_the_cortex_m4_dsp_path(layer_cases, tmp_path):
    try:
        emulator.require_qemu()
        elf = kernel_runner.build_cortex_m4(str(tmp_path))
    except toolchain.ToolchainMissing as missing:
        pytest.skip(str(missing))
    run, results = kernel_runner.run_cortex_m4(elf, layer_cases, str(tmp_path))
    assert run.exit_code == 0, run.output[-2000:]
    assert kernel_runner.mismatches(layer_cases, results) == []

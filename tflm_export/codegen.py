"""qgt_model.h / qgt_model.c: a packed model (docs/FORMAT.md) as plain C over the QGT kernel library
(``arduino/QGT/src/qgt_kernels.h``), with no interpreter and nothing parsed at run time.

``<prefix>_invoke(input, output)`` calls the kernels op after op and returns a qgt_status (0 = QGT_OK;
``<prefix>_status_name`` names it). What does not change is computed here, with integers: each weight op's
``qgt_filter`` (views into its blob, as ``qgt_layer_parse`` would fill them), its 32-entry multiplier table
(``tflm_export.requant``, what ``qgt_quant_params_init`` computes), the conv / fully connected / pooling /
softmax parameters and dims, and each op's scratch size; the blobs are ``const`` arrays, 4-byte aligned.
Every activation and every op's scratch lives in one static buffer planned here (``tflm_export.memory_plan``:
in place and overlapped where the kernels allow it). ``<prefix>_input()`` points at the input tensor in
that buffer, so a caller can write the input there and pass it to invoke without a copy.

The header also declares the model's I/O (shape, scale, zero point, the person class index of a 2-class
model), the weight widths it uses (``<PREFIX>_WEIGHT_BITS_MASK``: a kernel library built with
``-DQGT_WEIGHT_BITS_MASK=`` that value compiles only their loops) and, given a ``pixel_table``, the 256
quantized inputs of the 8-bit pixel values. A firmware that
defines ``QGT_MODEL_LAYER_HOOK`` as a function name gets that function called with the op index after each
op (per-layer timing, instruction counts).

Ops: QGT_CONV_2D, QGT_DEPTHWISE_CONV_2D, QGT_FULLY_CONNECTED (format version 3), AVERAGE_POOL_2D, SOFTMAX
and RESHAPE (a view); one int8 input, one int8 output. Anything else raises ExportError naming the op or
tensor before any text is produced.
"""

import dataclasses
import struct

import numpy as np
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

from tflm_export import bitpack, kernel_abi, memory_plan, pack, reference, requant, tflite_model
from tflm_export.parameters import bias_quantum
from tflm_export.tflite_model import ExportError, UnsupportedOpsError

FILE_NAMES = ("qgt_model.h", "qgt_model.c")
SUPPORTED_OPS = ("QGT_CONV_2D", "QGT_DEPTHWISE_CONV_2D", "QGT_FULLY_CONNECTED", "AVERAGE_POOL_2D", "SOFTMAX",
                 "RESHAPE")
PERSON_INDEX = 1  # 2-class models: classes in sorted folder order (non_person, person), as MLPerf and TFLM
_INT32_MAX = 2 ** 31 - 1
_SOFTMAX_MAX_DEPTH = 511
_SOFTMAX_OUTPUT = (requant.float32_bits(1 / 256), -128)
_BYTES_PER_LINE = 16
KERNEL_OPS = {"QGT_CONV_2D": "QGT_OP_CONV_2D", "QGT_DEPTHWISE_CONV_2D": "QGT_OP_DEPTHWISE_CONV_2D",
              "QGT_FULLY_CONNECTED": "QGT_OP_FULLY_CONNECTED"}  # the custom ops and their qgt_op


@dataclasses.dataclass(frozen=True)
class Tensor:
    index: int
    shape: tuple
    scale: float  # float32 value
    zero_point: int

    @property
    def bytes(self):
        return int(np.prod(self.shape))

    @property
    def scale_bits(self):
        return requant.float32_bits(self.scale)


@dataclasses.dataclass
class Layer:
    """One op of the generated model: its tensors, how its output may overlap its input, its scratch, its
    constants (``blob``, the packed filter, as ``op<i>_blob``; ``fields``, (C type, role, initializer) of the
    struct ``op<i>``, whose members the kernel call takes) and its kernel call (a format string with
    ``{input}``, ``{output}``, ``{scratch}``; None for a view)."""
    op_index: int
    op: str
    input: Tensor
    output: Tensor
    overlap: memory_plan.Overlap
    scratch_bytes: int = 0
    macs: int = 0
    weight_bits: int = None
    blob: bytes = None
    fields: list = dataclasses.field(default_factory=list)
    call: str = None

    @property
    def name(self):
        """The C name of the op's constants: ``op<i>`` (members by role) and ``op<i>_blob``."""
        return f"op{self.op_index}"

    def member(self, role):
        return f"{self.name}.{role}"

    def describe(self):
        bits = f", {self.weight_bits}-bit weights" if self.weight_bits else ""
        return f"op {self.op_index}: {self.op} {'x'.join(map(str, self.input.shape))} -> " \
               f"{'x'.join(map(str, self.output.shape))}{bits}"


@dataclasses.dataclass
class GeneratedModel:
    """The two files and what they were made from: layers, the buffer plan, the I/O tensors."""
    prefix: str
    header: str
    source: str
    layers: list
    plan: memory_plan.Plan
    input: Tensor
    output: Tensor

    def files(self):
        return dict(zip(FILE_NAMES, (self.header, self.source)))

    @property
    def buffer_bytes(self):
        """The static buffer: every activation and every op's scratch."""
        return self.plan.size

    @property
    def largest_activation_bytes(self):
        return max(t.bytes for layer in self.layers for t in (layer.input, layer.output))

    @property
    def weight_bits_mask(self):
        """QGT_WEIGHT_BITS_MASK of the widths the model uses (bit b for b-bit weights): a kernel library built
        with it compiles only those widths' loops."""
        return _weight_bits_mask(self.layers)


def _where(index, name):
    return f"op {index} ({name})"


def _tensor(model, index, where):
    """The activation tensor ``index`` as a :class:`Tensor`; ExportError naming it unless it is int8, quantized
    per tensor and of a positive static shape the buffer can hold."""
    tensor = model.subgraphs[0].tensors[index]
    name = tflite_model.tensor_name(model, index)
    what = f"{where}: tensor {index}" + (f" {name!r}" if name else "")
    if tensor.type != schema.TensorType.INT8:
        raise ExportError(f"{what} is of type {tensor.type}; the generated C model computes int8 tensors only")
    q = tensor.quantization
    if q is None or q.scale is None or len(q.scale) != 1:
        raise ExportError(f"{what} is not quantized per tensor; the QGT kernels need one scale and zero point")
    shape = tuple(int(d) for d in tensor.shape)
    if not shape or min(shape) < 1 or np.prod(shape, dtype=np.float64) > _INT32_MAX:
        raise ExportError(f"{what} has shape {list(shape)}; the static plan needs positive sizes below 2^31 bytes")
    return Tensor(index, shape, float(np.float32(q.scale[0])), int(q.zeroPoint[0]) if q.zeroPoint is not None else 0)


def _nhwc(tensor, where):
    if len(tensor.shape) != 4:
        raise ExportError(f"{where}: tensor {tensor.index} has shape {list(tensor.shape)}; this op needs NHWC (rank 4)")
    return tensor.shape


def _dims(values):
    n, h, w, c = (int(v) for v in values)
    return f"{{{n}, {h}, {w}, {c}}}"


def _tile(w, h):
    return f"{{.w = {int(w)}, .h = {int(h)}}}"


def _range(low_high):
    return f"{{{int(low_high[0])}, {int(low_high[1])}}}"


def _byte_lines(data):
    return [", ".join(f"0x{b:02x}" for b in data[i:i + _BYTES_PER_LINE]) + ","
            for i in range(0, len(data), _BYTES_PER_LINE)]


def _output_size(size, kernel, stride, dilation, padding, where):
    """(output size, leading padding) along one axis, as qgt__output_size (TFLite's SAME / VALID)."""
    effective = (kernel - 1) * dilation + 1
    if padding == 0:
        out = -(-size // stride)
    else:
        if size < effective:
            raise ExportError(f"{where}: a VALID window of {effective} does not fit an input of {size}")
        out = (size - effective) // stride + 1
    return out, max((out - 1) * stride + effective - size, 0) // 2


def _check_output(tensor, expected, where, exact=True):
    """The model's output tensor must be what the kernel writes (``exact``: the same shape, else the same
    number of values)."""
    same = tuple(tensor.shape) == tuple(expected) if exact else tensor.bytes == int(np.prod(expected))
    if not same:
        raise ExportError(f"{where}: output tensor {tensor.index} has shape {list(tensor.shape)}, the kernel "
                          f"computes {list(expected)}")


def _filter_fields(layer, raw_options, blob, where):
    """The qgt_filter of a packed layer: byte offsets into its blob and the scalar fields, as qgt_layer_parse
    fills them (``accumulator_bits`` from the worst-case |acc + bias|: the cheap bound ``taps * 255 *
    2^(bits - 1)`` plus the largest bias where it fits int32, else every channel's own)."""
    _, bits, bias_bytes, _, _, _, bias_shift, scale_exponent, *_ = struct.unpack(pack.OPTIONS_FORMAT, raw_options)
    shape = layer.options["filter_shape"]
    kind = layer.kind
    _, row_length = pack.weight_rows(kind, shape)
    weight_bytes, _ = pack.blob_sizes(kind, raw_options)
    channels = len(layer.bias)
    codes = np.abs(layer.codes.astype(np.int64))
    weight_sums = (codes.reshape(-1, channels).sum(axis=0) if kind == "DEPTHWISE_CONV_2D"
                   else codes.reshape(channels, -1).sum(axis=1))
    scale_codes = np.frombuffer(blob[weight_bytes + bias_bytes * channels:], np.uint8).astype(np.int64)
    stored = np.frombuffer(blob[weight_bytes:weight_bytes + bias_bytes * channels], f"<i{bias_bytes}").astype(np.int64)
    bias = np.abs(stored * bias_quantum(scale_codes, bias_shift))
    taps = row_length if kind != "DEPTHWISE_CONV_2D" else row_length // channels
    worst = taps * 255 * 2 ** (bits - 1) + int(bias.max())
    if worst > _INT32_MAX:
        worst = int((255 * weight_sums + bias).max())
    if bias.max() > _INT32_MAX or worst > _INT32_MAX:
        raise ExportError(f"{where}: a channel's bias or worst-case accumulator exceeds int32")
    if kind == "FULLY_CONNECTED":
        kernel_h, kernel_w, in_channels = 1, 1, shape[1]
    else:
        kernel_h, kernel_w = shape[1], shape[2]
        in_channels = shape[3] // layer.options["depth_multiplier"] if kind == "DEPTHWISE_CONV_2D" else shape[3]
    return {"weights": 0, "bias": weight_bytes, "scale_codes": weight_bytes + bias_bytes * channels,
            "out_channels": channels, "kernel_h": kernel_h, "kernel_w": kernel_w, "in_channels": in_channels,
            "row_length": row_length, "row_bytes": bitpack.row_bytes(row_length, bits), "weight_bits": bits,
            "bias_bytes": bias_bytes, "bias_shift": bias_shift, "scale_exponent": scale_exponent,
            "accumulator_bits": int(worst).bit_length()}


def _quant_initializer(input_tensor, output_tensor, scale_exponent, where):
    """The qgt_quant_params of a layer: qgt_quant_params_init's table, from tflm_export.requant."""
    multipliers, shifts = requant.multiplier_table(input_tensor.scale_bits, output_tensor.scale_bits, scale_exponent)
    if shifts.min() < -2 ** 15 or shifts.max() >= 2 ** 15:
        raise ExportError(f"{where}: multiplier shifts {shifts.min()}..{shifts.max()} exceed int16")
    return ("{\n      {" + ", ".join(str(int(m)) for m in multipliers) + "},\n      {"
            + ", ".join(str(int(s)) for s in shifts) + "}}")


def _weight_layer(model, op_index, op, name, packed_layer, input_tensor, output_tensor):
    """A QGT_CONV_2D / QGT_DEPTHWISE_CONV_2D / QGT_FULLY_CONNECTED op: blob, filter, quant, params, dims."""
    where = _where(op_index, name)
    raw_options = bytes(np.asarray(op.customOptions, np.uint8))
    blob = bytes(tflite_model.tensor_array(model, int(op.inputs[1])))
    fields = _filter_fields(packed_layer, raw_options, blob, where)
    o = packed_layer.options
    layer = Layer(op_index, name, input_tensor, output_tensor, memory_plan.Overlap.none(),
                  weight_bits=fields["weight_bits"], blob=blob)
    pointers = [f".{key} = {layer.name}_blob.bytes + {fields[key]}" for key in ("weights", "bias", "scale_codes")]
    layer.fields = [("qgt_filter", "filter", "{" + ", ".join(
                        pointers + [f".{key} = {value}" for key, value in fields.items()
                                    if key not in ("weights", "bias", "scale_codes")]) + "}"),
                    ("qgt_quant_params", "quant", _quant_initializer(input_tensor, output_tensor,
                                                                    fields["scale_exponent"], where))]
    activation = reference.activation_range(o["activation"], np.float32(output_tensor.scale), output_tensor.zero_point)
    offsets = f".input_offset = {-input_tensor.zero_point}, .output_offset = {output_tensor.zero_point}"
    channels, row_length = fields["out_channels"], fields["row_length"]
    if packed_layer.kind == "FULLY_CONNECTED":
        depth = fields["in_channels"]
        if input_tensor.bytes % depth:
            raise ExportError(f"{where}: {input_tensor.bytes} input values are not rows of {depth}")
        rows = input_tensor.bytes // depth
        _check_output(output_tensor, (rows, channels), where, exact=False)
        layer.fields += [("qgt_fc_params", "params", f"{{{offsets}, .activation = {_range(activation)}}}"),
                         ("qgt_dims", "input_dims", _dims((rows, 1, 1, depth))),
                         ("qgt_dims", "output_dims", _dims((rows, 1, 1, channels)))]
        layer.overlap = memory_plan.pointwise_overlap(rows, depth, channels)
        layer.scratch_bytes = kernel_abi.conv_scratch_bytes(channels, row_length)
        layer.macs = rows * channels * depth
        kernel = "qgt_fully_connected"
    else:
        n, h, w, c = _nhwc(input_tensor, where)
        kh, kw = fields["kernel_h"], fields["kernel_w"]
        dm = o["depth_multiplier"] if packed_layer.kind == "DEPTHWISE_CONV_2D" else 1
        if c != fields["in_channels"]:
            raise ExportError(f"{where}: input of {c} channels does not match the filter {o['filter_shape']}")
        out_h, pad_h = _output_size(h, kh, o["stride_h"], o["dilation_h"], o["padding"], where)
        out_w, pad_w = _output_size(w, kw, o["stride_w"], o["dilation_w"], o["padding"], where)
        out_shape = (n, out_h, out_w, channels)
        _check_output(output_tensor, out_shape, where)
        layer.fields += [("qgt_conv_params", "params",
                          f"{{{offsets}, .stride = {_tile(o['stride_w'], o['stride_h'])}, .padding = "
                          f"{_tile(pad_w, pad_h)}, .dilation = {_tile(o['dilation_w'], o['dilation_h'])}, "
                          f".depth_multiplier = {dm}, .activation = {_range(activation)}}}"),
                         ("qgt_dims", "input_dims", _dims((n, h, w, c))), ("qgt_dims", "output_dims", _dims(out_shape))]
        pixels = n * out_h * out_w
        if packed_layer.kind == "DEPTHWISE_CONV_2D":
            layer.overlap = memory_plan.depthwise_overlap(n, (h, w, c), (out_h, out_w, channels), kh, o["stride_h"],
                                                          o["dilation_h"], pad_h)
            layer.scratch_bytes = kernel_abi.depthwise_scratch_bytes(
                c, channels, (kh, kw), (o["stride_h"], o["stride_w"]), (o["dilation_h"], o["dilation_w"]), out_w)
            layer.macs = pixels * channels * kh * kw
            kernel = "qgt_depthwise_conv2d"
        else:
            pointwise = kh == kw == 1 and o["stride_h"] == o["stride_w"] == 1 and pad_h == pad_w == 0
            if pointwise and (out_h, out_w) == (h, w):
                layer.overlap = memory_plan.pointwise_overlap(n * h * w, c, channels)
            layer.scratch_bytes = kernel_abi.conv_scratch_bytes(channels, row_length)
            layer.macs = pixels * channels * row_length
            kernel = "qgt_conv2d"
    m = layer.member
    layer.call = (f"{kernel}(&{m('params')}, &{m('quant')}, &{m('input_dims')}, {{input}}, &{m('filter')}, "
                  f"&{m('output_dims')}, {{output}}, {{scratch}}, {layer.scratch_bytes})")
    return layer


def _average_pool(op_index, op, name, input_tensor, output_tensor):
    where = _where(op_index, name)
    options = op.builtinOptions
    if (input_tensor.scale_bits, input_tensor.zero_point) != (output_tensor.scale_bits, output_tensor.zero_point):
        raise ExportError(f"{where}: input and output quantization differ; AVERAGE_POOL_2D needs them equal")
    n, h, w, c = _nhwc(input_tensor, where)
    out_h, pad_h = _output_size(h, options.filterHeight, options.strideH, 1, options.padding, where)
    out_w, pad_w = _output_size(w, options.filterWidth, options.strideW, 1, options.padding, where)
    for size, out, stride, pad, kernel in ((h, out_h, options.strideH, pad_h, options.filterHeight),
                                           (w, out_w, options.strideW, pad_w, options.filterWidth)):
        if kernel - pad <= 0 or (out - 1) * stride - pad >= size:
            raise ExportError(f"{where}: a pooling window holds no input value")
    _check_output(output_tensor, (n, out_h, out_w, c), where)
    if options.fusedActivationFunction not in (0, 1, 2, 3):
        raise ExportError(f"{where}: fused activation {options.fusedActivationFunction} is not supported")
    activation = reference.activation_range(options.fusedActivationFunction, np.float32(output_tensor.scale),
                                            output_tensor.zero_point)
    layer = Layer(op_index, name, input_tensor, output_tensor, memory_plan.Overlap.none(),
                  macs=n * out_h * out_w * c * options.filterHeight * options.filterWidth)
    layer.fields = [("qgt_pool_params", "params",
                     f"{{.stride = {_tile(options.strideW, options.strideH)}, .padding = {_tile(pad_w, pad_h)}, "
                     f".filter = {_tile(options.filterWidth, options.filterHeight)}, .activation = {_range(activation)}}}"),
                    ("qgt_dims", "input_dims", _dims((n, h, w, c))),
                    ("qgt_dims", "output_dims", _dims((n, out_h, out_w, c)))]
    m = layer.member
    layer.call = f"qgt_average_pool2d(&{m('params')}, &{m('input_dims')}, {{input}}, &{m('output_dims')}, {{output}})"
    return layer


def _softmax(op_index, op, name, input_tensor, output_tensor):
    where = _where(op_index, name)
    if (output_tensor.scale_bits, output_tensor.zero_point) != _SOFTMAX_OUTPUT:
        raise ExportError(f"{where}: output scale {output_tensor.scale} and zero point {output_tensor.zero_point}; "
                          "int8 SOFTMAX needs 1/256 and -128")
    depth = input_tensor.shape[-1]
    if depth > _SOFTMAX_MAX_DEPTH or output_tensor.bytes != input_tensor.bytes:
        raise ExportError(f"{where}: softmax over {depth} values of shape {list(input_tensor.shape)} (at most "
                          f"{_SOFTMAX_MAX_DEPTH}, output of the same size)")
    multiplier, left_shift, diff_min = reference.softmax_params(input_tensor.scale, op.builtinOptions.beta)
    layer = Layer(op_index, name, input_tensor, output_tensor, memory_plan.Overlap.none())
    layer.fields = [("qgt_softmax_params", "params", f"{{.input_multiplier = {multiplier}, .input_left_shift = "
                                                     f"{left_shift}, .diff_min = {diff_min}}}")]
    layer.call = (f"qgt_softmax(&{layer.member('params')}, {input_tensor.bytes // depth}, {depth}, {{input}}, "
                  "{output})")
    return layer


def _reshape(op_index, name, input_tensor, output_tensor):
    if input_tensor.bytes != output_tensor.bytes or (input_tensor.scale_bits, input_tensor.zero_point) != (
            output_tensor.scale_bits, output_tensor.zero_point):
        raise ExportError(f"{_where(op_index, name)}: a reshape must keep the bytes and the quantization")
    return Layer(op_index, name, input_tensor, output_tensor, memory_plan.Overlap.view())


def _layers(model, packed_tflite):
    names = tflite_model.op_names(model)
    unsupported = [name for name in names if name not in SUPPORTED_OPS]
    if len(model.subgraphs) != 1 or unsupported:
        raise UnsupportedOpsError(unsupported or [f"{len(model.subgraphs)} subgraphs"],
                                  "the generated C model (QGT kernel library)")
    decoded = {layer.op_index: layer for layer in pack.unpack_model(packed_tflite)}  # refuses old versions
    graph = model.subgraphs[0]
    constants = {i for i, t in enumerate(graph.tensors) if model.buffers[t.buffer].data is not None}
    layers = []
    for index, (op, name) in enumerate(zip(graph.operators, names)):
        where = _where(index, name)
        activations = [int(i) for i in op.inputs if i >= 0 and int(i) not in constants]
        if len(activations) != 1 or len(op.outputs) != 1:
            raise ExportError(f"{where} reads {len(activations)} activation tensors and writes {len(op.outputs)}; "
                              "the generated C model runs ops of one input and one output")
        input_tensor, output_tensor = _tensor(model, activations[0], where), _tensor(model, int(op.outputs[0]), where)
        if name in KERNEL_OPS:
            layers.append(_weight_layer(model, index, op, name, decoded[index], input_tensor, output_tensor))
        elif name == "AVERAGE_POOL_2D":
            layers.append(_average_pool(index, op, name, input_tensor, output_tensor))
        elif name == "SOFTMAX":
            layers.append(_softmax(index, op, name, input_tensor, output_tensor))
        else:
            layers.append(_reshape(index, name, input_tensor, output_tensor))
    return layers


def _io_tensors(model):
    graph = model.subgraphs[0]
    inputs, outputs = [int(i) for i in graph.inputs], [int(i) for i in graph.outputs]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ExportError(f"the generated C model takes one input and one output; the model has {len(inputs)} "
                          f"inputs (tensors {inputs}) and {len(outputs)} outputs (tensors {outputs})")
    return _tensor(model, inputs[0], "model input"), _tensor(model, outputs[0], "model output")


def _float_literal(value):
    text = f"{float(value):.9g}"
    return text + ("" if "e" in text or "." in text else ".0") + "f"


def _io_macros(macro, kind, tensor):
    shape = tensor.shape
    lines = [f"/* {kind.capitalize()}: int8 {list(shape)}, real = scale * (q - zero point). */",
             f"#define {macro}_{kind.upper()}_RANK {len(shape)}",
             f"#define {macro}_{kind.upper()}_SHAPE {{{', '.join(map(str, shape))}}}",
             f"#define {macro}_{kind.upper()}_BYTES {tensor.bytes}"]
    if len(shape) == 4:
        lines += [f"#define {macro}_{kind.upper()}_{axis} {size}" for axis, size in zip("HWC", shape[1:])]
    lines += [f"#define {macro}_{kind.upper()}_SCALE {_float_literal(tensor.scale)}",
              f"#define {macro}_{kind.upper()}_ZERO_POINT {tensor.zero_point}"]
    return lines


def _weight_bits_mask(layers):
    return sum({1 << layer.weight_bits for layer in layers if layer.weight_bits})


def _header(prefix, origin, input_tensor, output_tensor, plan, pixel_table, bits_mask):
    macro = prefix.upper()
    guard = f"{macro}_H_"
    lines = [f"/* Generated by qgt-export{origin}: the model as plain C over the QGT kernel library", " * (arduino/QGT/src). "
             "Do not edit. */", f"#ifndef {guard}", f"#define {guard}", "", "#include <stdint.h>", "",
             "#ifdef __cplusplus", 'extern "C" {', "#endif", ""]
    lines += _io_macros(macro, "input", input_tensor) + [""] + _io_macros(macro, "output", output_tensor)
    if output_tensor.bytes == 2:
        lines += ["/* Output index of the person class (classes in sorted folder order: non_person, person). */",
                  f"#define {macro}_PERSON_INDEX {PERSON_INDEX}"]
    lines += ["", "/* The static buffer that holds every activation and every layer's scratch. */",
              f"#define {macro}_BUFFER_BYTES {plan.size}", "",
              "/* The weight widths the model uses (bit b: b-bit weights). Building the QGT library with",
              f" * -DQGT_WEIGHT_BITS_MASK=0x{bits_mask:x} compiles only their kernel loops (less flash). */",
              f"#define {macro}_WEIGHT_BITS_MASK 0x{bits_mask:x}u", ""]
    if pixel_table is not None:
        lines += ["/* The quantized model input of each 8-bit pixel value v (0..255) as the training pipeline",
                  " * preprocesses it (v / 255, then the input quantization); per channel for RGB inputs. */",
                  f"extern const int8_t {prefix}_pixel_to_input[256];", ""]
    lines += ["/* The input tensor inside the buffer: write the input here and pass this pointer to invoke to",
              " * skip the copy (invoke then overwrites it with later activations). */",
              f"int8_t *{prefix}_input(void);", "",
              f"/* Runs the model on {macro}_INPUT_BYTES input bytes (copied into the buffer unless input is",
              f" * {prefix}_input()) and writes {macro}_OUTPUT_BYTES output bytes. Returns a qgt_status: 0 (QGT_OK);",
              " * QGT_ERR_ARGUMENT for a NULL pointer, an output overlapping the buffer or an input overlapping it",
              f" * other than at {prefix}_input(); or the status of the first kernel that refused its arguments.",
              " * The output is written only on QGT_OK. */",
              f"int {prefix}_invoke(const int8_t *input, int8_t *output);", "",
              '/* "QGT_OK", "QGT_ERR_SCRATCH", ... */', f"const char *{prefix}_status_name(int status);", "",
              "#ifdef __cplusplus", "}", "#endif", "", f"#endif /* {guard} */", ""]
    return "\n".join(lines)


def _constants(layer):
    """The C lines of an op's constants: its blob (4-byte aligned) and its struct of kernel arguments."""
    if not layer.fields:
        return []
    lines = [f"/* {layer.describe()} */"]
    if layer.blob is not None:
        lines += [f"static const union {{ uint8_t bytes[{len(layer.blob)}]; uint32_t align; }} {layer.name}_blob = {{{{",
                  *("    " + line for line in _byte_lines(layer.blob)), "}};"]
    lines += ["static const struct {", *(f"  {c_type} {role};" for c_type, role, _ in layer.fields),
              f"}} {layer.name} = {{", *(f"    .{role} = {value}," for _, role, value in layer.fields), "};", ""]
    return lines


def _pointer(offset):
    return f"b + {offset}"


def _source(prefix, origin, layers, plan, input_tensor, output_tensor, pixel_table, bits_mask):
    lines = [f"/* Generated by qgt-export{origin}. Do not edit.", " *"]
    lines += [f" *   {layer.describe()}" for layer in layers]
    lines += [" */", "#include <string.h>", "", '#include "qgt_kernels.h"', '#include "qgt_model.h"', "",
              f"#if QGT_FORMAT_VERSION != {pack.FORMAT_VERSION}",
              f'#error "generated for the QGT kernel library of packed format version {pack.FORMAT_VERSION}"',
              "#endif",
              f"#if (QGT_WEIGHT_BITS_MASK & 0x{bits_mask:x}u) != 0x{bits_mask:x}u",
              f'#error "QGT_WEIGHT_BITS_MASK leaves out weight widths this model uses (0x{bits_mask:x})"',
              "#endif", "",
              "#ifdef QGT_MODEL_LAYER_HOOK /* the firmware's function called with the op index after each op */",
              "void QGT_MODEL_LAYER_HOOK(int op);", "#define LAYER_DONE(op) QGT_MODEL_LAYER_HOOK(op)", "#else",
              "#define LAYER_DONE(op) ((void)0)", "#endif", ""]
    if pixel_table is not None:
        lines += [f"const int8_t {prefix}_pixel_to_input[256] = {{"]
        values = [int(v) for v in pixel_table]
        lines += ["    " + ", ".join(str(v) for v in values[i:i + 16]) + "," for i in range(0, 256, 16)]
        lines += ["};", ""]
    for layer in layers:
        lines += _constants(layer)
    input_offset, output_offset = plan.offsets[input_tensor.index], plan.offsets[output_tensor.index]
    lines += [f"static union {{ int8_t bytes[{plan.size}]; uint32_t align; }} buffer;", "",
              f"int8_t *{prefix}_input(void) {{ return buffer.bytes + {input_offset}; }}", "",
              f"const char *{prefix}_status_name(int status) {{ return qgt_status_name((qgt_status)status); }}", "",
              "/* 1 when [p, p + bytes) lies outside the buffer. */",
              "static int outside(const int8_t *p, size_t bytes) {",
              "  const uintptr_t start = (uintptr_t)p, begin = (uintptr_t)buffer.bytes;",
              "  return start + bytes <= begin || start >= begin + sizeof buffer.bytes;", "}", "",
              f"int {prefix}_invoke(const int8_t *input, int8_t *output) {{",
              "  int8_t *const b = buffer.bytes;", "  int status;",
              "  if (input == NULL || output == NULL) return QGT_ERR_ARGUMENT;",
              f"  if (!outside(output, {output_tensor.bytes})) return QGT_ERR_ARGUMENT;",
              f"  if (input != b + {input_offset}) {{",
              f"    if (!outside(input, {input_tensor.bytes})) return QGT_ERR_ARGUMENT;",
              f"    memcpy(b + {input_offset}, input, {input_tensor.bytes});", "  }"]
    for k, layer in enumerate(layers):
        lines.append(f"  /* {layer.describe()} */")
        if layer.call is not None:
            scratch = _pointer(plan.scratch[k]) if layer.scratch_bytes else "NULL"
            call = layer.call.format(input=_pointer(plan.offsets[layer.input.index]),
                                     output=_pointer(plan.offsets[layer.output.index]), scratch=scratch)
            lines += [f"  status = {call};", "  if (status != QGT_OK) return status;"]
        lines.append(f"  LAYER_DONE({layer.op_index});")
    lines += [f"  memcpy(output, b + {output_offset}, {output_tensor.bytes});", "  return QGT_OK;", "}", ""]
    return "\n".join(lines)


def generate(packed_tflite, prefix="qgt_model", pixel_table=None, source=""):
    """The :class:`GeneratedModel` of a packed model (bytes): C identifiers start with ``prefix`` (a C
    identifier; so two models link together), ``pixel_table`` (256 int8 or None) is declared as
    ``<prefix>_pixel_to_input``, ``source`` names the model file in the comments."""
    if not str(prefix).isidentifier():
        raise ExportError(f"prefix {prefix!r} is not a C identifier")
    model = tflite_model.read(packed_tflite)
    input_tensor, output_tensor = _io_tensors(model)
    layers = _layers(model, packed_tflite)
    sizes = {t.index: t.bytes for layer in layers for t in (layer.input, layer.output)}
    steps = [memory_plan.Step((layer.input.index,), layer.output.index, layer.overlap, layer.scratch_bytes)
             for layer in layers]
    plan = memory_plan.plan(sizes, steps, [input_tensor.index], [output_tensor.index])
    if plan.size > _INT32_MAX:
        largest = max((t for layer in layers for t in (layer.input, layer.output)), key=lambda t: t.bytes)
        raise ExportError(f"the static buffer would need {plan.size} bytes (largest tensor {largest.index}, "
                          f"{list(largest.shape)}); it must stay below 2^31")
    if pixel_table is not None:
        pixel_table = np.asarray(pixel_table)
        if pixel_table.shape != (256,) or pixel_table.min() < -128 or pixel_table.max() > 127:
            raise ExportError(f"pixel_table must hold 256 int8 values, got shape {pixel_table.shape}")
    origin, bits_mask = f" from {source}" if source else "", _weight_bits_mask(layers)
    return GeneratedModel(prefix, _header(prefix, origin, input_tensor, output_tensor, plan, pixel_table, bits_mask),
                          _source(prefix, origin, layers, plan, input_tensor, output_tensor, pixel_table, bits_mask),
                          layers, plan, input_tensor, output_tensor)

"""tflm_export.codegen: the generated C model bit-exact with the TFLite-Micro runtime on real images (host,
sanitized; emulated Cortex-M4, DSP path), its constants equal to what the kernel library's own parse and
init functions compute, warning-free builds, and bad input refused with the op or tensor named."""

import os
import subprocess

import numpy as np
import pytest
import tf_keras as keras

from test_tflm_export_common import reference_model, rounded_tiny
from qgt_keras import datasets, models
from tflm_export import codegen, keras_convert, model_runner, pack, requant, tflite_model, toolchain, verify
from tflm_export.tflite_model import ExportError, UnsupportedOpsError

SMALL_BITS = {"conv1": 8, "dw1": 2, "pw1": 4, "dense": 1}
MOBILENET_BITS = {"conv1": 8}  # the rest 2-bit


def _person96(count, grayscale):
    """``count`` real 96x96 crops of the bundled person96 test split, both classes, in [0, 1]."""
    dataset, _ = datasets.read_image_folder(datasets.bundled_person96_dir() / "test", grayscale=grayscale,
                                            batch_size=count, limit=count)
    return next(iter(dataset))[0].numpy()


def _randomized_small_cnn(seed=3):
    """models.small_cnn 96x96x3 with seeded random weights and BatchNorm statistics (an untrained net gives
    every image the same output; these weights make outputs differ from image to image)."""
    rng = np.random.default_rng(seed)
    model = models.small_cnn((96, 96, 3))
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shapes = [w.shape for w in layer.get_weights()]
            layer.set_weights([rng.uniform(0.5, 2.0, shapes[0]), rng.normal(0, 0.5, shapes[1]),
                               rng.normal(0, 0.3, shapes[2]), rng.uniform(0.5, 2.0, shapes[3])])
        elif layer.weights:
            layer.set_weights([rng.normal(0, 0.5, w.shape) for w in layer.get_weights()])
    return model


class Exported:
    """An int8 model, its packed variant and its generated C model, with real images and TFLM's outputs."""

    def __init__(self, keras_model, bits, default_bits, images, prefix):
        conversion = keras_convert.convert_keras(keras_model, images, bits, default_bits)
        self.int8 = pack.round_parameters(conversion.tflite)
        self.packed = pack.pack_model(self.int8)
        self.generated = codegen.generate(self.packed, prefix)
        self.inputs = verify.quantize_inputs(self.int8, images)
        self.expected = verify.run_tflm(self.int8, self.inputs)[0].reshape(len(images), -1)


@pytest.fixture(scope="module")
def small():
    images = _person96(12, grayscale=False)
    exported = Exported(_randomized_small_cnn(), SMALL_BITS, 8, images, "small_model")
    assert len(np.unique(exported.expected, axis=0)) > 3  # outputs that tell images apart
    return exported


@pytest.fixture(scope="module")
def mobilenet():
    """MobileNetV1-0.25 96x96x1 with the MLPerf Tiny VWW weights, 2-bit (first layer 8-bit)."""
    model = models.mobilenet_v1((96, 96, 1), alpha=0.25)
    models.init_from(model, reference_model("mlperf_tiny_vww_96.h5"))
    return Exported(model, MOBILENET_BITS, 2, _person96(8, grayscale=True), "person_model")


@pytest.fixture(params=["small", "mobilenet"])
def exported(request):
    return request.getfixturevalue(request.param)


def _toolchain_or_skip(call):
    try:
        return call()
    except toolchain.ToolchainMissing as error:
        pytest.skip(str(error))


def test_the_host_build_is_bit_exact_with_tflite_micro_on_real_images(exported, tmp_path):
    program = _toolchain_or_skip(lambda: model_runner.build_host(exported.generated, str(tmp_path), sanitize=True))
    results = model_runner.run_host(program, exported.generated, exported.inputs, str(tmp_path))
    assert results.statuses == [0] * len(exported.inputs)
    np.testing.assert_array_equal(results.outputs, exported.expected)


def test_mobilenet_fits_one_buffer_near_its_largest_activation(mobilenet):
    generated = mobilenet.generated
    assert generated.largest_activation_bytes == 48 * 48 * 16
    worst_scratch = max(layer.scratch_bytes for layer in generated.layers)
    assert generated.buffer_bytes <= generated.largest_activation_bytes + worst_scratch
    assert generated.buffer_bytes < 48 * 48 * (16 + 8)  # what a ping-pong plan of two buffers needs


def test_the_cortex_m4_dsp_build_is_bit_exact_on_real_images(exported, tmp_path):
    elf = _toolchain_or_skip(lambda: model_runner.build_cortex_m4(exported.generated, str(tmp_path), layer_hook=True))
    run = _toolchain_or_skip(lambda: model_runner.run_cortex_m4(elf, exported.generated, exported.inputs[:4],
                                                                per_op=True))
    assert run.results.statuses == [0] * 4
    np.testing.assert_array_equal(run.results.outputs, exported.expected[:4])
    assert 0 < run.results.stack_bytes[0] < 4096
    assert len(run.op_instructions) == len(exported.generated.layers)
    assert sum(run.op_instructions) == run.invoke_instructions
    convs = [n for layer, n in zip(exported.generated.layers, run.op_instructions) if layer.macs]
    assert min(convs) > 0
    footprint = model_runner.footprint(elf)
    assert footprint.bytes("model", "bss") == exported.generated.buffer_bytes
    assert footprint.model_data_flash >= len(exported.packed) // 2  # the blobs are in flash


def _check_program(exported, folder):
    """C source that includes the generated qgt_model.c and compares every constant with what the library's
    parse / init / scratch-size functions compute from the model's own options, blobs and scales, then checks
    invoke's argument checks; prints each difference and returns their count."""
    model = tflite_model.read(exported.packed)
    graph = model.subgraphs[0]
    g = exported.generated
    prefix = g.prefix
    lines = ['#include <stdio.h>', '#include "qgt_model.c"', "",
             "static int bad;",
             '#define SAME(op, what, a, b) do { if ((long)(a) != (long)(b)) { printf("op %d %s: %ld, library %ld\\n", '
             "op, what, (long)(a), (long)(b)); ++bad; } } while (0)", "",
             "static void same_dims(int op, const char *what, qgt_dims a, qgt_dims b) {",
             "  SAME(op, what, a.n, b.n); SAME(op, what, a.h, b.h); SAME(op, what, a.w, b.w); SAME(op, what, a.c, b.c);",
             "}", ""]
    for layer in g.layers:  # one function per op: a single huge function takes gcc -g minutes
        op = graph.operators[layer.op_index]
        q_in = f"(qgt_tensor_quant){{{layer.input.scale_bits}u, {layer.input.zero_point}}}"
        q_out = f"(qgt_tensor_quant){{{layer.output.scale_bits}u, {layer.output.zero_point}}}"
        i, m = layer.op_index, layer.member
        lines += [f"static void check_op{i}(void) {{", "  qgt_status s;"]
        if layer.blob is not None:
            options = bytes(np.asarray(op.customOptions, np.uint8))
            kind = codegen.KERNEL_OPS[layer.op]
            lines += ["  {", f"    static const uint8_t options[] = {{{', '.join(str(b) for b in options)}}};",
                      "    qgt_layer parsed; qgt_quant_params quant;",
                      f"    s = qgt_layer_parse({kind}, options, sizeof options, {layer.name}_blob.bytes, "
                      f"sizeof {layer.name}_blob.bytes, &parsed);", f"    SAME({i}, \"parse\", s, QGT_OK);"]
            for field in ("weights", "bias", "scale_codes"):
                lines.append(f"    SAME({i}, \"{field}\", (const uint8_t *){m('filter')}.{field} - (const uint8_t *)0, "
                             f"parsed.filter.{field} - (const uint8_t *)0);")
            for field in ("out_channels", "kernel_h", "kernel_w", "in_channels", "row_length", "row_bytes", "weight_bits",
                          "bias_bytes", "bias_shift", "scale_exponent", "accumulator_bits"):
                lines.append(f"    SAME({i}, \"{field}\", {m('filter')}.{field}, parsed.filter.{field});")
            lines += [f"    s = qgt_quant_params_init(&parsed.filter, {layer.input.scale_bits}u, "
                      f"{layer.output.scale_bits}u, &quant);", f"    SAME({i}, \"quant init\", s, QGT_OK);",
                      "    for (int k = 0; k < QGT_SCALE_STEPS; ++k) {",
                      f"      SAME({i}, \"multiplier\", {m('quant')}.multiplier[k], quant.multiplier[k]);",
                      f"      SAME({i}, \"shift\", {m('quant')}.shift[k], quant.shift[k]);", "    }"]
            if layer.op == "QGT_FULLY_CONNECTED":
                lines += ["    qgt_fc_params p; qgt_dims in, out;",
                          f"    s = qgt_fc_params_init(&parsed, {layer.input.bytes}, {q_in}, {q_out}, &p, &in, &out);",
                          f"    SAME({i}, \"fc init\", s, QGT_OK);",
                          f"    SAME({i}, \"input_offset\", {m('params')}.input_offset, p.input_offset);",
                          f"    SAME({i}, \"output_offset\", {m('params')}.output_offset, p.output_offset);",
                          f"    SAME({i}, \"min\", {m('params')}.activation.min, p.activation.min);",
                          f"    SAME({i}, \"max\", {m('params')}.activation.max, p.activation.max);",
                          f"    SAME({i}, \"scratch\", {layer.scratch_bytes}, qgt_fully_connected_scratch_size(&p, &in, "
                          "&parsed.filter, &out));"]
            else:
                scratch = ("qgt_depthwise_conv2d_scratch_size" if layer.op == "QGT_DEPTHWISE_CONV_2D"
                           else "qgt_conv2d_scratch_size")
                lines += ["    qgt_conv_params p; qgt_dims out;",
                          f"    s = qgt_conv_params_init(&parsed, &{m('input_dims')}, {q_in}, {q_out}, &p, &out);",
                          f"    SAME({i}, \"conv init\", s, QGT_OK);"]
                for field in ("input_offset", "output_offset", "stride.w", "stride.h", "padding.w", "padding.h",
                              "dilation.w", "dilation.h", "depth_multiplier", "activation.min", "activation.max"):
                    lines.append(f"    SAME({i}, \"{field}\", {m('params')}.{field}, p.{field});")
                lines += [f"    SAME({i}, \"scratch\", {layer.scratch_bytes}, {scratch}(&p, &{m('input_dims')}, "
                          "&parsed.filter, &out));", "    same_dims(%d, \"output dims\", %s, out);" % (i, m("output_dims"))]
            lines.append("  }")
        elif layer.op == "AVERAGE_POOL_2D":
            o = op.builtinOptions
            lines += ["  {", "    qgt_pool_params p; qgt_dims out;",
                      f"    s = qgt_pool_params_init({o.padding}, (qgt_tile){{{o.strideW}, {o.strideH}}}, "
                      f"(qgt_tile){{{o.filterWidth}, {o.filterHeight}}}, {o.fusedActivationFunction}, "
                      f"&{m('input_dims')}, {q_out}, &p, &out);", f"    SAME({i}, \"pool init\", s, QGT_OK);"]
            for field in ("stride.w", "stride.h", "padding.w", "padding.h", "filter.w", "filter.h", "activation.min",
                          "activation.max"):
                lines.append(f"    SAME({i}, \"{field}\", {m('params')}.{field}, p.{field});")
            lines += ["    same_dims(%d, \"output dims\", %s, out);" % (i, m("output_dims")), "  }"]
        elif layer.op == "SOFTMAX":
            beta = requant.float32_bits(op.builtinOptions.beta)
            lines += ["  {", "    qgt_softmax_params p;",
                      f"    s = qgt_softmax_params_init({layer.input.scale_bits}u, {beta}u, {q_out}, &p);",
                      f"    SAME({i}, \"softmax init\", s, QGT_OK);"]
            for field in ("input_multiplier", "input_left_shift", "diff_min"):
                lines.append(f"    SAME({i}, \"{field}\", {m('params')}.{field}, p.{field});")
            lines.append("  }")
        lines += ["  (void)s;", "}", ""]
    lines += ["int main(void) {", *(f"  check_op{layer.op_index}();" for layer in g.layers),
              "  {  /* invoke's argument checks: misplaced input or output, nothing written */",
              f"    static int8_t input[{g.input.bytes}], output[{g.output.bytes}];",
              f"    SAME(-1, \"input inside the buffer\", {prefix}_invoke({prefix}_input() + 1, output), QGT_ERR_ARGUMENT);",
              f"    SAME(-1, \"output inside the buffer\", {prefix}_invoke(input, {prefix}_input()), QGT_ERR_ARGUMENT);",
              f"    SAME(-1, \"NULL\", {prefix}_invoke(NULL, output), QGT_ERR_ARGUMENT);",
              f"    for (size_t k = 0; k < sizeof output; ++k) SAME(-1, \"output untouched\", output[k], 0);",
              f"    SAME(-1, \"invoke\", {prefix}_invoke(input, output), QGT_OK);",
              '    if (strcmp(%s_status_name(QGT_ERR_SCRATCH), "QGT_ERR_SCRATCH") != 0) ++bad;' % prefix, "  }",
              '  printf("%d differences\\n", bad);', "  return bad != 0;", "}", ""]
    path = os.path.join(folder, "check_constants.c")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def test_the_constants_equal_what_the_library_parses_and_computes(exported, tmp_path):
    folder = str(tmp_path)
    model_runner.write_sources(exported.generated, folder)
    program = _toolchain_or_skip(lambda: toolchain.build_host_program(
        [_check_program(exported, folder)], folder, "check_constants", include_dirs=[folder]))
    done = subprocess.run([program], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert done.stdout.strip().endswith("0 differences")


def test_the_sources_compile_warning_free_for_the_cortex_m4_and_the_header_as_cpp(small, tmp_path):
    folder = str(tmp_path)
    model_runner.write_sources(small.generated, folder)
    for portable in (False, True):  # the runner build uses -Wall -Wextra -Werror -pedantic (toolchain.C_FLAGS)
        _toolchain_or_skip(lambda: model_runner.build_cortex_m4(small.generated, os.path.join(folder, str(portable)),
                                                                portable=portable))
    header = small.generated.header
    assert f"#define SMALL_MODEL_WEIGHT_BITS_MASK 0x{(1 << 8) | (1 << 4) | (1 << 2) | (1 << 1):x}u" in header
    refused = subprocess.run([toolchain.require("gcc"), "-std=c99", "-fsyntax-only", "-DQGT_WEIGHT_BITS_MASK=0x104",
                              f"-I{toolchain.library_dir()}", f"-I{folder}", os.path.join(folder, "qgt_model.c")],
                             capture_output=True, text=True)  # a kernel build without the 1- and 4-bit loops
    assert refused.returncode != 0 and "QGT_WEIGHT_BITS_MASK leaves out weight widths this model uses" in refused.stderr
    cxx = _toolchain_or_skip(lambda: toolchain.require("g++"))
    done = subprocess.run([cxx, "-std=c++11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-fsyntax-only", "-x", "c++",
                           os.path.join(folder, "qgt_model.h")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_header_declares_the_io_and_the_person_index(small):
    header = small.generated.header
    details = tflite_model.io_details(tflite_model.read(small.packed))
    for line in ("#define SMALL_MODEL_INPUT_SHAPE {1, 96, 96, 3}", "#define SMALL_MODEL_INPUT_BYTES 27648",
                 f"#define SMALL_MODEL_INPUT_ZERO_POINT {details['inputs'][0]['zero_point']}",
                 "#define SMALL_MODEL_OUTPUT_BYTES 2", "#define SMALL_MODEL_PERSON_INDEX 1",
                 f"#define SMALL_MODEL_BUFFER_BYTES {small.generated.buffer_bytes}",
                 "int small_model_invoke(const int8_t *input, int8_t *output);", "int8_t *small_model_input(void);"):
        assert line in header
    assert "pixel_to_input" not in header  # only with a pixel table
    table = np.arange(-128, 128)
    with_table = codegen.generate(small.packed, "small_model", pixel_table=table)
    assert "extern const int8_t small_model_pixel_to_input[256];" in with_table.header
    assert "-128, -127, -126" in with_table.source


def test_two_models_link_together(small, tmp_path):
    other = codegen.generate(small.packed, "other_model")
    folders = []
    for generated in (small.generated, other):
        folders.append(str(tmp_path / generated.prefix))
        model_runner.write_sources(generated, folders[-1])
    main = tmp_path / "main.c"
    main.write_text('#include <stdint.h>\nint small_model_invoke(const int8_t *, int8_t *);\n'
                    'int other_model_invoke(const int8_t *, int8_t *);\n'
                    'static int8_t image[96 * 96 * 3];\n'
                    'int main(void) { int8_t a[2], b[2]; return small_model_invoke(image, a) | '
                    'other_model_invoke(image, b) | (a[0] != b[0]) | (a[1] != b[1]); }\n')
    program = _toolchain_or_skip(lambda: toolchain.build_host_program(
        [str(main), os.path.join(folders[0], "qgt_model.c"), os.path.join(folders[1], "qgt_model.c")], str(tmp_path),
        "two_models", include_dirs=[folders[0]]))
    assert subprocess.run([program]).returncode == 0


def test_an_unsupported_op_is_named():
    packed = pack.pack_model(rounded_tiny())  # ends with MEAN (GlobalAveragePooling2D)
    with pytest.raises(UnsupportedOpsError, match="not supported by the generated C model.*: MEAN"):
        codegen.generate(packed)


def _edited(packed, edit):
    model = tflite_model.read(packed)
    edit(model)
    return tflite_model.write(model)


def test_more_than_one_input_or_output_is_refused(small):
    def two_outputs(model):
        graph = model.subgraphs[0]
        graph.outputs = list(graph.outputs) + [int(graph.operators[0].outputs[0])]

    with pytest.raises(ExportError, match=r"one input and one output; the model has 1 inputs .* 2 outputs"):
        codegen.generate(_edited(small.packed, two_outputs))


def test_an_old_packed_version_is_refused_with_the_op_named(small):
    def version_2(model):
        op = model.subgraphs[0].operators[1]
        options = np.asarray(op.customOptions, np.uint8).copy()
        options[0] = 2
        op.customOptions = options

    with pytest.raises(ExportError, match=r"op 1 \(DEPTHWISE_CONV_2D\): packed format version 2 .* re-export"):
        codegen.generate(_edited(small.packed, version_2))


def test_a_shape_the_static_plan_cannot_hold_is_refused(small):
    def huge(model):  # the pooled tensor claims 2^31 values
        model.subgraphs[0].tensors[int(model.subgraphs[0].operators[3].outputs[0])].shape = [1, 1 << 16, 1 << 15, 1]

    with pytest.raises(ExportError, match=r"op 3 \(AVERAGE_POOL_2D\): tensor \d+ has shape \[1, 65536, 32768, 1\]"):
        codegen.generate(_edited(small.packed, huge))
    with pytest.raises(ExportError, match="not a C identifier"):
        codegen.generate(small.packed, "2fast")


def test_a_float_model_input_is_refused(small):
    def float_input(model):
        model.subgraphs[0].tensors[int(model.subgraphs[0].inputs[0])].type = tflite_model.schema.TensorType.FLOAT32

    with pytest.raises(ExportError, match="model input: tensor .* is of type 0; the generated C model computes int8"):
        codegen.generate(_edited(small.packed, float_input))

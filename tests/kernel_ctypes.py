"""ctypes bindings of the QGT kernel library's API (arduino/QGT/src/qgt_kernels.h) for the host tests: the
structs mirror the header field by field, and the helpers run a layer the way the adapters do."""

import ctypes

import numpy as np

from tflm_export import requant

c_int32, c_uint32, c_uint8, c_int8, c_int16 = (ctypes.c_int32, ctypes.c_uint32, ctypes.c_uint8, ctypes.c_int8,
                                               ctypes.c_int16)
OPS = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 2}


class Dims(ctypes.Structure):
    _fields_ = [("n", c_int32), ("h", c_int32), ("w", c_int32), ("c", c_int32)]


class Tile(ctypes.Structure):
    _fields_ = [("w", c_int32), ("h", c_int32)]


class Range(ctypes.Structure):
    _fields_ = [("min", c_int32), ("max", c_int32)]


class TensorQuant(ctypes.Structure):
    _fields_ = [("scale_bits", c_uint32), ("zero_point", c_int32)]


class Filter(ctypes.Structure):
    _fields_ = [("weights", ctypes.c_void_p), ("bias", ctypes.c_void_p), ("scale_codes", ctypes.c_void_p),
                ("out_channels", c_int32), ("kernel_h", c_int32), ("kernel_w", c_int32), ("in_channels", c_int32),
                ("row_length", c_int32), ("row_bytes", c_int32), ("weight_bits", c_uint8), ("bias_bytes", c_uint8),
                ("bias_shift", c_uint8), ("scale_exponent", c_int8), ("accumulator_bits", c_uint8)]


class Layer(ctypes.Structure):
    _fields_ = [("op", ctypes.c_int), ("activation", c_uint8), ("padding", c_uint8), ("keep_num_dims", c_uint8),
                ("stride", Tile), ("dilation", Tile), ("depth_multiplier", c_int32), ("filter", Filter)]


class QuantParams(ctypes.Structure):
    _fields_ = [("multiplier", c_int32 * 32), ("shift", c_int16 * 32)]


class ConvParams(ctypes.Structure):
    _fields_ = [("input_offset", c_int32), ("output_offset", c_int32), ("stride", Tile), ("padding", Tile),
                ("dilation", Tile), ("depth_multiplier", c_int32), ("activation", Range)]


class FcParams(ctypes.Structure):
    _fields_ = [("input_offset", c_int32), ("output_offset", c_int32), ("activation", Range)]


class SoftmaxParams(ctypes.Structure):
    _fields_ = [("input_multiplier", c_int32), ("input_left_shift", c_int32), ("diff_min", c_int32)]


def load(path):
    """The library at ``path`` with argument and result types declared."""
    lib = ctypes.CDLL(path)
    p = ctypes.POINTER
    lib.qgt_status_name.restype = ctypes.c_char_p
    lib.qgt_layer_parse.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                                    p(Layer)]
    lib.qgt_quant_params_init.argtypes = [p(Filter), c_uint32, c_uint32, p(QuantParams)]
    lib.qgt_scale_mantissa_bits.restype = c_uint32
    lib.qgt_activation_range.argtypes = [c_uint8, TensorQuant, p(Range)]
    lib.qgt_conv_params_init.argtypes = [p(Layer), p(Dims), TensorQuant, TensorQuant, p(ConvParams), p(Dims)]
    lib.qgt_fc_params_init.argtypes = [p(Layer), c_int32, TensorQuant, TensorQuant, p(FcParams), p(Dims), p(Dims)]
    lib.qgt_softmax_params_init.argtypes = [c_uint32, c_uint32, TensorQuant, p(SoftmaxParams)]
    for name, params in (("conv2d", ConvParams), ("depthwise_conv2d", ConvParams), ("fully_connected", FcParams)):
        size = getattr(lib, f"qgt_{name}_scratch_size")
        size.argtypes = [p(params), p(Dims), p(Filter), p(Dims)]
        size.restype = ctypes.c_size_t
        getattr(lib, f"qgt_{name}").argtypes = [p(params), p(QuantParams), p(Dims), ctypes.c_void_p, p(Filter), p(Dims),
                                                ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    return lib


def aligned(data, offset=0):
    """A ctypes buffer holding ``data`` at a 16-byte aligned address plus ``offset``; (buffer, address)."""
    buffer = ctypes.create_string_buffer(len(data) + 32)
    start = (-ctypes.addressof(buffer)) % 16 + offset
    ctypes.memmove(ctypes.addressof(buffer) + start, bytes(data), len(data))
    return buffer, ctypes.addressof(buffer) + start


def quant(scale, zero_point):
    return TensorQuant(requant.float32_bits(scale), int(zero_point))


class Prepared:
    """A parsed layer with its params, quant table, dims and scratch, as an adapter's Prepare leaves them."""

    def __init__(self, lib, kind, options, blob, input_dims, input_q, output_q):
        self.lib, self.kind = lib, kind
        self.options_buffer, self.options = aligned(options)
        self.blob_buffer, self.blob = aligned(blob)
        self.layer, self.quant = Layer(), QuantParams()
        self.status = lib.qgt_layer_parse(OPS[kind], self.options, len(options), self.blob, len(blob),
                                          ctypes.byref(self.layer))
        self.output_dims = Dims()
        if kind == "FULLY_CONNECTED":
            self.params, self.input_dims = FcParams(), Dims()
            name = "fully_connected"
            init = lambda: lib.qgt_fc_params_init(ctypes.byref(self.layer), int(np.prod(input_dims)), input_q,  # noqa: E731
                                                  output_q, ctypes.byref(self.params), ctypes.byref(self.input_dims),
                                                  ctypes.byref(self.output_dims))
        else:
            self.params, self.input_dims = ConvParams(), Dims(*input_dims)
            name = "conv2d" if kind == "CONV_2D" else "depthwise_conv2d"
            init = lambda: lib.qgt_conv_params_init(ctypes.byref(self.layer), ctypes.byref(self.input_dims), input_q,  # noqa: E731
                                                    output_q, ctypes.byref(self.params), ctypes.byref(self.output_dims))
        self.kernel = getattr(lib, f"qgt_{name}")
        self.scratch_size = getattr(lib, f"qgt_{name}_scratch_size")
        if self.status == 0:
            self.status = init()
        if self.status == 0:
            self.status = lib.qgt_quant_params_init(ctypes.byref(self.layer.filter), input_q.scale_bits,
                                                    output_q.scale_bits, ctypes.byref(self.quant))

    def scratch_bytes(self):
        return self.scratch_size(ctypes.byref(self.params), ctypes.byref(self.input_dims),
                                 ctypes.byref(self.layer.filter), ctypes.byref(self.output_dims))

    def run(self, x, scratch_bytes=None):
        """(status, int8 output shaped by the output dims)."""
        scratch_bytes = self.scratch_bytes() if scratch_bytes is None else scratch_bytes
        scratch, scratch_at = aligned(b"\x00" * max(scratch_bytes, 1))
        source = np.ascontiguousarray(x, np.int8)
        d = self.output_dims
        out = np.zeros(d.n * d.h * d.w * d.c, np.int8)
        status = self.kernel(ctypes.byref(self.params), ctypes.byref(self.quant), ctypes.byref(self.input_dims),
                             source.ctypes.data, ctypes.byref(self.layer.filter), ctypes.byref(self.output_dims),
                             out.ctypes.data, scratch_at, scratch_bytes)
        return status, out.reshape(d.n, d.h, d.w, d.c)

"""ctypes bindings of the sketch-side C functions of the QGT library (arduino/QGT/src/qgt_camera.h,
qgt_person.h) for the host tests; the structs mirror the headers field by field."""

import ctypes

import numpy as np
import pytest

from tflm_export import requant, toolchain

FORMATS = {"gray8": 0, "rgb565": 1}


class Dims(ctypes.Structure):
    _fields_ = [("n", ctypes.c_int32), ("h", ctypes.c_int32), ("w", ctypes.c_int32), ("c", ctypes.c_int32)]


class Frame(ctypes.Structure):
    _fields_ = [("pixels", ctypes.c_void_p), ("width", ctypes.c_int32), ("height", ctypes.c_int32),
                ("format", ctypes.c_int)]


class Window(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int32), ("y", ctypes.c_int32), ("w", ctypes.c_int32), ("h", ctypes.c_int32)]


class PersonDetector(ctypes.Structure):
    _fields_ = [("classes", ctypes.c_int32), ("person_index", ctypes.c_int32), ("scale_bits", ctypes.c_uint32),
                ("zero_point", ctypes.c_int32), ("on_permille", ctypes.c_int32), ("off_permille", ctypes.c_int32),
                ("present", ctypes.c_int32)]


class Library:
    """The host build of the library (toolchain.build_host_library) with the sketch functions typed."""

    def __init__(self, folder):
        self.lib = ctypes.CDLL(toolchain.build_host_library(folder, "libqgt_sketch.so"))
        self.lib.qgt_status_name.restype = ctypes.c_char_p
        self.lib.qgt_status_name.argtypes = [ctypes.c_int]
        pointer, i32, u32 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_uint32
        for name, arguments in (("qgt_camera_window", [i32, i32, i32, i32, pointer]),
                                ("qgt_camera_to_input", [pointer] * 4),
                                ("qgt_person_init", [pointer, i32, i32, u32, i32, i32, i32]),
                                ("qgt_person_score", [pointer] * 3), ("qgt_person_update", [pointer] * 3)):
            getattr(self.lib, name).restype = ctypes.c_int
            getattr(self.lib, name).argtypes = arguments

    def status_name(self, status):
        return self.lib.qgt_status_name(status).decode()

    def window(self, width, height, out_w, out_h):
        """(status name, (x, y, w, h))."""
        window = Window()
        status = self.lib.qgt_camera_window(width, height, out_w, out_h, ctypes.byref(window))
        return self.status_name(status), (window.x, window.y, window.w, window.h)

    def to_input(self, frame, width, height, fmt, table, input_shape, output=None):
        """(status name, (h, w, c) int8 input); ``output`` (an int8 array) may be passed to test overlaps."""
        pixels = np.frombuffer(bytes(frame), np.uint8).copy() if not isinstance(frame, np.ndarray) else frame
        table = np.ascontiguousarray(table, np.int8)
        h, w, c = input_shape
        result = np.full((h, w, c), 99, np.int8) if output is None else output
        frame_struct = Frame(pixels.ctypes.data, width, height, FORMATS[fmt])
        status = self.lib.qgt_camera_to_input(ctypes.byref(frame_struct), table.ctypes.data,
                                              ctypes.byref(Dims(1, h, w, c)), result.ctypes.data)
        return self.status_name(status), result

    def detector(self, classes, person_index, scale, zero_point, on_permille, off_permille):
        """(status name, detector struct)."""
        detector = PersonDetector()
        status = self.lib.qgt_person_init(ctypes.byref(detector), classes, person_index,
                                          requant.float32_bits(scale), zero_point, on_permille, off_permille)
        return self.status_name(status), detector

    def score(self, detector, output):
        output = np.ascontiguousarray(output, np.int8)
        permille = ctypes.c_int32(-1)
        status = self.lib.qgt_person_score(ctypes.byref(detector), output.ctypes.data, ctypes.byref(permille))
        return self.status_name(status), permille.value

    def update(self, detector, output):
        """(status name, score, decision)."""
        output = np.ascontiguousarray(output, np.int8)
        permille = ctypes.c_int32(-1)
        status = self.lib.qgt_person_update(ctypes.byref(detector), output.ctypes.data, ctypes.byref(permille))
        return self.status_name(status), permille.value, bool(detector.present)


def library_or_skip(tmp_path_factory):
    """The library built into a fresh folder, or the test skipped with the toolchain's message."""
    try:
        return Library(str(tmp_path_factory.mktemp("sketch_lib")))
    except toolchain.ToolchainMissing as missing:
        pytest.skip(str(missing))

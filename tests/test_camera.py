"""The sketch's camera preprocessing: qgt_camera.c (host build) against its numpy definition,
tflm_export.camera, byte for byte on real frames (QCIF frames made from person96 crops and TFLM's test
images) and odd shapes, plus checks of the definition itself."""

import os

import numpy as np
import pytest
from PIL import Image

from tflm_export import camera

from sketch_ctypes import library_or_skip

HERE = os.path.dirname(os.path.abspath(__file__))
PERSON96_TEST = os.path.join(HERE, "..", "data", "person96", "test")
TFLM_TESTDATA = os.path.join(HERE, "..", "..", "shared", "datasets", "tflm_testdata")
QCIF = (176, 144)


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return library_or_skip(tmp_path_factory)


def person96_crops(count=6):
    """The first ``count`` crops of each class of the bundled person96 test split, (96, 96, 3) uint8."""
    crops = []
    for label in ("person", "non_person"):
        folder = os.path.join(PERSON96_TEST, label)
        for name in sorted(os.listdir(folder))[:count]:
            crops.append(np.asarray(Image.open(os.path.join(folder, name)).convert("RGB")))
    return crops


def tflm_test_images():
    """TFLM's person.bmp (int8 values stored as raw bytes) and no_person.bmp (plain pixels) as uint8 gray."""
    if not os.path.isdir(TFLM_TESTDATA):
        pytest.skip(f"{TFLM_TESTDATA} not found (../shared is absent)")
    person = np.asarray(Image.open(os.path.join(TFLM_TESTDATA, "person.bmp")))
    no_person = np.asarray(Image.open(os.path.join(TFLM_TESTDATA, "no_person.bmp")))
    return [(person.astype(np.int8).astype(np.int16) + 128).astype(np.uint8), no_person]


def random_table(seed=0):
    return np.random.default_rng(seed).integers(-128, 128, 256).astype(np.int8)


@pytest.mark.parametrize("fmt", ["rgb565", "gray8"])
@pytest.mark.parametrize("channels", [3, 1])
def test_person96_frames_give_the_same_input_bytes(lib, fmt, channels):
    table = random_table()
    for crop in person96_crops():
        frame = camera.frame_from_image(crop, *QCIF, fmt)
        expected = camera.to_input(frame, *QCIF, fmt, table, (96, 96, channels))
        status, got = lib.to_input(frame, *QCIF, fmt, table, (96, 96, channels))
        assert status == "QGT_OK"
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("fmt", ["rgb565", "gray8"])
def test_tflm_test_images_give_the_same_input_bytes(lib, fmt):
    table = random_table(1)
    for image in tflm_test_images():
        frame = camera.frame_from_image(image, *QCIF, fmt)
        for shape in ((96, 96, 1), (96, 96, 3)):
            status, got = lib.to_input(frame, *QCIF, fmt, table, shape)
            assert status == "QGT_OK"
            np.testing.assert_array_equal(got, camera.to_input(frame, *QCIF, fmt, table, shape))


@pytest.mark.parametrize("size, shape", [
    ((160, 120), (96, 96, 3)),   # QQVGA
    ((120, 160), (96, 96, 1)),   # portrait: the window keeps the width
    ((64, 48), (96, 96, 3)),     # upscaling
    ((176, 144), (30, 50, 3)),   # a wide input: whole width, middle rows
    ((177, 143), (7, 5, 1)),     # odd sizes, non-integer steps
    ((3, 1), (1, 1, 3)),
])
@pytest.mark.parametrize("fmt", ["rgb565", "gray8"])
def test_random_frames_of_any_shape_give_the_same_input_bytes(lib, size, shape, fmt):
    width, height = size
    rng = np.random.default_rng(width * 1000 + height)
    frame = rng.integers(0, 256, width * height * (2 if fmt == "rgb565" else 1), dtype=np.uint8).tobytes()
    table = random_table(2)
    status, got = lib.to_input(frame, width, height, fmt, table, shape)
    assert status == "QGT_OK"
    np.testing.assert_array_equal(got, camera.to_input(frame, width, height, fmt, table, shape))


def test_the_qcif_window_is_the_centred_square(lib):
    assert camera.window(176, 144, 96, 96) == (16, 0, 144, 144)
    for args in ((176, 144, 96, 96), (120, 160, 96, 96), (176, 144, 50, 30), (5, 5, 7, 3)):
        assert lib.window(*args) == ("QGT_OK", camera.window(*args))


def test_the_area_resize_averages_whole_blocks_exactly():
    """An integer factor makes each output pixel the mean of its block, rounded half up."""
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    got = camera.resize(gray.tobytes(), 8, 8, "gray8", (4, 4, 1))[..., 0]
    blocks = gray.astype(np.int64).reshape(4, 2, 4, 2).sum(axis=(1, 3))
    np.testing.assert_array_equal(got, (blocks + 2) // 4)
    constant = np.full((144, 176), 77, np.uint8).tobytes()
    assert np.all(camera.resize(constant, 176, 144, "gray8", (96, 96, 3)) == 77)


def test_rgb565_fields_widen_by_repeating_their_top_bits():
    words = np.array([0xFFFF, 0xF800, 0x07E0, 0x001F, 0x0000, 0x8410], ">u2").tobytes()
    values = camera.frame_values(words, 6, 1, "rgb565", 3)[0]
    assert values.tolist() == [[255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [0, 0, 0],
                               [132, 130, 132]]
    assert camera.frame_values(words, 6, 1, "rgb565", 1)[0, :, 0].tolist() == [255, 77, 149, 29, 0, 131]


def test_synthetic_frames_store_the_image_as_the_camera_would():
    image = np.zeros((96, 96, 3), np.uint8)
    image[..., 0] = 255
    frame = camera.frame_from_image(image, *QCIF, "rgb565")
    assert len(frame) == 176 * 144 * 2 and frame[:2] == b"\xf8\x00"
    gray = camera.frame_from_image(image, *QCIF, "gray8")
    assert len(gray) == 176 * 144 and set(gray) == {77}


def test_the_table_maps_each_value(lib):
    table = np.arange(256).astype(np.uint8).view(np.int8)  # identity: the input shows the resized values
    frame = camera.frame_from_image(person96_crops(1)[0], *QCIF, "rgb565")
    np.testing.assert_array_equal(camera.to_input(frame, *QCIF, "rgb565", table, (96, 96, 3)).view(np.uint8),
                                  camera.resize(frame, *QCIF, "rgb565", (96, 96, 3)))


@pytest.mark.parametrize("width, height, shape", [
    (4096, 144, (96, 96, 3)),   # frame side over QGT_CAMERA_MAX_SIDE
    (176, 144, (96, 96, 2)),    # 2 channels
    (176, 144, (0, 96, 3)),     # empty input
    (1, 176, (1, 200, 1)),      # no window of that shape fits
])
def test_bad_shapes_are_refused_by_both(lib, width, height, shape):
    frame = bytes(width * height * 2)
    with pytest.raises(camera.CameraError):
        camera.to_input(frame, width, height, "rgb565", random_table(), shape)
    status, got = lib.to_input(frame, width, height, "rgb565", random_table(), shape)
    assert status == "QGT_ERR_SHAPE" and np.all(got == 99)  # nothing written


def test_bad_input_is_named():
    with pytest.raises(camera.CameraError, match="needs 50688 bytes"):
        camera.to_input(bytes(100), *QCIF, "rgb565", random_table(), (96, 96, 3))
    with pytest.raises(camera.CameraError, match="format 'yuv'"):
        camera.to_input(bytes(100), *QCIF, "yuv", random_table(), (96, 96, 3))
    with pytest.raises(camera.CameraError, match="256 entries"):
        camera.to_input(bytes(176 * 144 * 2), *QCIF, "rgb565", np.zeros(255), (96, 96, 3))


def test_an_input_overlapping_the_frame_is_refused(lib):
    buffer = np.zeros(176 * 144 * 2, np.uint8)
    status, _ = lib.to_input(buffer, *QCIF, "rgb565", random_table(), (96, 96, 1), output=buffer[:96 * 96].view(np.int8))
    assert status == "QGT_ERR_ARGUMENT"

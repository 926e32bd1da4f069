"""The camera preprocessing of the Arduino sketch in numpy: frame -> centred window -> area resize -> int8
model input through the model's 256-entry table, integer for integer what ``arduino/QGT/src/qgt_camera.c``
computes (the tests hold the two to the same bytes). This module is the definition.

Frames are what Arduino_OV767X's ``readFrame`` fills: ``gray8`` (1 byte per pixel) or ``rgb565`` (2 bytes
per pixel, high byte first). :func:`frame_from_image` makes such frames from ordinary images, for tests and
the preprocessing benchmark.
"""

import numpy as np

FORMATS = ("gray8", "rgb565")
MAX_SIDE = 2048  # QGT_CAMERA_MAX_SIDE
MAX_INPUT_SIDE = 1024
LUMA_WEIGHTS = (77, 150, 29)  # (77 r + 150 g + 29 b + 128) >> 8: BT.601 luma in 1/256 steps


class CameraError(ValueError):
    """A frame or input shape the preprocessing refuses (qgt_camera.c returns a status for the same)."""


def window(width, height, out_w, out_h):
    """(x, y, w, h): the centred window of a width x height frame with the aspect ratio of the input."""
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise CameraError(f"frame of {width}x{height} pixels: each side must be 1..{MAX_SIDE}")
    if not (0 < out_w <= MAX_INPUT_SIDE and 0 < out_h <= MAX_INPUT_SIDE):
        raise CameraError(f"model input of {out_w}x{out_h} pixels: each side must be 1..{MAX_INPUT_SIDE}")
    if width * out_h >= height * out_w:
        w, h = height * out_w // out_h, height
    else:
        w, h = width, width * out_h // out_w
    if w == 0 or h == 0:
        raise CameraError(f"frame of {width}x{height} pixels has no window of the {out_w}x{out_h} input's shape")
    return (width - w) // 2, (height - h) // 2, w, h


def area_weights(span, out):
    """(out, span) int64 matrix: overlap of output pixel i, covering [i * span, (i + 1) * span), with source
    pixel j, covering [j * out, (j + 1) * out); each row sums to ``span``."""
    i = np.arange(out)[:, None]
    j = np.arange(span)[None, :]
    low = np.maximum(i * span, j * out)
    high = np.minimum((i + 1) * span, (j + 1) * out)
    return np.maximum(high - low, 0).astype(np.int64)


def _rgb_from_rgb565(data, height, width):
    words = (data[0::2].astype(np.uint32) << 8) | data[1::2]
    r, g, b = words >> 11, (words >> 5) & 0x3F, words & 0x1F
    rgb = np.stack([(r << 3) | (r >> 2), (g << 2) | (g >> 4), (b << 3) | (b >> 2)], axis=-1)
    return rgb.reshape(height, width, 3)


def luma(rgb):
    """(77 r + 150 g + 29 b + 128) >> 8 of (..., 3) 8-bit values."""
    rgb = np.asarray(rgb, np.uint32)
    return (LUMA_WEIGHTS[0] * rgb[..., 0] + LUMA_WEIGHTS[1] * rgb[..., 1] + LUMA_WEIGHTS[2] * rgb[..., 2] + 128) >> 8


def frame_values(frame, width, height, fmt, channels):
    """(height, width, channels) uint32 8-bit values of a frame as the resize sees them."""
    if fmt not in FORMATS:
        raise CameraError(f"frame format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if channels not in (1, 3):
        raise CameraError(f"model input of {channels} channels: expected 1 or 3")
    data = np.frombuffer(bytes(frame), np.uint8)
    expected = width * height * (2 if fmt == "rgb565" else 1)
    if data.size != expected:
        raise CameraError(f"{fmt} frame of {width}x{height} needs {expected} bytes, got {data.size}")
    if fmt == "gray8":
        gray = data.reshape(height, width, 1).astype(np.uint32)
        return np.repeat(gray, channels, axis=-1)
    rgb = _rgb_from_rgb565(data, height, width)
    return luma(rgb)[..., None] if channels == 1 else rgb


def resize(frame, width, height, fmt, input_shape):
    """(h, w, c) uint8: the frame's centred window area-resized to ``input_shape`` (h, w, c), before the table."""
    out_h, out_w, channels = input_shape
    x, y, w, h = window(width, height, out_w, out_h)
    values = frame_values(frame, width, height, fmt, channels)[y:y + h, x:x + w].astype(np.int64)
    rows = np.tensordot(area_weights(h, out_h), values, axes=(1, 0))  # (out_h, w, c)
    sums = np.tensordot(rows, area_weights(w, out_w), axes=(1, 1)).transpose(0, 2, 1)  # (out_h, out_w, c)
    area = w * h
    return ((sums + area // 2) // area).astype(np.uint8)


def to_input(frame, width, height, fmt, table, input_shape):
    """(h, w, c) int8 model input of a frame: :func:`resize`, then ``table[value]`` (256 int8 entries)."""
    table = np.asarray(table)
    if table.shape != (256,):
        raise CameraError(f"input table of shape {table.shape}: expected 256 entries")
    return table.astype(np.int8)[resize(frame, width, height, fmt, input_shape)]


def frame_from_image(image, width=176, height=144, fmt="rgb565"):
    """A synthetic camera frame (bytes) of an (h, w, 3) or (h, w) uint8 image: scaled (bicubic) to fill the
    frame's height, centred, the columns beside it repeating the image's edge columns, then stored as the
    camera stores ``fmt`` (RGB565 fields truncated from 8 bits; gray8 is the luma of an RGB image)."""
    from PIL import Image  # deferred: only frame synthesis needs it

    image = np.asarray(image, np.uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
        raise CameraError(f"image of shape {image.shape}: expected (h, w, 3) or (h, w)")
    side = height
    scaled_w = max(1, round(image.shape[1] * side / image.shape[0]))
    scaled = np.asarray(Image.fromarray(image).resize((scaled_w, side), Image.BICUBIC))
    left = (width - scaled_w) // 2
    columns = np.clip(np.arange(width) - left, 0, scaled_w - 1)
    scaled = scaled[:, columns]
    if fmt == "gray8":
        gray = scaled if scaled.ndim == 2 else luma(scaled).astype(np.uint8)
        return gray.astype(np.uint8).tobytes()
    if fmt != "rgb565":
        raise CameraError(f"frame format {fmt!r}: expected one of {', '.join(FORMATS)}")
    rgb = np.repeat(scaled[..., None], 3, axis=-1) if scaled.ndim == 2 else scaled
    rgb = rgb.astype(np.uint16)
    words = ((rgb[..., 0] >> 3) << 11) | ((rgb[..., 1] >> 2) << 5) | (rgb[..., 2] >> 3)
    return words.astype(">u2").tobytes()

/* Camera frame -> quantized model input (qgt_camera.h). */
#include "qgt_camera.h"

#include <stddef.h>

/* The largest model input side: each output pixel needs its axis spans, computed on the fly. */
#define QGT_CAMERA_MAX_INPUT_SIDE 1024

qgt_status qgt_camera_window(int32_t width, int32_t height, int32_t out_w, int32_t out_h, qgt_window *window) {
  if (window == NULL) return QGT_ERR_ARGUMENT;
  if (width <= 0 || height <= 0 || width > QGT_CAMERA_MAX_SIDE || height > QGT_CAMERA_MAX_SIDE || out_w <= 0 ||
      out_h <= 0 || out_w > QGT_CAMERA_MAX_INPUT_SIDE || out_h > QGT_CAMERA_MAX_INPUT_SIDE) {
    return QGT_ERR_SHAPE;
  }
  qgt_window w;
  if ((int64_t)width * out_h >= (int64_t)height * out_w) { /* wider than the input: keep the whole height */
    w.h = height;
    w.w = (int32_t)((int64_t)height * out_w / out_h);
  } else {
    w.w = width;
    w.h = (int32_t)((int64_t)width * out_h / out_w);
  }
  if (w.w == 0 || w.h == 0) return QGT_ERR_SHAPE;
  w.x = (width - w.w) / 2;
  w.y = (height - w.h) / 2;
  *window = w;
  return QGT_OK;
}

/* 8-bit red, green, blue of an RGB565 pixel stored high byte first. */
static void rgb565(const uint8_t *p, uint32_t rgb[3]) {
  const uint32_t v = (uint32_t)p[0] << 8 | p[1];
  const uint32_t r = v >> 11, g = (v >> 5) & 0x3Fu, b = v & 0x1Fu;
  rgb[0] = r << 3 | r >> 2;
  rgb[1] = g << 2 | g >> 4;
  rgb[2] = b << 3 | b >> 2;
}

/* The source pixel's values for a channels-channel input. */
static void source_pixel(const qgt_frame *frame, int32_t x, int32_t y, int32_t channels, uint32_t value[3]) {
  const size_t index = (size_t)y * (size_t)frame->width + (size_t)x;
  if (frame->format == QGT_FRAME_GRAY8) {
    value[0] = value[1] = value[2] = frame->pixels[index];
    return;
  }
  rgb565(frame->pixels + 2 * index, value);
  if (channels == 1) value[0] = (77u * value[0] + 150u * value[1] + 29u * value[2] + 128u) >> 8;
}

/* Overlap of output pixel i (covering [i * span, (i + 1) * span)) with source pixel j (covering
 * [j * out, (j + 1) * out)), in units of 1/out source pixels. */
static uint32_t overlap(int32_t i, int32_t j, int32_t span, int32_t out) {
  const int32_t lo = i * span > j * out ? i * span : j * out;
  const int32_t hi = (i + 1) * span < (j + 1) * out ? (i + 1) * span : (j + 1) * out;
  return (uint32_t)(hi - lo);
}

qgt_status qgt_camera_to_input(const qgt_frame *frame, const int8_t table[256], const qgt_dims *input_dims,
                               int8_t *input) {
  if (frame == NULL || frame->pixels == NULL || table == NULL || input_dims == NULL || input == NULL) {
    return QGT_ERR_ARGUMENT;
  }
  if (frame->format != QGT_FRAME_GRAY8 && frame->format != QGT_FRAME_RGB565) return QGT_ERR_ARGUMENT;
  const int32_t out_h = input_dims->h, out_w = input_dims->w, channels = input_dims->c;
  if (input_dims->n != 1 || (channels != 1 && channels != 3)) return QGT_ERR_SHAPE;
  qgt_window window;
  const qgt_status status = qgt_camera_window(frame->width, frame->height, out_w, out_h, &window);
  if (status != QGT_OK) return status;
  const size_t frame_bytes = (size_t)frame->width * (size_t)frame->height *
                             (frame->format == QGT_FRAME_RGB565 ? 2u : 1u);
  const size_t input_bytes = (size_t)out_h * (size_t)out_w * (size_t)channels;
  const uint8_t *in_start = (const uint8_t *)input;
  if (in_start < frame->pixels + frame_bytes && frame->pixels < in_start + input_bytes) return QGT_ERR_ARGUMENT;

  /* Weights per axis sum to the window side, so the sum of one output pixel is at most
   * 255 * w * h <= 255 * 2048^2 < 2^32. */
  const uint32_t area = (uint32_t)window.w * (uint32_t)window.h;
  int8_t *out = input;
  for (int32_t oy = 0; oy < out_h; ++oy) {
    const int32_t y_first = oy * window.h / out_h, y_last = ((oy + 1) * window.h - 1) / out_h;
    for (int32_t ox = 0; ox < out_w; ++ox) {
      const int32_t x_first = ox * window.w / out_w, x_last = ((ox + 1) * window.w - 1) / out_w;
      uint32_t sum[3] = {0u, 0u, 0u};
      for (int32_t y = y_first; y <= y_last; ++y) {
        const uint32_t wy = overlap(oy, y, window.h, out_h);
        for (int32_t x = x_first; x <= x_last; ++x) {
          const uint32_t weight = wy * overlap(ox, x, window.w, out_w);
          uint32_t value[3];
          source_pixel(frame, window.x + x, window.y + y, channels, value);
          for (int32_t c = 0; c < channels; ++c) sum[c] += weight * value[c];
        }
      }
      for (int32_t c = 0; c < channels; ++c) *out++ = table[(sum[c] + area / 2u) / area];
    }
  }
  return QGT_OK;
}

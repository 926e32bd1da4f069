/* Camera frame -> quantized model input, integer-exact: the centred window of the model's aspect ratio,
 * area-resized to the model input, each 8-bit value mapped to int8 through the model's 256-entry table.
 * tflm_export/camera.py is the same computation in numpy; the tests require both to agree byte for byte.
 *
 * C99, no allocation, no global state, no floating point (the kernel library's rules; statuses are its
 * qgt_status). */
#ifndef QGT_CAMERA_H
#define QGT_CAMERA_H

#include <stdint.h>

#include "qgt_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Largest frame side accepted: keeps every weighted sum of the area resize within 32 bits. */
#define QGT_CAMERA_MAX_SIDE 2048

typedef enum {
  QGT_FRAME_GRAY8 = 0,  /* 1 byte per pixel (Arduino_OV767X GRAYSCALE: the Y bytes of YUV422) */
  QGT_FRAME_RGB565 = 1  /* 2 bytes per pixel, high byte first (RRRRRGGG GGGBBBBB), as Arduino_OV767X stores RGB565 */
} qgt_frame_format;

typedef struct {
  const uint8_t *pixels; /* rows top to bottom, densely packed */
  int32_t width, height;
  qgt_frame_format format;
} qgt_frame;

/* A window of a frame: top-left corner and size in pixels. */
typedef struct {
  int32_t x, y, w, h;
} qgt_window;

/* The centred window of a width x height frame with the aspect ratio of an out_w x out_h input: the whole
 * height and the middle columns when the frame is wider (x = (width - w) / 2, w = height * out_w / out_h
 * rounded down), else the whole width and the middle rows. QCIF 176x144 for 96x96: x 16, y 0, 144 x 144. */
qgt_status qgt_camera_window(int32_t width, int32_t height, int32_t out_w, int32_t out_h, qgt_window *window);

/* The quantized model input (input_dims: n 1, h x w, c 1 or 3, NHWC) of a frame: the window above,
 * resized by area averaging (output pixel i of an axis covers source coordinates [i*W/w, (i+1)*W/w) of a
 * window of W pixels; every source pixel counts by its overlap; the sum is divided by the window's area and
 * rounded half up), then table[value] for each 8-bit value.
 *
 * Colours: RGB565 fields widen to 8 bits by repeating their top bits (r8 = r5 << 3 | r5 >> 2, g8 = g6 << 2
 * | g6 >> 4); a 1-channel input takes each source pixel's luma (77 r8 + 150 g8 + 29 b8 + 128) >> 8 before
 * resizing; a 3-channel input from a gray frame repeats the gray value. Refuses frames larger than
 * QGT_CAMERA_MAX_SIDE per side (QGT_ERR_SHAPE) and an input overlapping the frame (QGT_ERR_ARGUMENT). */
qgt_status qgt_camera_to_input(const qgt_frame *frame, const int8_t table[256], const qgt_dims *input_dims,
                               int8_t *input);

#ifdef __cplusplus
}
#endif

#endif /* QGT_CAMERA_H */

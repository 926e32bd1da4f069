/* The person_detection sketch's loop() without the board: camera frame -> qgt_camera_to_input (into
 * <model>_input(), as the sketch writes it) -> <model>_invoke -> qgt_person_update, frame after frame,
 * with the generated C model (qgt_model.h / .c, tflm_export.codegen) and the QGT library. One program for the
 * host (stdio) and the emulated Cortex-M4 (semihosting; qgt_runner_mark runs before and after the
 * preprocessing and the invoke: the instruction counter's region marker). tflm_export/sketch_runner.py writes
 * and reads the files:
 *
 *   frames:  "QGTF", u32 count, width, height, format (0 gray8, 1 rgb565), on_permille, off_permille, then
 *            count frames of width * height * (1 or 2) bytes, each padded to 4 bytes
 *   results: per frame: int32 status (the first that was not QGT_OK), score, present, then the model input
 *            (<MODEL>_INPUT_BYTES) and output (<MODEL>_OUTPUT_BYTES), each padded to 4 bytes
 *
 * Compiled with -DQGT_RUNNER_MODEL=<prefix> and -DQGT_RUNNER_MACRO=<PREFIX> (the generated model's C prefix,
 * e.g. person_model and PERSON_MODEL).
 */
#include <stdint.h>
#include <string.h>

#include "qgt_camera.h"
#include "qgt_model.h"
#include "qgt_person.h"

#define MAX_FRAME_BYTES (640u * 480u * 2u)
#define QGT_CAT_(a, b) a##b
#define QGT_CAT(a, b) QGT_CAT_(a, b)
#define MODEL(name) QGT_CAT(QGT_RUNNER_MODEL, name)
#define MACRO(name) QGT_CAT(QGT_RUNNER_MACRO, name)

#define QGT_RUNNER_INPUT "frames.bin"
#include "runner_io.h"

__attribute__((noinline)) void qgt_runner_mark(void) { __asm__ volatile("" ::: "memory"); }

static uint32_t padded(uint32_t bytes) { return (bytes + 3u) & ~3u; }

static void write_padded(const void *data, uint32_t bytes) {
  static const uint8_t zeros[4] = {0, 0, 0, 0};
  write_bytes(data, bytes);
  write_bytes(zeros, padded(bytes) - bytes);
}

/* uint32 holding a float32's bits, so that the output scale reaches qgt_person_init as its bit pattern. */
static uint32_t float_bits(float value) {
  uint32_t bits;
  memcpy(&bits, &value, sizeof bits);
  return bits;
}

int main(int argc, char **argv) {
  static uint8_t frame[MAX_FRAME_BYTES] __attribute__((aligned(4)));
  static int8_t input_copy[MACRO(_INPUT_BYTES)], output[MACRO(_OUTPUT_BYTES)];
  uint32_t header[7];
  qgt_person_detector detector;
  if (!open_files(argc, argv)) return 2;
  if (!read_bytes(header, sizeof header) || memcmp(header, "QGTF", 4) != 0) return 3;
  const uint32_t count = header[1];
  const qgt_frame image = {frame, (int32_t)header[2], (int32_t)header[3], (qgt_frame_format)header[4]};
  const uint32_t frame_bytes = header[2] * header[3] * (header[4] == QGT_FRAME_RGB565 ? 2u : 1u);
  if (frame_bytes > MAX_FRAME_BYTES) return 4;
  const qgt_dims input_dims = {1, MACRO(_INPUT_H), MACRO(_INPUT_W), MACRO(_INPUT_C)};
  int32_t status = qgt_person_init(&detector, MACRO(_OUTPUT_BYTES), MACRO(_PERSON_INDEX),
                                   float_bits(MACRO(_OUTPUT_SCALE)), MACRO(_OUTPUT_ZERO_POINT),
                                   (int32_t)header[5], (int32_t)header[6]);
  if (status != QGT_OK) return 5;
  for (uint32_t i = 0; i < count; ++i) {
    int32_t score = -1;
    if (!read_bytes(frame, padded(frame_bytes))) return 6;
    memset(output, 0, sizeof output);
    qgt_runner_mark();
    status = qgt_camera_to_input(&image, MODEL(_pixel_to_input), &input_dims, MODEL(_input)());
    qgt_runner_mark();
    if (status == QGT_OK) {
      memcpy(input_copy, MODEL(_input)(), sizeof input_copy); /* invoke overwrites it with activations */
      qgt_runner_mark();
      status = MODEL(_invoke)(MODEL(_input)(), output);
      qgt_runner_mark();
    }
    if (status == QGT_OK) status = qgt_person_update(&detector, output, &score);
    const int32_t fields[3] = {status, score, detector.present};
    write_bytes(fields, sizeof fields);
    write_padded(input_copy, sizeof input_copy);
    write_padded(output, sizeof output);
  }
  close_files();
  return 0;
}

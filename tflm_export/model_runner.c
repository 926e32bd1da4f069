/* Runs a generated C model (tflm_export.codegen) on inputs from a file and writes its outputs. One program for
 * the host (stdio, the copied inputs malloc'ed at their exact size) and for the emulated Cortex-M4
 * (semihosting; the peak stack of each invoke measured by painting the stack region below the caller).
 * tflm_export/model_runner.py writes and reads the files:
 *
 *   inputs:  "QGTI", u32 count, u32 input bytes, u32 output bytes, then count inputs (each padded to 4 bytes)
 *   results: per input: int32 status, u32 peak stack bytes (0 on the host), output (padded to 4 bytes)
 *
 * Even inputs are read into <model>_input() and passed from there (no copy), odd ones from an array of their
 * own (invoke copies them). Compiled with -DQGT_RUNNER_MODEL=<prefix> and -DQGT_MODEL_LAYER_HOOK=
 * qgt_runner_layer: the instruction counter's region marker runs before invoke, after each op and after
 * invoke returns.
 */
#include <stdint.h>
#include <string.h>

#include "qgt_model.h"

#define QGT_CAT_(a, b) a##b
#define QGT_CAT(a, b) QGT_CAT_(a, b)
#define MODEL(name) QGT_CAT(QGT_RUNNER_MODEL, name)

__attribute__((noinline)) void qgt_runner_layer(int op) { __asm__ volatile("" : : "r"(op) : "memory"); }

#define QGT_RUNNER_INPUT "inputs.bin"
#include "runner_io.h"

#ifdef QGT_RUNNER_SEMIHOST
static uint8_t copied[1u << 20] __attribute__((aligned(4)));
static void *copy_buffer(size_t bytes) { return bytes <= sizeof copied ? copied : NULL; }
static void release(void *p) { (void)p; }

extern uint32_t __stack_limit; /* the linker script reserves the stack above it */
#define PAINT 0xA5C3E1F0u

/* invoke with the stack below this frame painted first; *stack_bytes is how deep invoke wrote. */
__attribute__((noinline)) static int invoke(const int8_t *input, int8_t *output, uint32_t *stack_bytes) {
  uint32_t *sp;
  __asm__ volatile("mov %0, sp" : "=r"(sp));
  volatile uint32_t *p = &__stack_limit;
  volatile uint32_t *const top = sp - 4; /* a margin below the words this frame may still write */
  while (p < top) *p++ = PAINT;
  qgt_runner_layer(-1);
  const int status = MODEL(_invoke)(input, output);
  qgt_runner_layer(-2);
  p = &__stack_limit;
  while (p < top && *p == PAINT) ++p;
  *stack_bytes = (uint32_t)((uintptr_t)sp - (uintptr_t)p);
  return status;
}
#else
#include <stdlib.h>
static void *copy_buffer(size_t bytes) { return malloc(bytes); }
static void release(void *p) { free(p); }

static int invoke(const int8_t *input, int8_t *output, uint32_t *stack_bytes) {
  *stack_bytes = 0;
  qgt_runner_layer(-1);
  const int status = MODEL(_invoke)(input, output);
  qgt_runner_layer(-2);
  return status;
}
#endif

static uint32_t padded(uint32_t bytes) { return (bytes + 3u) & ~3u; }

static int skip_padding(uint32_t bytes) {
  uint8_t pad[4];
  return padded(bytes) == bytes || read_bytes(pad, padded(bytes) - bytes);
}

int main(int argc, char **argv) {
  uint32_t header[4];
  static const uint8_t zeros[4] = {0, 0, 0, 0};
  static int8_t output[4096];
  if (!open_files(argc, argv)) return 2;
  if (!read_bytes(header, sizeof header) || memcmp(header, "QGTI", 4) != 0 || header[3] > sizeof output) return 3;
  const uint32_t count = header[1], input_bytes = header[2], output_bytes = header[3];
  for (uint32_t i = 0; i < count; ++i) {
    int8_t *const in_place = MODEL(_input)();
    int8_t *const input = i % 2 == 0 ? in_place : (int8_t *)copy_buffer(input_bytes);
    if (input == NULL || !read_bytes(input, input_bytes) || !skip_padding(input_bytes)) return 4;
    if (input != in_place) memset(in_place, 0x55, input_bytes); /* invoke must copy, not find the bytes there */
    uint32_t stack_bytes;
    const int32_t status = invoke(input, output, &stack_bytes);
    if (input != in_place) release(input);
    write_bytes(&status, sizeof status);
    write_bytes(&stack_bytes, sizeof stack_bytes);
    write_bytes(output, output_bytes);
    write_bytes(zeros, padded(output_bytes) - output_bytes);
  }
  close_files();
  return 0;
}

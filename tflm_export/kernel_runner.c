/* Runs kernel cases from a file through the QGT library the way its adapters do (parse, params, quant,
 * scratch size, kernel) and writes each case's status and output. One program for the host (stdio, every
 * buffer malloc'ed at its exact size, so AddressSanitizer sees any byte out of bounds) and for the emulated
 * Cortex-M4 (semihosting, buffers from a static arena). tflm_export/kernel_runner.py writes and reads the files:
 *
 *   cases:   "QGTC", u32 count, then per case: CASE_FIELDS x int32 header, options, blob, input
 *            (each padded to 4 bytes)
 *   results: per case: int32 status, int32 output bytes, output (padded to 4 bytes)
 */
#include <stdint.h>
#include <string.h>

#include "qgt_kernels.h"

enum { KIND_CONV, KIND_DEPTHWISE, KIND_FULLY_CONNECTED, KIND_AVERAGE_POOL, KIND_SOFTMAX, KIND_ARGMAX };
enum {
  F_KIND, F_N, F_H, F_W, F_C, F_INPUT_SCALE, F_INPUT_ZP, F_OUTPUT_SCALE, F_OUTPUT_ZP,
  F_EXTRA, /* 6 values: pool padding, stride w, stride h, filter w, filter h, activation; softmax beta */
  F_OVERRIDE = F_EXTRA + 6, /* 4 values: output dims passed to the kernel instead of the computed ones */
  F_LAYOUT = F_OVERRIDE + 4, /* 1: output over input (in place / overlapped pointwise) */
  F_SCRATCH_DELTA, F_OPTIONS_LEN, F_BLOB_LEN, F_INPUT_LEN, CASE_FIELDS
};

#define QGT_RUNNER_INPUT "cases.bin"
#include "runner_io.h"

#ifdef QGT_RUNNER_SEMIHOST
static uint8_t arena[3u << 20] __attribute__((aligned(8)));
static size_t arena_used;
static void *allocate(size_t bytes) {
  const size_t start = (arena_used + 7u) & ~(size_t)7u;
  if (bytes > sizeof arena - start) return NULL;
  arena_used = start + bytes;
  return arena + start;
}
static void release_all(void) { arena_used = 0; }
#else
#include <stdlib.h>
static void *blocks[16];
static int block_count;
static void *allocate(size_t bytes) { /* exact sizes, so AddressSanitizer sees any overrun */
  void *p = malloc(bytes ? bytes : 1);
  if (p != NULL) blocks[block_count++] = p;
  return p;
}
static void release_all(void) {
  while (block_count > 0) free(blocks[--block_count]);
}
#endif

/* Called right before and after each kernel call: the instruction counter's region marker. */
__attribute__((noinline)) void qgt_runner_mark(void) { __asm__ volatile("" ::: "memory"); }

static uint32_t padded(uint32_t bytes) { return (bytes + 3u) & ~3u; }

static uint8_t *read_padded(uint32_t bytes) {
  uint8_t *data = (uint8_t *)allocate(padded(bytes));
  if (data == NULL || !read_bytes(data, padded(bytes))) return NULL;
  return data;
}

static void write_result(int32_t status, const void *output, uint32_t bytes) {
  const int32_t head[2] = {status, (int32_t)bytes};
  const uint8_t zeros[3] = {0, 0, 0};
  write_bytes(head, sizeof head);
  if (bytes > 0) write_bytes(output, bytes);
  write_bytes(zeros, padded(bytes) - bytes);
}

static uint32_t count(const qgt_dims *d) { return (uint32_t)d->n * (uint32_t)d->h * (uint32_t)d->w * (uint32_t)d->c; }

static qgt_op op_of(int32_t kind) {
  return kind == KIND_DEPTHWISE ? QGT_OP_DEPTHWISE_CONV_2D : kind == KIND_FULLY_CONNECTED ? QGT_OP_FULLY_CONNECTED
                                                                                           : QGT_OP_CONV_2D;
}

/* Output and input buffers: apart, or (layout 1) overlapped with the output at the start. */
static int place(const int32_t *f, const int8_t *input, uint32_t in_bytes, uint32_t out_bytes, uint32_t input_at,
                 const int8_t **in, int8_t **out) {
  if (f[F_LAYOUT] == 0) {
    *in = input;
    *out = (int8_t *)allocate(out_bytes);
    return *out != NULL;
  }
  const uint32_t total = input_at + in_bytes > out_bytes ? input_at + in_bytes : out_bytes;
  int8_t *buffer = (int8_t *)allocate(total);
  if (buffer == NULL) return 0;
  memcpy(buffer + input_at, input, in_bytes);
  *in = buffer + input_at;
  *out = buffer;
  return 1;
}

static void run_case(const int32_t *f, const uint8_t *options, const uint8_t *blob, const int8_t *input) {
  const qgt_tensor_quant iq = {(uint32_t)f[F_INPUT_SCALE], f[F_INPUT_ZP]}, oq = {(uint32_t)f[F_OUTPUT_SCALE], f[F_OUTPUT_ZP]};
  qgt_dims in_dims = {f[F_N], f[F_H], f[F_W], f[F_C]}, out_dims;
  const qgt_dims override = {f[F_OVERRIDE], f[F_OVERRIDE + 1], f[F_OVERRIDE + 2], f[F_OVERRIDE + 3]};
  const int32_t kind = f[F_KIND];
  const uint32_t in_bytes = (uint32_t)f[F_INPUT_LEN];
  qgt_status status = QGT_OK;
  const int8_t *in = input;
  int8_t *out = NULL;
  void *scratch = NULL;
  size_t scratch_bytes = 0;

  if (kind == KIND_AVERAGE_POOL || kind == KIND_SOFTMAX || kind == KIND_ARGMAX) {
    const uint32_t rows = (uint32_t)f[F_N] * (uint32_t)f[F_H] * (uint32_t)f[F_W];
    if (kind == KIND_AVERAGE_POOL) {
      qgt_pool_params params;
      const qgt_tile stride = {f[F_EXTRA + 1], f[F_EXTRA + 2]}, filter = {f[F_EXTRA + 3], f[F_EXTRA + 4]};
      status = qgt_pool_params_init((uint8_t)f[F_EXTRA], stride, filter, (uint8_t)f[F_EXTRA + 5], &in_dims, oq,
                                    &params, &out_dims);
      if (status == QGT_OK && override.n > 0) out_dims = override;
      if (status == QGT_OK && (out = (int8_t *)allocate(count(&out_dims))) == NULL) status = QGT_ERR_ARGUMENT;
      if (status == QGT_OK) status = qgt_average_pool2d(&params, &in_dims, input, &out_dims, out);
      write_result(status, out, status == QGT_OK ? count(&out_dims) : 0);
    } else if (kind == KIND_SOFTMAX) {
      qgt_softmax_params params;
      status = qgt_softmax_params_init(iq.scale_bits, (uint32_t)f[F_EXTRA], oq, &params);
      if (status == QGT_OK && (out = (int8_t *)allocate(in_bytes)) == NULL) status = QGT_ERR_ARGUMENT;
      if (status == QGT_OK) status = qgt_softmax(&params, (int32_t)rows, f[F_C], input, out);
      write_result(status, out, status == QGT_OK ? in_bytes : 0);
    } else {
      int32_t *indices = (int32_t *)allocate(4u * rows);
      status = indices == NULL ? QGT_ERR_ARGUMENT : qgt_argmax((int32_t)rows, f[F_C], input, indices);
      write_result(status, indices, status == QGT_OK ? 4u * rows : 0);
    }
    return;
  }

  qgt_layer layer;
  qgt_quant_params quant;
  qgt_conv_params conv;
  qgt_fc_params fc;
  status = qgt_layer_parse(op_of(kind), options, (size_t)f[F_OPTIONS_LEN], blob, (size_t)f[F_BLOB_LEN], &layer);
  if (status == QGT_OK) {
    status = kind == KIND_FULLY_CONNECTED
                 ? qgt_fc_params_init(&layer, (int32_t)in_bytes, iq, oq, &fc, &in_dims, &out_dims)
                 : qgt_conv_params_init(&layer, &in_dims, iq, oq, &conv, &out_dims);
  }
  if (status == QGT_OK) status = qgt_quant_params_init(&layer.filter, iq.scale_bits, oq.scale_bits, &quant);
  if (status == QGT_OK && override.n > 0) out_dims = override;
  if (status == QGT_OK) {
    const size_t needed = kind == KIND_CONV ? qgt_conv2d_scratch_size(&conv, &in_dims, &layer.filter, &out_dims)
                          : kind == KIND_DEPTHWISE
                              ? qgt_depthwise_conv2d_scratch_size(&conv, &in_dims, &layer.filter, &out_dims)
                              : qgt_fully_connected_scratch_size(&fc, &in_dims, &layer.filter, &out_dims);
    const int64_t wanted = (int64_t)needed + f[F_SCRATCH_DELTA];
    scratch_bytes = wanted > 0 ? (size_t)wanted : 0;
    scratch = scratch_bytes ? allocate(scratch_bytes) : NULL;
    const uint32_t out_bytes = count(&out_dims);
    const int32_t growth = (int32_t)out_dims.c - (int32_t)in_dims.c;
    const uint32_t pixels = (uint32_t)out_dims.n * (uint32_t)out_dims.h * (uint32_t)out_dims.w;
    const uint32_t input_at = kind != KIND_DEPTHWISE && growth > 0 ? pixels * (uint32_t)growth : 0;
    if (!place(f, input, in_bytes, out_bytes, input_at, &in, &out)) status = QGT_ERR_ARGUMENT;
  }
  if (status == QGT_OK) {
    qgt_runner_mark();
    status = kind == KIND_CONV ? qgt_conv2d(&conv, &quant, &in_dims, in, &layer.filter, &out_dims, out, scratch, scratch_bytes)
             : kind == KIND_DEPTHWISE
                 ? qgt_depthwise_conv2d(&conv, &quant, &in_dims, in, &layer.filter, &out_dims, out, scratch, scratch_bytes)
                 : qgt_fully_connected(&fc, &quant, &in_dims, in, &layer.filter, &out_dims, out, scratch, scratch_bytes);
    qgt_runner_mark();
  }
  write_result(status, out, status == QGT_OK ? count(&out_dims) : 0);
}

int main(int argc, char **argv) {
  uint32_t head[2];
  if (!open_files(argc, argv)) return 2;
  if (!read_bytes(head, sizeof head) || memcmp(head, "QGTC", 4) != 0) return 3;
  for (uint32_t i = 0; i < head[1]; ++i) {
    int32_t f[CASE_FIELDS];
    if (!read_bytes(f, sizeof f)) return 4;
    const uint8_t *options = read_padded((uint32_t)f[F_OPTIONS_LEN]);
    const uint8_t *blob = read_padded((uint32_t)f[F_BLOB_LEN]);
    const uint8_t *input = read_padded((uint32_t)f[F_INPUT_LEN]);
    if (options == NULL || blob == NULL || input == NULL) return 5;
    run_case(f, options, blob, (const int8_t *)input);
    release_all();
  }
  close_files();
  return 0;
}

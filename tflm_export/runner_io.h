/* The file I/O of the runner programs (kernel_runner.c, model_runner.c, sketch_runner.c): on the emulated
 * Cortex-M4 by semihosting, QGT_RUNNER_INPUT in and results.bin out in qemu's working directory; on the host
 * (stdio) the two paths of argv. Define QGT_RUNNER_INPUT, then include once. */
#ifndef QGT_RUNNER_IO_H
#define QGT_RUNNER_IO_H

#include <stddef.h>
#include <stdint.h>

#ifdef QGT_RUNNER_SEMIHOST
#include "semihost.h"
static int32_t in_file, out_file;
static int open_files(int argc, char **argv) {
  (void)argc;
  (void)argv;
  in_file = qgt_semihost_open(QGT_RUNNER_INPUT, "rb");
  out_file = qgt_semihost_open("results.bin", "wb");
  return in_file >= 0 && out_file >= 0;
}
static int read_bytes(void *data, size_t bytes) { return qgt_semihost_read(in_file, data, bytes) == bytes; }
static void write_bytes(const void *data, size_t bytes) { (void)qgt_semihost_write(out_file, data, bytes); }
static void close_files(void) {
  qgt_semihost_close(in_file);
  qgt_semihost_close(out_file);
}
#else
#include <stdio.h>
static FILE *in_file, *out_file;
static int open_files(int argc, char **argv) {
  if (argc != 3) return 0;
  in_file = fopen(argv[1], "rb");
  out_file = fopen(argv[2], "wb");
  return in_file != NULL && out_file != NULL;
}
static int read_bytes(void *data, size_t bytes) { return fread(data, 1, bytes, in_file) == bytes; }
static void write_bytes(const void *data, size_t bytes) { (void)fwrite(data, 1, bytes, out_file); }
static void close_files(void) {
  fclose(in_file);
  fclose(out_file);
}
#endif

#endif

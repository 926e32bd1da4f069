/* Arm semihosting calls: r0 = operation, r1 = argument (often a parameter block), result in r0. */
#include "semihost.h"

enum {
  SYS_OPEN = 0x01, SYS_CLOSE = 0x02, SYS_WRITE0 = 0x04, SYS_WRITE = 0x05, SYS_READ = 0x06,
  SYS_EXIT_EXTENDED = 0x20, ADP_STOPPED_APPLICATION_EXIT = 0x20026
};

static int32_t call(int32_t operation, const void *argument) {
  register int32_t r0 __asm__("r0") = operation;
  register const void *r1 __asm__("r1") = argument;
  __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}

static size_t length(const char *text) {
  size_t n = 0;
  while (text[n] != '\0') ++n;
  return n;
}

void qgt_semihost_print(const char *text) { (void)call(SYS_WRITE0, text); }

int32_t qgt_semihost_open(const char *path, const char *mode) {
  /* mode numbers of fopen's "rb" and "wb" */
  const uint32_t block[3] = {(uint32_t)(uintptr_t)path, mode[0] == 'w' ? 5u : 1u, (uint32_t)length(path)};
  return call(SYS_OPEN, block);
}

size_t qgt_semihost_read(int32_t handle, void *data, size_t bytes) {
  const uint32_t block[3] = {(uint32_t)handle, (uint32_t)(uintptr_t)data, (uint32_t)bytes};
  return bytes - (size_t)call(SYS_READ, block); /* the call returns the bytes not read */
}

size_t qgt_semihost_write(int32_t handle, const void *data, size_t bytes) {
  const uint32_t block[3] = {(uint32_t)handle, (uint32_t)(uintptr_t)data, (uint32_t)bytes};
  return bytes - (size_t)call(SYS_WRITE, block);
}

void qgt_semihost_close(int32_t handle) {
  const uint32_t block[1] = {(uint32_t)handle};
  (void)call(SYS_CLOSE, block);
}

void qgt_semihost_exit(int32_t status) {
  const uint32_t block[2] = {ADP_STOPPED_APPLICATION_EXIT, (uint32_t)status};
  (void)call(SYS_EXIT_EXTENDED, block);
  for (;;) {
  }
}

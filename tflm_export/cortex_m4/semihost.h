/* Arm semihosting (bkpt 0xAB) as qemu implements it: console output, host files, exit with a status. */
#ifndef QGT_SEMIHOST_H
#define QGT_SEMIHOST_H

#include <stddef.h>
#include <stdint.h>

/* Writes a NUL-terminated string to the host console. */
void qgt_semihost_print(const char *text);

/* Opens a host file (path relative to qemu's working directory); mode "rb" or "wb". Returns a handle or -1. */
int32_t qgt_semihost_open(const char *path, const char *mode);

/* Reads or writes `bytes` bytes; returns the number transferred. */
size_t qgt_semihost_read(int32_t handle, void *data, size_t bytes);
size_t qgt_semihost_write(int32_t handle, const void *data, size_t bytes);

void qgt_semihost_close(int32_t handle);

/* Ends the emulation; qemu exits with `status`. */
void qgt_semihost_exit(int32_t status) __attribute__((noreturn));

#endif

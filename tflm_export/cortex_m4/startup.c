/* Reset and fault handling of the bare-metal Cortex-M4F images: vector table, .data/.bss setup, FPU on,
 * main(), then its result as qemu's exit status. A fault exits with status 0xFA. */
#include <stdint.h>

#include "semihost.h"

extern uint32_t __data_load, __data_start, __data_end, __bss_start, __bss_end, __stack_top;
int main(void);

void qgt_reset(void) __attribute__((noreturn));
void qgt_reset(void) {
  const uint32_t *src = &__data_load;
  for (uint32_t *dst = &__data_start; dst < &__data_end;) *dst++ = *src++;
  for (uint32_t *dst = &__bss_start; dst < &__bss_end;) *dst++ = 0;
  *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20; /* CPACR: full access to CP10 and CP11 (the FPU) */
  __asm__ volatile("dsb\n\tisb" ::: "memory");
  qgt_semihost_exit(main());
}

static void qgt_fault(void) {
  qgt_semihost_print("qgt: processor fault\n");
  qgt_semihost_exit(0xFA);
}

typedef union {
  const void *stack;
  void (*handler)(void);
} vector;

__attribute__((section(".vectors"), used)) static const vector vectors[16] = {
    {.stack = &__stack_top}, {.handler = qgt_reset}, {.handler = qgt_fault}, {.handler = qgt_fault},
    {.handler = qgt_fault},  {.handler = qgt_fault}, {.handler = qgt_fault}, {0}, {0}, {0}, {0},
    {.handler = qgt_fault},  {.handler = qgt_fault}, {0}, {.handler = qgt_fault}, {.handler = qgt_fault}};

/* A qemu TCG plugin (host shared library) that counts executed guest instructions exactly: an inline
 * counter per instruction address and a total, both incremented before each instruction runs. Arguments:
 *   out=PATH      where to write the counts at exit
 *   mark=ADDRESS  optional (hex): each time the instruction at ADDRESS executes, the running total is
 *                 recorded, so a program can delimit regions (e.g. layers) by calling a marker function
 * Output lines: "total N", then "mark N" per recorded mark in order, then "pc ADDRESS COUNT" per executed
 * instruction address. Built by tflm_export.toolchain; the declarations below are the few entries of qemu's
 * plugin API (version 1, as in qemu 7.2) that it uses. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t plugin_id;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
typedef void (*tb_translate_cb)(plugin_id id, struct qemu_plugin_tb *tb);
typedef void (*vcpu_cb)(unsigned int vcpu_index, void *userdata);
typedef void (*exit_cb)(plugin_id id, void *userdata);
enum { INLINE_ADD_U64 = 0, CB_NO_REGS = 0 };

void qemu_plugin_register_vcpu_tb_trans_cb(plugin_id id, tb_translate_cb cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t index);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *insn, int op, void *counter,
                                                uint64_t increment);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn, vcpu_cb cb, int flags, void *userdata);
void qemu_plugin_register_atexit_cb(plugin_id id, exit_cb cb, void *userdata);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

#define CODE_BYTES (4u << 20) /* counters for the 4 MB code region at 0; other addresses share one */
#define MAX_MARKS 65536

static uint64_t *counts; /* per halfword address */
static uint64_t other, total;
static uint64_t marks[MAX_MARKS];
static size_t mark_count;
static uint64_t mark_address = UINT64_MAX;
static char out_path[4096];

static void on_mark(unsigned int vcpu_index, void *userdata) {
  (void)vcpu_index;
  (void)userdata;
  if (mark_count < MAX_MARKS) marks[mark_count++] = total;
}

static void on_translate(plugin_id id, struct qemu_plugin_tb *tb) {
  (void)id;
  const size_t n = qemu_plugin_tb_n_insns(tb);
  for (size_t i = 0; i < n; ++i) {
    struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
    const uint64_t address = qemu_plugin_insn_vaddr(insn);
    uint64_t *counter = address < CODE_BYTES ? &counts[address >> 1] : &other;
    qemu_plugin_register_vcpu_insn_exec_inline(insn, INLINE_ADD_U64, counter, 1);
    qemu_plugin_register_vcpu_insn_exec_inline(insn, INLINE_ADD_U64, &total, 1);
    if (address == mark_address) qemu_plugin_register_vcpu_insn_exec_cb(insn, on_mark, CB_NO_REGS, NULL);
  }
}

static void write_counts(plugin_id id, void *userdata) {
  (void)id;
  (void)userdata;
  FILE *f = fopen(out_path, "w");
  if (f == NULL) return;
  fprintf(f, "total %llu\n", (unsigned long long)total);
  for (size_t i = 0; i < mark_count; ++i) fprintf(f, "mark %llu\n", (unsigned long long)marks[i]);
  for (uint64_t half = 0; half < CODE_BYTES / 2; ++half) {
    if (counts[half]) fprintf(f, "pc %llx %llu\n", (unsigned long long)(half << 1), (unsigned long long)counts[half]);
  }
  if (other) fprintf(f, "pc other %llu\n", (unsigned long long)other);
  fclose(f);
}

__attribute__((visibility("default"))) int qemu_plugin_install(plugin_id id, const void *info, int argc,
                                                               char **argv) {
  (void)info;
  for (int i = 0; i < argc; ++i) {
    if (strncmp(argv[i], "out=", 4) == 0) {
      strncpy(out_path, argv[i] + 4, sizeof out_path - 1);
    } else if (strncmp(argv[i], "mark=", 5) == 0) {
      mark_address = strtoull(argv[i] + 5, NULL, 16);
    } else {
      fprintf(stderr, "insn_count_plugin: unknown argument %s\n", argv[i]);
      return 1;
    }
  }
  if (out_path[0] == '\0') {
    fprintf(stderr, "insn_count_plugin: needs out=PATH\n");
    return 1;
  }
  counts = calloc(CODE_BYTES / 2, sizeof *counts);
  if (counts == NULL) return 1;
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
  qemu_plugin_register_atexit_cb(id, write_counts, NULL);
  return 0;
}

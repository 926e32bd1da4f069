"""tflm_export.toolchain and tflm_export.emulator: builds, qemu runs, exact instruction counts, clear errors."""

import os

import pytest

from tflm_export import emulator, toolchain

PROGRAM = r"""
#include "semihost.h"
__attribute__((noinline)) void mark(void) { __asm__ volatile("" ::: "memory"); }
/* exactly 3 instructions per iteration: subs, bne and the nop */
__attribute__((noinline)) void spin(unsigned n) {
  __asm__ volatile("1: nop\n\tsubs %0, %0, #1\n\tbne 1b" : "+r"(n) :: "cc");
}
int main(void) {
  qgt_semihost_print("hello\n");
  int32_t f = qgt_semihost_open("out.txt", "wb");
  qgt_semihost_write(f, "written", 7);
  qgt_semihost_close(f);
  mark();
  spin(1000);
  mark();
  spin(3000);
  mark();
  return 42;
}
"""


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    folder = tmp_path_factory.mktemp("program")
    source = folder / "program.c"
    source.write_text(PROGRAM)
    try:
        emulator.require_qemu()
        return toolchain.build_cortex_m4([str(source)], str(folder), "program.elf")
    except toolchain.ToolchainMissing as missing:
        pytest.skip(str(missing))


def test_a_program_runs_on_qemu_with_semihosting(program, tmp_path):
    run = emulator.run(program, str(tmp_path))
    assert run.exit_code == 42 and "hello" in run.output
    assert (tmp_path / "out.txt").read_bytes() == b"written"


def test_instruction_counts_are_exact(program, tmp_path):
    run = emulator.run(program, str(tmp_path), count=True, mark="mark")
    marks = run.instructions.marks
    assert len(marks) == 3 and 3000 < marks[1] - marks[0] < 3020 and 9000 < marks[2] - marks[1] < 9020
    assert run.instructions.by_function["spin"] == 3 * (1000 + 3000) + 2  # the loop's 3 instructions, 2 returns
    assert run.instructions.by_function["mark"] == 3  # its return, three times
    assert run.instructions.total == sum(run.instructions.by_function.values())


def test_a_missing_tool_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(toolchain.shutil, "which", lambda tool: None)
    with pytest.raises(toolchain.ToolchainMissing, match="arm-none-eabi-gcc not found.*gcc-arm-none-eabi"):
        toolchain.build_cortex_m4([], str(tmp_path), "x.elf")
    monkeypatch.setattr(emulator.shutil, "which", lambda tool: None)
    with pytest.raises(toolchain.ToolchainMissing, match="qemu-system-arm not found"):
        emulator.run("x.elf", str(tmp_path))


def test_a_build_error_shows_the_compiler_output(tmp_path):
    source = tmp_path / "broken.c"
    source.write_text("int main(void) { return undefined_thing; }\n")
    try:
        toolchain.require(toolchain.HOST_CC)
    except toolchain.ToolchainMissing as missing:
        pytest.skip(str(missing))
    with pytest.raises(toolchain.BuildError, match="undefined_thing"):
        toolchain.build_host_program([str(source)], str(tmp_path), "broken")
    assert not os.path.exists(tmp_path / "broken")

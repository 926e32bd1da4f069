"""Builds C against the QGT kernel library (``arduino/QGT/src``): a host shared library for ctypes, host
programs with AddressSanitizer and UndefinedBehaviorSanitizer, and bare-metal Cortex-M4F images for qemu's
``mps2-an386`` (startup code, linker script and semihosting in ``tflm_export/cortex_m4``).

Every build goes into a folder the caller gives (a temporary or cache folder, never the source tree). A
missing compiler raises :class:`ToolchainMissing`, whose message says what to install; tests skip on it.
Flags: C99, ``-Wall -Wextra -Werror -pedantic``; Cortex-M4: ``-mcpu=cortex-m4 -mthumb -mfloat-abi=hard
-mfpu=fpv4-sp-d16`` with nano/nosys specs and section garbage collection (../shared/ANCHORS.md).
"""

import os
import shutil

from tflm_export import termination

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
CORTEX_M4_DIR = os.path.join(PACKAGE_DIR, "cortex_m4")
HOST_CC, ARM_CC, ARM_NM, ARM_SIZE = "gcc", "arm-none-eabi-gcc", "arm-none-eabi-nm", "arm-none-eabi-size"
C_FLAGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic")
SANITIZE_FLAGS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g")
CORTEX_M4_FLAGS = ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")
CORTEX_M4_LINK = ("-nostartfiles", "--specs=nano.specs", "--specs=nosys.specs", "-ffunction-sections",
                  "-fdata-sections", "-Wl,--gc-sections")
_INSTALL = {HOST_CC: "gcc", ARM_CC: "gcc-arm-none-eabi libnewlib-arm-none-eabi",
            ARM_NM: "binutils-arm-none-eabi", ARM_SIZE: "binutils-arm-none-eabi"}


class ToolchainMissing(RuntimeError):
    """A compiler or emulator this build needs is not installed; the message names the package."""


class BuildError(RuntimeError):
    """The compiler refused the sources; the message holds its output."""


def library_dir():
    """``arduino/QGT/src`` of the repository this package belongs to."""
    folder = os.path.join(os.path.dirname(PACKAGE_DIR), "arduino", "QGT", "src")
    if not os.path.isdir(folder):
        raise ToolchainMissing(f"the QGT kernel library sources are not at {folder} (an installed package without "
                               "the repository's arduino/ folder)")
    return folder


def library_sources():
    """The .c files of ``arduino/QGT/src``, sorted: the kernel library and the C99 sketch-side adapters
    (qgt_camera, qgt_person); the C++ files there (TFLM glue, board helpers) need TFLM or Arduino headers."""
    folder = library_dir()
    return sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".c"))


def require(tool):
    """The path of ``tool``, or ToolchainMissing naming the Debian package that provides it."""
    path = shutil.which(tool)
    if path is None:
        raise ToolchainMissing(f"{tool} not found (apt-get install {_INSTALL.get(tool, tool)})")
    return path


def _compile(command, cwd):
    done = termination.run(command, cwd=cwd)
    if done.returncode != 0:
        raise BuildError(f"{' '.join(command)}\n{done.stdout}{done.stderr}")


def _defines(defines):
    return [f"-D{d}" for d in defines]


def _includes(folders):
    return [f"-I{f}" for f in folders]


def build_host_library(out_dir, name="libqgt_kernels.so", defines=()):
    """The kernel library as a host shared library (portable path), for ctypes; returns its path."""
    os.makedirs(out_dir, exist_ok=True)
    output = os.path.join(out_dir, name)
    _compile([require(HOST_CC), *C_FLAGS, "-O2", "-shared", "-fPIC", *_defines(defines), "-o", output,
              *library_sources()], out_dir)
    return output


def build_host_program(sources, out_dir, name, sanitize=True, include_dirs=(), defines=(), extra_flags=()):
    """A host executable of ``sources`` linked with the kernel library, by default with AddressSanitizer and
    UndefinedBehaviorSanitizer that abort on the first report; returns its path."""
    os.makedirs(out_dir, exist_ok=True)
    output = os.path.join(out_dir, name)
    flags = [*SANITIZE_FLAGS, "-O1"] if sanitize else ["-O2"]
    _compile([require(HOST_CC), *C_FLAGS, *flags, *extra_flags, *_includes([library_dir(), *include_dirs]),
              *_defines(defines), "-o", output, *sources, *library_sources()], out_dir)
    return output


def build_cortex_m4(sources, out_dir, name, portable=False, optimize="-O2", include_dirs=(), defines=(),
                    extra_flags=()):
    """A bare-metal Cortex-M4F ELF for qemu's mps2-an386 of ``sources`` with the kernel library (DSP path,
    or the portable one with ``portable``) and the startup and semihosting code; returns its path.
    ``extra_flags`` go to the compiler and linker as they are (e.g. a link map)."""
    os.makedirs(out_dir, exist_ok=True)
    output = os.path.join(out_dir, name)
    support = [os.path.join(CORTEX_M4_DIR, f) for f in ("startup.c", "semihost.c")]
    _compile([require(ARM_CC), *C_FLAGS, *CORTEX_M4_FLAGS, optimize, *CORTEX_M4_LINK, *extra_flags,
              "-T", os.path.join(CORTEX_M4_DIR, "mps2_an386.ld"),
              *_includes([library_dir(), CORTEX_M4_DIR, *include_dirs]),
              *_defines([*defines, *(["QGT_PORTABLE"] if portable else [])]),
              "-o", output, *support, *sources, *library_sources()], out_dir)
    return output


def build_qemu_plugin(source, out_dir, name):
    """A qemu TCG plugin (host shared library) from ``source``; returns its path."""
    os.makedirs(out_dir, exist_ok=True)
    output = os.path.join(out_dir, name)
    _compile([require(HOST_CC), "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-shared", "-fPIC", "-o", output,
              source], out_dir)
    return output


def function_symbols(elf):
    """[(start address, size, name)] of the functions of a Cortex-M ELF, sorted (Thumb bit cleared)."""
    done = termination.run([require(ARM_NM), "--print-size", "--numeric-sort", "--defined-only", elf], check=True)
    symbols = []
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in ("T", "t"):
            symbols.append((int(parts[0], 16) & ~1, int(parts[1], 16), parts[3]))
    return symbols


def section_sizes(elf):
    """{section name: bytes} of an ELF's allocated sections (``arm-none-eabi-size -A``)."""
    done = termination.run([require(ARM_SIZE), "-A", elf], check=True)
    sizes = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            sizes[parts[0]] = int(parts[1])
    return sizes

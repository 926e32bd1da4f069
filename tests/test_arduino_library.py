"""arduino/QGT as an Arduino library (specification 1.5 format): what arduino-lint checks of its layout,
library.properties and keywords.txt, what the example includes per runtime, and that every src/ file that
needs neither Arduino nor TFLM headers compiles warning-free for the host and the Cortex-M4 (arduino-cli
and the mbed core cannot be installed here; no stand-in Arduino or TFLM headers are kept in the repo)."""

import os
import re
import shutil
import subprocess
import urllib.parse

import pytest

from tflm_export import toolchain

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LIBRARY = os.path.join(REPO, "arduino", "QGT")
SRC = os.path.join(LIBRARY, "src")
EXAMPLE = os.path.join(LIBRARY, "examples", "person_detection")

# arduino-lint's rules (arduino/arduino-lint: etc/schemas, internal/rule/rulefunction)
NAME = re.compile(r"^(([a-zA-Z][a-zA-Z0-9 _.\-]*)|([0-9][a-zA-Z0-9 _.\-]*[a-zA-Z][a-zA-Z0-9 _.\-]*))*$")
RELAXED_SEMVER = re.compile(r"^v?(0|[1-9]\d*)(\.(0|[1-9]\d*)){0,2}(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")
DEPENDS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]*( \([^)]*\))?$")
CATEGORIES = {"Display", "Communication", "Signal Input/Output", "Sensors", "Device Control", "Timing",
              "Data Storage", "Data Processing", "Other"}
REQUIRED = ("name", "version", "author", "maintainer", "sentence", "paragraph", "category", "url", "architectures")
KNOWN_FIELDS = set(REQUIRED) | {"depends", "dot_a_linkage", "includes", "precompiled", "ldflags"}
KEYWORD_KINDS = {"KEYWORD1", "KEYWORD2", "KEYWORD3", "LITERAL1", "LITERAL2"}
LICENSE = re.compile(r"(?i)^(((un)?licen[sc]e)|(copy(ing|right))|(ofl)|(patents))(\.((md)|(markdown)|(txt)|(html)))?$")
# Library Manager libraries the example can include, by header
LIBRARY_OF_HEADER = {"Arduino_OV767X.h": "Arduino_OV767X", "TensorFlowLite.h": "Arduino_TensorFlowLite",
                     "Chirale_TensorFlowLite.h": "Chirale_TensorFlowLite"}
# src/ sources that include Arduino.h, directly or not (compiled in Arduino builds only)
NEEDS_ARDUINO = {"qgt_arduino.cpp"}
CXX_FLAGS = ("-std=c++11", "-Wall", "-Wextra", "-Werror", "-pedantic")
# How the Arduino mbed_nano core compiles a library for the Nano 33 BLE (ArduinoCore-mbed
# variants/ARDUINO_NANO33BLE/cflags.txt, cxxflags.txt), with warnings as errors
MBED_NANO_FLAGS = ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=softfp", "-mfpu=fpv4-sp-d16", "-Os", "-funsigned-char",
                   "-ffunction-sections", "-fdata-sections", "-fno-exceptions", "-Wall", "-Wextra", "-Werror")


def properties():
    values = {}
    with open(os.path.join(LIBRARY, "library.properties"), encoding="utf-8") as f:
        for number, line in enumerate(f.read().splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            assert sep, f"library.properties line {number} is not key=value: {line!r}"
            assert key not in values, f"library.properties sets {key} twice"
            values[key] = value
    return values


def library_files():
    for folder, folders, files in os.walk(LIBRARY):
        for name in files:
            yield os.path.relpath(os.path.join(folder, name), LIBRARY)


def test_library_properties_has_every_required_field_in_the_right_form():
    props = properties()
    assert set(props) <= KNOWN_FIELDS, f"unknown (misspelled?) fields: {set(props) - KNOWN_FIELDS}"
    for field in REQUIRED:
        assert props.get(field, "").strip(), f"library.properties: {field} missing or empty"
    name = props["name"]
    assert NAME.match(name) and len(name) <= 63 and " " not in name and not name.lower().startswith("arduino")
    assert "library" not in name.lower()
    assert RELAXED_SEMVER.match(props["version"]), props["version"]
    assert props["category"] in CATEGORIES
    url = urllib.parse.urlparse(props["url"])
    assert url.scheme in ("http", "https") and url.netloc
    assert not props["paragraph"].startswith(props["sentence"])  # LP036
    assert not props["maintainer"].lower().startswith("arduino")


def test_architectures_are_the_nano_33_ble_cores():
    architectures = [a.strip() for a in properties()["architectures"].split(",")]
    assert architectures == ["mbed_nano", "mbed"]  # true names (no aliases), lower case


def test_includes_names_the_primary_header_named_after_the_library():
    props = properties()
    includes = [h.strip() for h in props["includes"].split(",")]
    assert includes == [f"{props['name']}.h"]  # LS008: the primary header matches the library name
    for header in includes:
        assert os.path.isfile(os.path.join(SRC, header)), f"includes names {header}, not in src/ (LP052)"


def test_the_layout_has_no_leftovers():
    files = list(library_files())
    assert "README.md" in files
    assert any(LICENSE.match(f) for f in os.listdir(LIBRARY)), "no license file in the library root (LD002)"
    assert not any(os.path.basename(f) == ".development" for f in files)  # LS006
    assert not any(f.endswith(".exe") for f in files)
    assert not any(f.endswith(".pde") for f in files)
    assert not os.path.exists(os.path.join(LIBRARY, "utility"))  # LS010: src/ layout has no utility folder
    for folder, folders, names in os.walk(LIBRARY):
        for name in folders + names:
            assert not os.path.islink(os.path.join(folder, name)), f"symlink {name} (LS005)"
            assert re.match(r"^[A-Za-z0-9_.\-]+$", name), f"prohibited character in {name}"
    stray = [f for f in files if f.endswith(".ino") and not f.startswith(("examples" + os.sep, "extras" + os.sep))]
    assert not stray, f"sketches outside examples/ (LD003): {stray}"


def test_every_example_folder_holds_its_sketch():
    examples = os.path.join(LIBRARY, "examples")
    folders = sorted(os.listdir(examples))
    assert "person_detection" in folders
    for folder in folders:
        assert os.path.isfile(os.path.join(examples, folder, f"{folder}.ino")), f"examples/{folder}/{folder}.ino"


def test_arduino_h_is_spelled_with_its_case():
    wrong = re.compile(r'^\s*#\s*include\s*["<](a(?i:rduino)|(ARDUINO))\.[hH][">]', re.M)
    for relative in library_files():
        if relative.endswith((".h", ".c", ".cpp", ".ino")):
            with open(os.path.join(LIBRARY, relative), encoding="utf-8") as f:
                assert not wrong.search(f.read()), relative


def test_keywords_are_tab_separated_and_exist_in_the_sources():
    sources = ""
    for name in sorted(os.listdir(SRC)):
        with open(os.path.join(SRC, name), encoding="utf-8") as f:
            sources += f.read()
    with open(os.path.join(LIBRARY, "keywords.txt"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    keywords = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        assert len(fields) in (2, 3) and fields[1] in KEYWORD_KINDS, f"keywords.txt line {number}: {line!r}"
        assert re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", fields[0]), f"keywords.txt line {number}: {fields[0]!r}"
        assert re.search(rf"\b{fields[0]}\b", sources), f"keywords.txt: {fields[0]} is not in src/"
        keywords.append(fields[0])
    assert len(keywords) == len(set(keywords))


def example_includes(runtime):
    """Headers the example sketch includes with ``#define RUNTIME <runtime>``, as the preprocessor (and
    arduino-cli's library discovery, which runs it) sees them; missing headers are listed, not fatal."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ not found (apt-get install g++)")
    with open(os.path.join(EXAMPLE, "person_detection.ino"), encoding="utf-8") as f:
        sketch = f.read()
    sketch, count = re.subn(r"^#define RUNTIME \d+", f"#define RUNTIME {runtime}", sketch, flags=re.M)
    assert count == 1, "the sketch chooses its runtime with one '#define RUNTIME <n>'"
    done = subprocess.run([compiler, "-x", "c++", "-std=c++11", "-M", "-MG", "-DARDUINO=10819", f"-I{SRC}", "-"],
                          input=sketch, capture_output=True, text=True, cwd=EXAMPLE)
    assert done.returncode == 0, done.stderr
    return {os.path.basename(p) for p in done.stdout.replace("\\\n", " ").split()[1:]}


def test_the_default_runtime_needs_only_the_libraries_depends_lists():
    props = properties()
    depends = [d.strip() for d in props.get("depends", "").split(",") if d.strip()]
    assert all(DEPENDS.match(d) for d in depends)
    default = {LIBRARY_OF_HEADER[h] for h in example_includes(0) if h in LIBRARY_OF_HEADER}
    assert sorted(depends) == sorted(default) == ["Arduino_OV767X"]
    assert "qgt_model.h" in example_includes(0) and "model_data.h" not in example_includes(0)


@pytest.mark.parametrize("runtime, tflm_library", [(1, "TensorFlowLite.h"), (2, "Chirale_TensorFlowLite.h")])
def test_the_tflm_runtimes_include_their_library_and_the_packed_model(runtime, tflm_library):
    headers = example_includes(runtime)
    assert {tflm_library, "model_data.h", "qgt_tflm.h"} <= headers


def test_no_stand_in_arduino_or_tflm_headers_are_kept_in_the_repository():
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    for path in listed.stdout.splitlines():
        assert os.path.basename(path) not in ("Arduino.h", "TensorFlowLite.h", "Arduino_OV767X.h"), path
        assert not path.startswith("tensorflow/") and "/tensorflow/lite/" not in path, path


def _compile(compiler, flags, source, output):
    done = subprocess.run([compiler, *flags, "-c", source, "-o", output], capture_output=True, text=True)
    assert done.returncode == 0, f"{compiler} {source}:\n{done.stdout}{done.stderr}"


def _headers(source, compiler):
    """Base names of the headers ``source`` includes as a build without Arduino sees them (missing ones listed)."""
    done = subprocess.run([compiler, "-M", "-MG", f"-I{SRC}", source], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return {os.path.basename(p) for p in done.stdout.replace("\\\n", " ").split()[2:]}


def _portable_sources():
    """src/ .c and .cpp files that need no Arduino header; asserts that the others are exactly NEEDS_ARDUINO."""
    compilers = {".c": shutil.which("gcc"), ".cpp": shutil.which("g++")}
    if None in compilers.values():
        pytest.skip("gcc and g++ are needed to list the sources' headers")
    sources = [name for name in sorted(os.listdir(SRC)) if name.endswith((".c", ".cpp"))]
    arduino = {name for name in sources
               if "Arduino.h" in _headers(os.path.join(SRC, name), compilers[os.path.splitext(name)[1]])}
    assert arduino == NEEDS_ARDUINO
    return [name for name in sources if name not in arduino]


@pytest.mark.parametrize("target", ["host", "cortex-m4", "mbed_nano core flags"])
def test_src_compiles_warning_free(tmp_path, target):
    prefix = "" if target == "host" else "arm-none-eabi-"
    try:
        cc, cxx = toolchain.require(prefix + "gcc"), toolchain.require(prefix + "g++")
    except toolchain.ToolchainMissing as missing:
        pytest.skip(str(missing))
    if target == "mbed_nano core flags":
        c_flags, cxx_flags = ["-std=gnu11", *MBED_NANO_FLAGS], ["-std=gnu++14", "-fno-rtti", "-Wvla", *MBED_NANO_FLAGS]
    else:
        machine = list(toolchain.CORTEX_M4_FLAGS) if target == "cortex-m4" else []
        c_flags = [*toolchain.C_FLAGS, *machine, "-O2"]
        cxx_flags = [*CXX_FLAGS, *machine, "-O2", "-fno-exceptions", "-fno-rtti"]
    for name in _portable_sources():
        source, output = os.path.join(SRC, name), str(tmp_path / (name + ".o"))
        _compile(cc if name.endswith(".c") else cxx, c_flags if name.endswith(".c") else cxx_flags, source, output)


def test_the_tflm_glue_compiles_to_nothing_without_tflm(tmp_path):
    """What the default sketch build does: TFLM's headers are not on the include path."""
    try:
        cxx, nm = toolchain.require("arm-none-eabi-g++"), toolchain.require(toolchain.ARM_NM)
    except toolchain.ToolchainMissing as missing:
        pytest.skip(str(missing))
    output = str(tmp_path / "qgt_tflm.o")
    _compile(cxx, [*CXX_FLAGS, *toolchain.CORTEX_M4_FLAGS, "-O2"], os.path.join(SRC, "qgt_tflm.cpp"), output)
    symbols = subprocess.run([nm, "--defined-only", output], capture_output=True, text=True, check=True).stdout
    assert symbols.strip() == ""

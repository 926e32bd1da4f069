"""Property cases of the QGT kernels, one runner process for all of them (tflm_export.kernel_runner):
built with AddressSanitizer and UndefinedBehaviorSanitizer on the host (portable path), and as a Cortex-M4F
image with the DSP path on qemu's mps2-an386. 0 mismatches, 0 sanitizer reports, bad input refused."""

import re

import numpy as np
import pytest

import kernel_cases
from tflm_export import emulator, kernel_runner, toolchain

SEED = 20261201


@pytest.fixture(scope="module")
def cases():
    generated = kernel_cases.property_cases(SEED)
    assert sum(c.kind in ("conv", "depthwise", "fully_connected") for c in generated) >= 1000
    return generated


@pytest.fixture(scope="module")
def sanitized_runner(tmp_path_factory):
    try:
        return kernel_runner.build_host(str(tmp_path_factory.mktemp("sanitized")))
    except toolchain.ToolchainMissing as missing:
        pytest.skip(str(missing))


# -O2 as the benchmarks build; -Os as the Arduino mbed cores build libraries (no function alignment there:
# the assembly routines must not depend on where the linker puts them).
@pytest.fixture(scope="module", params=["-O2", "-Os"])
def cortex_m4_runner(request, tmp_path_factory):
    try:
        emulator.require_qemu()
        return kernel_runner.build_cortex_m4(str(tmp_path_factory.mktemp("cortex_m4")), optimize=request.param)
    except toolchain.ToolchainMissing as missing:
        pytest.skip(str(missing))


def test_the_cases_cover_the_space(cases):
    layers = [c for c in cases if c.kind in ("conv", "depthwise", "fully_connected")]
    labels = " ".join(c.label for c in layers)
    assert all(f"{bits}-bit" in labels for bits in (1, 2, 4, 8))
    options = [bytes(c.options) for c in layers]
    assert {o[4] for o in options if len(o) > 4} == {0, 1}  # SAME and VALID
    assert {o[3] for o in options} == {0, 1, 2, 3}  # every fused activation
    assert max(o[8] for o in options) == 3 and max(o[10] for o in options) == 3  # strides and dilations
    assert max(o[12] for o in options) == 3  # depth multipliers
    assert {c.expected_status for c in layers} == {"QGT_OK", "QGT_ERR_ARGUMENT", "QGT_ERR_SCRATCH"}
    assert any(c.layout == 1 and c.expected is not None for c in layers)  # in place / overlapped outputs
    assert any(c.dims[1] % 2 and c.dims[3] % 2 for c in layers)  # odd sizes and channel counts
    for in_c in (1, 3):  # first convs over a gray and an RGB image: the DSP path's own loops
        first_convs = [c for c in layers if re.search(rf"-bit \[\d+, 3, 3, {in_c}\] stride", c.label)]
        assert {c.label.split('-bit')[0] for c in first_convs} == {'1', '2', '4', '8'}


def test_a_wrong_expectation_is_reported(cases):
    good = [case for case in cases if case.expected is not None and case.kind != "argmax"][:3]
    results = [(0, case.expected.reshape(-1).astype(np.int8).tobytes()) for case in good]
    assert kernel_runner.mismatches(good, results) == []
    altered = [kernel_cases.dataclasses.replace(good[0], expected=good[0].expected ^ 1)] + good[1:]
    assert len(kernel_runner.mismatches(altered, results)) == 1
    assert len(kernel_runner.mismatches(good, [(2, b"")] + results[1:])) == 1  # a status other than expected


def test_property_cases_on_the_host_under_the_sanitizers(sanitized_runner, cases, tmp_path):
    exit_code, stderr, results = kernel_runner.run_host(sanitized_runner, cases, str(tmp_path))
    assert exit_code == 0 and "runtime error" not in stderr and "AddressSanitizer" not in stderr, stderr[-2000:]
    assert kernel_runner.mismatches(cases, results) == []


def test_bad_input_is_refused_without_a_sanitizer_report(sanitized_runner, tmp_path):
    bad = kernel_cases.bad_input_cases()
    exit_code, stderr, results = kernel_runner.run_host(sanitized_runner, bad, str(tmp_path))
    assert exit_code == 0 and "runtime error" not in stderr and "AddressSanitizer" not in stderr, stderr[-2000:]
    assert kernel_runner.mismatches(bad, results) == []
    assert all(status != 0 and output == b"" for status, output in results)


def test_property_and_bad_input_cases_on_the_cortex_m4_dsp_path(cortex_m4_runner, cases, tmp_path):
    everything = cases + kernel_cases.bad_input_cases()
    run, results = kernel_runner.run_cortex_m4(cortex_m4_runner, everything, str(tmp_path))
    assert run.exit_code == 0, run.output[-2000:]
    assert kernel_runner.mismatches(everything, results) == []

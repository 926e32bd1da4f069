"""The sketch's person score and decision: qgt_person.c (host build) against tflm_export.person on every
int8 output value and on decision sequences, plus known answers."""

import numpy as np
import pytest

from tflm_export import person

from sketch_ctypes import library_or_skip

SOFTMAX = (1 / 256, -128)  # TFLite's int8 softmax output quantization


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return library_or_skip(tmp_path_factory)


def test_softmax_scores_are_the_probability_in_thousandths():
    scale, zero_point = SOFTMAX
    assert person.score_permille([0, -128], 1, scale, zero_point) == 0
    assert person.score_permille([0, 0], 1, scale, zero_point) == 500
    assert person.score_permille([0, 127], 1, scale, zero_point) == 996  # 255/256
    assert person.score_permille([0, -127], 1, scale, zero_point) == 4  # 3.906 -> 4
    assert person.score_permille([-126, 0], 0, scale, zero_point) == 8  # 7.8125 -> 8


@pytest.mark.parametrize("scale, zero_point", [
    SOFTMAX, (0.1, 0), (0.0123, -5), (1e-3, 100), (2.0, 0), (1e-40, 0), (3e-6, -128), (5.0e-4, 127)])
def test_c_scores_every_output_value_as_python(lib, scale, zero_point):
    status, detector = lib.detector(2, 1, scale, zero_point, 600, 400)
    assert status == "QGT_OK"
    for q in range(-128, 128):
        output = np.array([0, q], np.int8)
        assert lib.score(detector, output) == ("QGT_OK", person.score_permille(output, 1, scale, zero_point)), q


def test_ties_round_up():
    # 1000 * (2^-11) * 1 = 0.48828125 -> 0; * 2 = 0.9765625 -> 1; 1000 * 2^-4 = 62.5 -> 63
    assert person.score_permille([1], 0, 2.0 ** -11, 0) == 0
    assert person.score_permille([2], 0, 2.0 ** -11, 0) == 1
    assert person.score_permille([1], 0, 2.0 ** -4, 0) == 63


def test_the_decision_has_hysteresis_in_c_and_python(lib):
    scale, zero_point = SOFTMAX
    rng = np.random.default_rng(0)
    status, detector = lib.detector(2, 1, scale, zero_point, 600, 400)
    assert status == "QGT_OK"
    twin = person.Detector(1, scale, zero_point, 600, 400)
    # scores drifting around the thresholds, then fixed points that must keep the decision
    steps = [*rng.integers(-128, 128, 300), 25, 0, -20, 25, -26, -27, 0, 26]
    for q in steps:
        output = np.array([0, q], np.int8)
        assert lib.update(detector, output) == ("QGT_OK", *twin.update(output))
    # scores: 25 -> 598 (below on: stays off), 26 -> 602 (on), -20 -> 422, 0 -> 500, -25 -> 402 (all keep it
    # on), -26 -> 398 (off), 25 -> 598 (stays off)
    twin = person.Detector(1, scale, zero_point, 600, 400)
    assert [twin.update([0, q])[1] for q in (25, 26, -20, 0, -25, -26, 25)] == [
        False, True, True, True, True, False, False]


@pytest.mark.parametrize("arguments, status", [
    ((2, 2, 1 / 256, -128, 600, 400), "QGT_ERR_SHAPE"),     # person index out of range
    ((0, 0, 1 / 256, -128, 600, 400), "QGT_ERR_SHAPE"),     # no classes
    ((2, 1, 0.0, -128, 600, 400), "QGT_ERR_SCALE"),
    ((2, 1, -1.0, -128, 600, 400), "QGT_ERR_SCALE"),
    ((2, 1, float("inf"), -128, 600, 400), "QGT_ERR_SCALE"),
    ((2, 1, 1 / 256, -129, 600, 400), "QGT_ERR_ARGUMENT"),  # zero point outside int8
    ((2, 1, 1 / 256, -128, 400, 600), "QGT_ERR_ARGUMENT"),  # off above on
    ((2, 1, 1 / 256, -128, 1001, 400), "QGT_ERR_ARGUMENT"),
])
def test_bad_parameters_are_refused(lib, arguments, status):
    assert lib.detector(*arguments)[0] == status


def test_python_refuses_thresholds_out_of_order():
    with pytest.raises(ValueError, match="off"):
        person.Detector(1, *SOFTMAX, 400, 600)

"""tflm_export.requant (docs/FORMAT.md, "Weight scales", "Multipliers"): the log grid and the integer-only
multiplier table, bit for bit against TFLite-Micro's double-precision QuantizeMultiplier."""

import fractions

import numpy as np
import pytest

from tflm_export import reference, requant
from tflm_export.tflite_model import ExportError


@pytest.mark.parametrize("value", [0.5, 0.99999, 1.0, 3.7, 1e-3, 2.0 ** -20, 0.7071067811865476])
def test_quantize_multiplier_matches_the_real_multiplier(value):
    multiplier, shift = requant.quantize_multiplier(value)
    assert 2 ** 30 <= multiplier < 2 ** 31
    assert abs(multiplier * 2.0 ** (shift - 31) - value) <= value * 2.0 ** -30


def test_quantize_multiplier_clamps():
    assert requant.quantize_multiplier(2.0 ** -33) == (0, 0)  # frexp exponent -32: every product rounds to 0
    assert requant.quantize_multiplier(2.0 ** -32)[1] == -31
    assert requant.quantize_multiplier(2.0 ** 31) == (2 ** 31 - 1, 30)
    assert requant.quantize_multiplier(2.0 ** 29)[1] == 30


def test_rounding_is_tflm_double_rounding():
    # 5 * 0.25 = 1.25: the high multiply rounds 2.5 to 3, the shift rounds 1.5 to 2 (one rounding gives 1).
    # -7 * 0.1875 = -1.3125 -> -1; 6 * 0.125 = 0.75 -> 1.
    got = reference.multiply_by_quantized_multiplier([5, -7, 6], [2 ** 30, 3 * 2 ** 29, 2 ** 30], [-1, -2, -2])
    np.testing.assert_array_equal(got, [2, -1, 1])
    # a left shift is an int32 product in TFLM: it wraps
    assert reference.multiply_by_quantized_multiplier([2 ** 30], [2 ** 30], [2]) == [0]


def _double_reference(input_scale, output_scale, codes, exponent):
    weights = requant.grid_scales(codes, exponent)
    return [requant.quantize_multiplier(float(input_scale) * float(w) / float(output_scale)) for w in weights]


def test_integer_multipliers_are_tflm_double_precision_bit_for_bit():
    rng = np.random.default_rng(5)
    checked = clamped_low = clamped_high = 0
    for trial in range(1500):
        input_scale = np.float32(2.0 ** rng.uniform(-24, 4))
        output_scale = np.float32(2.0 ** rng.uniform(-14, 4))
        if trial % 5 == 0:  # subnormal input scales, tiny multipliers (shift < -31)
            input_scale = np.float32(2.0 ** rng.uniform(-149, -120))
        if trial % 7 == 0:  # huge multipliers (shift > 30)
            input_scale, output_scale = np.float32(2.0 ** rng.uniform(10, 60)), np.float32(2.0 ** -rng.uniform(0, 40))
        exponent = int(rng.integers(requant.SCALE_EXPONENT_MIN, -2 if trial % 3 else requant.SCALE_EXPONENT_MAX))
        codes = rng.integers(0, requant.SCALE_CODES, 24)
        multiplier, shift = requant.layer_multipliers(input_scale, output_scale, codes, exponent)
        expected = _double_reference(input_scale, output_scale, codes, exponent)
        assert [(int(m), int(s)) for m, s in zip(multiplier, shift)] == expected, (input_scale, output_scale, exponent)
        checked += len(codes)
        clamped_low += sum(m == 0 for m, _ in expected)
        clamped_high += sum(s == requant.SHIFT_MAX and m == 2 ** 31 - 1 for m, s in expected)
    assert checked == 36000 and clamped_low > 100 and clamped_high > 100  # both clamps exercised


def _tie_input_mantissa(weight_mantissa, length):
    """An input mantissa m (2^23 <= m < 2^24) whose product with ``weight_mantissa`` has ``length`` bits and
    lies exactly halfway between two 31-bit values, or None."""
    drop = length - 31
    zeros = (weight_mantissa & -weight_mantissa).bit_length() - 1
    odd = weight_mantissa >> zeros
    modulus = 1 << (drop - zeros)
    residue = ((1 << (drop - 1 - zeros)) * pow(odd, -1, modulus)) % modulus
    for m in range(residue + (1 << 23) // modulus * modulus, 1 << 24, modulus):
        if m >= 1 << 23 and (m * weight_mantissa).bit_length() == length:
            return m
    return None


def test_ties_at_31_bits_round_away_from_zero():
    ties = 0
    for k in range(1, requant.SCALE_STEPS_PER_OCTAVE):
        weight_m, _ = requant.float32_parts(requant.float32_bits(requant.SCALE_MANTISSAS[k]))
        for length in (47, 48):
            m = _tie_input_mantissa(weight_m, length)
            if m is None:
                continue
            input_scale = np.float32(m * 2.0 ** -30)
            product = fractions.Fraction(m * weight_m)
            assert product.numerator % (1 << (length - 31)) == 1 << (length - 32)  # exactly halfway
            expected = _double_reference(input_scale, np.float32(1.0), [k], 0)
            multiplier, shift = requant.layer_multipliers(input_scale, np.float32(1.0), [k], 0)
            assert (int(multiplier[0]), int(shift[0])) == expected[0]
            assert expected[0][0] == (m * weight_m + (1 << (length - 32))) >> (length - 31)  # rounded up
            ties += 1
    assert ties > 40


def test_multiplier_table_depends_on_the_mantissa_only():
    table = requant.multiplier_table(requant.float32_bits(0.02), requant.float32_bits(0.05), -12)
    assert table[0].shape == table[1].shape == (32,) and np.all((table[0] >= 2 ** 30) & (table[0] < 2 ** 31))
    codes = np.array([5, 5 + 32, 5 + 64])
    multiplier, shift = requant.channel_multipliers(table, codes)
    assert len(set(multiplier.tolist())) == 1 and np.array_equal(np.diff(shift), [1, 1])


@pytest.mark.parametrize("bits", [0, 0x80000000 | 0x3F800000, 0x7F800000, 0x7FC00000])
def test_scales_that_are_not_positive_finite_floats_are_refused(bits):
    with pytest.raises(ExportError, match="not a positive finite float32"):
        requant.multiplier_table(bits, requant.float32_bits(1.0), 0)


@pytest.mark.parametrize("exponent", [requant.SCALE_EXPONENT_MIN - 1, requant.SCALE_EXPONENT_MAX + 1])
def test_scale_exponents_outside_the_normal_range_are_refused(exponent):
    with pytest.raises(ExportError, match="outside"):
        requant.multiplier_table(requant.float32_bits(1.0), requant.float32_bits(1.0), exponent)


def test_every_grid_scale_is_a_normal_float32_at_the_exponent_limits():
    for exponent in (requant.SCALE_EXPONENT_MIN, requant.SCALE_EXPONENT_MAX):
        scales = requant.grid_scales(np.arange(requant.SCALE_CODES), exponent)
        assert np.all(np.isfinite(scales)) and scales.min() >= np.finfo(np.float32).tiny


def test_scale_mantissas_are_the_nearest_float32_to_the_powers_of_two():
    for k, mantissa in enumerate(requant.SCALE_MANTISSAS):
        below, above = (np.nextafter(mantissa, np.float32(direction)) for direction in (0, 2))
        # 2^(k/32) lies between the midpoints to both neighbours: compare 32nd powers exactly
        low, high = (fractions.Fraction(float(mantissa)) + fractions.Fraction(float(n)) for n in (below, above))
        assert (low / 2) ** 32 < 2 ** k < (high / 2) ** 32, k


def test_every_scale_code_round_trips_and_scales_snap_to_the_nearest_code():
    codes = np.arange(requant.SCALE_CODES)
    scales = requant.grid_scales(codes, -14)
    assert np.all(np.diff(scales) > 0) and scales[0] == 2.0 ** -14 and scales[-1] < 2.0 ** -6
    exponent, snapped = requant.scale_codes(scales)
    assert exponent == -14 and np.array_equal(snapped, codes)
    rng = np.random.default_rng(3)
    arbitrary = np.exp(rng.uniform(np.log(1e-3), np.log(0.2), 501))
    exponent, nearest = requant.scale_codes(arbitrary)
    snapped = requant.grid_scales(nearest, exponent)
    assert np.max(np.abs(snapped / arbitrary - 1)) <= 2 ** (1 / 64) - 1  # at most 1.09 %
    for neighbour in (nearest - 1, nearest + 1):  # no neighbouring code is nearer
        assert np.all(np.abs(requant.grid_scales(neighbour, exponent) - arbitrary) >= np.abs(snapped - arbitrary))
    # more than 8 octaves below the largest: the grid's bottom (documented clamp)
    exponent, clamped = requant.scale_codes([1.0, 2.0 ** -9])
    assert clamped.tolist() == [requant.SCALE_CODES - 32, 0] and exponent == -7

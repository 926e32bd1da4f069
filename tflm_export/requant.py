"""Requantization parameters of the packed format (docs/FORMAT.md, "Weight scales" and "Multipliers").

Weight scales sit on a log grid of 32 steps per octave: ``SCALE_MANTISSAS[code % 32] * 2^(scale_exponent +
code // 32)``. TFLite-Micro turns ``input_scale * weight_scale / output_scale`` (in double precision) into an
int32 multiplier and a shift (:func:`quantize_multiplier`). On the grid that multiplier depends only on
``code % 32`` and the shift is ``base_shift[code % 32] + code // 32``, so a layer needs a table of 32 entries
(:func:`multiplier_table`), computed with integers only from the float32 bit patterns of the two activation
scales, exactly as the C library's ``qgt_quant_params_init`` does; :func:`channel_multipliers` applies
QuantizeMultiplier's clamps per channel. Tests hold both against :func:`quantize_multiplier` bit for bit.
"""

import math
import struct

import numpy as np

from tflm_export.tflite_model import ExportError

SCALE_STEPS_PER_OCTAVE = 32
SCALE_CODES = 256
OCTAVES = SCALE_CODES // SCALE_STEPS_PER_OCTAVE
SCALE_MANTISSAS = np.array([2.0 ** (k / SCALE_STEPS_PER_OCTAVE) for k in range(SCALE_STEPS_PER_OCTAVE)],
                           np.float32)  # the float32 nearest to 2^(k/32); the C library holds the same table
# Every grid scale of a layer is a normal float32: 2^-126 <= 2^scale_exponent and the top of the last
# octave, below 2^(scale_exponent + OCTAVES), stays below 2^128.
SCALE_EXPONENT_MIN, SCALE_EXPONENT_MAX = -126, 128 - OCTAVES
# QuantizeMultiplier's clamps: below this shift every product rounds to zero (multiplier 0, shift 0); above
# the other, TFLM's double-rounding path would shift an int32 left by 31 or more (undefined), so the
# single-rounding build's saturation (INT32_MAX, 30) is what the format specifies.
SHIFT_MIN, SHIFT_MAX = -31, 30
_INT32_MAX = 2 ** 31 - 1


def quantize_multiplier(real_multiplier):
    """(int32 multiplier, shift) with real = multiplier * 2^(shift - 31), as TFLite-Micro computes them from a
    double (frexp, std::round), with the clamps above."""
    if real_multiplier == 0:
        return 0, 0
    fraction, shift = math.frexp(real_multiplier)
    fixed = int(math.floor(abs(fraction) * 2 ** 31 + 0.5)) * (1 if fraction > 0 else -1)  # std::round
    if abs(fixed) == 2 ** 31:
        fixed //= 2
        shift += 1
    return _clamped(fixed, shift)


def _clamped(multiplier, shift):
    if shift < SHIFT_MIN:
        return 0, 0
    if shift > SHIFT_MAX:
        return _INT32_MAX, SHIFT_MAX
    return multiplier, shift


def grid_scales(codes, exponent):
    """float32 weight scales of scale ``codes`` (0..255) in a layer with ``scale_exponent``."""
    codes = np.asarray(codes, np.int64)
    return np.ldexp(SCALE_MANTISSAS[codes % SCALE_STEPS_PER_OCTAVE],
                    exponent + codes // SCALE_STEPS_PER_OCTAVE).astype(np.float32)


def scale_codes(scales):
    """(scale_exponent, codes): the nearest grid scales of positive ``scales``.

    The top octave holds the largest scale; a scale more than 8 octaves below it gets code 0 (the scale
    moves up to the grid's bottom, see docs/FORMAT.md).
    """
    steps = np.log2(np.asarray(scales, np.float64)) * SCALE_STEPS_PER_OCTAVE
    exponent = int(np.floor(np.round(steps.max()) / SCALE_STEPS_PER_OCTAVE)) - (OCTAVES - 1)
    codes = np.clip(np.round(steps) - exponent * SCALE_STEPS_PER_OCTAVE, 0, SCALE_CODES - 1).astype(np.int64)
    # log rounding can miss the float32 neighbour that is nearer; take the nearer of the two candidates
    for other in (np.maximum(codes - 1, 0), np.minimum(codes + 1, SCALE_CODES - 1)):
        nearer = (np.abs(grid_scales(other, exponent) - scales) < np.abs(grid_scales(codes, exponent) - scales))
        codes = np.where(nearer, other, codes)
    return exponent, codes


def float32_bits(value):
    """The IEEE-754 bit pattern of ``value`` rounded to float32, as an unsigned int."""
    return struct.unpack("<I", struct.pack("<f", float(value)))[0]


def float32_parts(bits, what="scale"):
    """(m, e) with float32 ``bits`` = m * 2^e exactly and 2^23 <= m < 2^24; positive finite values only."""
    exponent_field, fraction = (bits >> 23) & 0xFF, bits & 0x7FFFFF
    if bits >> 31 or exponent_field == 0xFF or (exponent_field == 0 and fraction == 0):
        raise ExportError(f"{what} 0x{bits:08x} is not a positive finite float32")
    if exponent_field == 0:  # subnormal: normalize
        shift = 24 - fraction.bit_length()
        return fraction << shift, -149 - shift
    return fraction | 1 << 23, exponent_field - 150


def _round_quotient(numerator, denominator, digits):
    """(m, e): numerator / denominator rounded to ``digits`` significant bits, ties to even, as m * 2^e with
    2^(digits - 1) <= m < 2^digits. Needs 2^46 <= numerator < 2^48, 2^23 <= denominator < 2^24 and
    digits <= 53 (two 64-bit divisions in C)."""
    high, remainder = divmod(numerator, denominator)
    low, remainder = divmod(remainder << 32, denominator)
    quotient, sticky = high << 32 | low, remainder != 0  # numerator / denominator = (quotient + f) * 2^-32
    drop = quotient.bit_length() - digits
    mantissa, rest, half = quotient >> drop, quotient & ((1 << drop) - 1), 1 << (drop - 1)
    if rest > half or (rest == half and (sticky or mantissa & 1)):
        mantissa += 1
        if mantissa == 1 << digits:
            mantissa, drop = mantissa >> 1, drop + 1
    return mantissa, drop - 32


def multiplier_table(input_scale_bits, output_scale_bits, scale_exponent):
    """(multipliers, base shifts), 32 int64 each: entry k is QuantizeMultiplier of input_scale *
    (SCALE_MANTISSAS[k] * 2^scale_exponent) / output_scale in double precision, before its clamps, computed
    with integers only from the float32 bit patterns of the two scales."""
    if not SCALE_EXPONENT_MIN <= scale_exponent <= SCALE_EXPONENT_MAX:
        raise ExportError(f"scale_exponent {scale_exponent} outside [{SCALE_EXPONENT_MIN}, {SCALE_EXPONENT_MAX}]")
    input_m, input_e = float32_parts(input_scale_bits, "input scale")
    output_m, output_e = float32_parts(output_scale_bits, "output scale")
    multipliers, shifts = [], []
    for mantissa in SCALE_MANTISSAS:
        weight_m, weight_e = float32_parts(float32_bits(mantissa))
        # in * w is exact in double (48 bits); dividing by out rounds once to 53 bits; frexp and
        # std::round(fraction * 2^31) then round that to 31 bits, half away from zero (all positive here)
        m53, e53 = _round_quotient(input_m * weight_m, output_m, 53)
        fixed = (m53 + (1 << 21)) >> 22
        shift = 53 + e53 + input_e + weight_e + scale_exponent - output_e
        if fixed == 1 << 31:
            fixed, shift = fixed >> 1, shift + 1
        multipliers.append(fixed)
        shifts.append(shift)
    return np.array(multipliers, np.int64), np.array(shifts, np.int64)


def channel_multipliers(table, codes):
    """(int32 multipliers, int8 shifts) of the channels with scale ``codes`` from a :func:`multiplier_table`."""
    multipliers, base_shifts = table
    pairs = [_clamped(int(multipliers[c % SCALE_STEPS_PER_OCTAVE]),
                      int(base_shifts[c % SCALE_STEPS_PER_OCTAVE]) + int(c) // SCALE_STEPS_PER_OCTAVE)
             for c in np.asarray(codes, np.int64)]
    return np.array([m for m, _ in pairs], np.int32), np.array([s for _, s in pairs], np.int8)


def layer_multipliers(input_scale, output_scale, codes, scale_exponent):
    """Per-channel (multipliers, shifts) of a packed layer from its float32 activation scales, integer-only."""
    table = multiplier_table(float32_bits(input_scale), float32_bits(output_scale), scale_exponent)
    return channel_multipliers(table, codes)

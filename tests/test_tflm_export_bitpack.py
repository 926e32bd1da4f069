"""tflm_export.bitpack (docs/FORMAT.md, "Weights"): storage widths, word-padded rows, the interleaved order."""

import numpy as np
import pytest

from qgt_keras import quantizers
from tflm_export import bitpack
from tflm_export.tflite_model import ExportError


def _random_codes(bits, shape, seed):
    rng = np.random.default_rng(seed)
    if bits == 1:
        return rng.choice([-1, 1], shape)
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    codes = rng.integers(low, high + 1, shape)
    codes.reshape(-1)[:2] = [low, high][:codes.size]  # both extremes present
    return codes


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("rows, length", [(1, 1), (3, 5), (2, 7), (5, 13), (1, 250), (4, 1001), (2, 32), (1, 64)])
def test_rows_round_trip_in_whole_words(bits, rows, length):
    codes = _random_codes(bits, (rows, length), seed=bits * 1000 + length)
    packed = bitpack.pack_rows(codes, bits)
    per_row = bitpack.row_bytes(length, bits)
    assert per_row % 4 == 0 and per_row * 8 >= length * bits > per_row * 8 - 32
    assert len(packed) == rows * per_row
    np.testing.assert_array_equal(bitpack.unpack_rows(packed, bits, rows, length), codes)


def test_field_order_is_as_documented():
    # 8 bits: plain byte order.
    assert bitpack.pack_rows([[1, -2, 3, -4]], 8) == bytes([0x01, 0xFE, 0x03, 0xFC])
    # 2 bits: word position r at bit 16*h + 2*j, j = 2*(r//4) + (r%4 & 1), h = (r%4) >> 1, so the low half-word
    # holds positions 0, 1, 4, 5, 8, 9, 12, 13 and the high one 2, 3, 6, 7, ... (what SXTB16 pairs up).
    assert list(bitpack.field_offsets(2)[:8]) == [0, 2, 16, 18, 4, 6, 20, 22]
    one_hot = np.zeros((1, 16), np.int64)
    one_hot[0, 2] = 1  # position 2 -> bit 16
    assert bitpack.pack_rows(one_hot, 2) == (1 << 16).to_bytes(4, "little")
    one_hot[0, 2], one_hot[0, 5] = 0, -1  # position 5 -> bits 6..7, field 0b11
    assert bitpack.pack_rows(one_hot, 2) == (0b11 << 6).to_bytes(4, "little")
    # 4 bits: nibbles hold positions 0, 1, 4, 5 (low half) and 2, 3, 6, 7 (high half)
    assert list(bitpack.field_offsets(4)) == [0, 4, 16, 20, 8, 12, 24, 28]
    # 1 bit: +1 is 1, -1 is 0; padding fields are 0
    assert bitpack.pack_rows([[1, -1, 1]], 1) == (0b1 | 1 << 16).to_bytes(4, "little")
    for bits in bitpack.STORAGE_WIDTHS:  # every bit of a word is used exactly once
        offsets = bitpack.field_offsets(bits)
        assert sorted(offsets) == list(range(0, 32, bits))


@pytest.mark.parametrize("grid_bits, stored", [(1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (6, 8), (7, 8), (8, 8)])
def test_every_grid_width_has_a_storage_width(grid_bits, stored):
    low, high = quantizers.code_range(grid_bits)
    codes = np.array([[low, high]] if grid_bits == 1 else [[low, 0, high]])
    assert bitpack.storage_bits(codes) == stored
    np.testing.assert_array_equal(bitpack.unpack_rows(bitpack.pack_rows(codes, stored), stored, 1, codes.shape[1]),
                                  codes)


@pytest.mark.parametrize("codes, bits, message", [
    ([[1, 0, -1]], 1, "-1 or \\+1"), ([[2]], 2, "do not fit 2 bits"), ([[-9]], 4, "do not fit 4 bits"),
    ([[1]], 3, "storage width"), ([1, 2], 8, "rows, length")])
def test_bad_codes_are_refused(codes, bits, message):
    with pytest.raises(ExportError, match=message):
        bitpack.pack_rows(codes, bits)


def test_unpack_refuses_a_wrong_byte_count():
    with pytest.raises(ExportError, match="cannot hold exactly 2 rows"):
        bitpack.unpack_rows(b"\x00" * 6, 2, 2, 3)


def test_the_keras_side_counts_bytes_at_the_widths_the_packer_stores():
    from qgt_keras import layer_kinds  # qgt_keras cannot import tflm_export: the fact stands twice, checked here
    assert layer_kinds.STORAGE_WIDTHS == bitpack.STORAGE_WIDTHS

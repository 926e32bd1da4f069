"""Bit packing of weight codes in the packed format (docs/FORMAT.md, "Weights"): storage widths, word-padded
rows and the order of the fields inside each 32-bit word.

A row (one output channel of a conv / fully connected layer, or the whole filter of a depthwise layer) is
packed into whole little-endian 32-bit words of ``32 // bits`` fields. Inside a word the fields are
interleaved for the Cortex-M4 DSP kernels: word position ``r`` (0 <= r < 32 // bits) sits at bit
``16 * h + bits * j`` with ``q, s = divmod(r, 4)``, ``j = 2 * q + (s & 1)``, ``h = s >> 1``. Thus field ``j`` of
the low half-word and field ``j`` of the high half-word are the positions that SXTB16 / SXTB16-ROR-8 put
into the two 16-bit lanes of a register when it widens 4 input bytes, and ``(word ROR bits*j) & mask``
yields both in one instruction. At 8 bits this is the plain byte order.
"""

import numpy as np

from tflm_export.tflite_model import ExportError

STORAGE_WIDTHS = (1, 2, 4, 8)  # qgt_keras.layer_kinds counts bytes with the same widths (a test checks)
WORD_BITS = 32
WORD_BYTES = WORD_BITS // 8


def storage_bits(codes):
    """Smallest width in 1, 2, 4, 8 that holds ``codes`` (1 bit: only -1 and +1)."""
    codes = np.asarray(codes)
    if codes.size == 0:
        return 8
    low, high = int(codes.min()), int(codes.max())
    if set(np.unique(codes).tolist()) <= {-1, 1}:
        return 1
    for bits in (2, 4, 8):
        if -(2 ** (bits - 1)) <= low and high <= 2 ** (bits - 1) - 1:
            return bits
    raise ExportError(f"codes in [{low}, {high}] do not fit int8")


def _check_width(bits):
    if bits not in STORAGE_WIDTHS:
        raise ExportError(f"storage width must be one of {STORAGE_WIDTHS}, got {bits}")


def codes_per_word(bits):
    _check_width(bits)
    return WORD_BITS // bits


def field_offsets(bits):
    """Bit offset inside its word of each word position 0 .. 32 // bits - 1 (the interleaved order)."""
    positions = np.arange(codes_per_word(bits))
    quad, slot = positions // 4, positions % 4
    return 16 * (slot >> 1) + bits * (2 * quad + (slot & 1))


def row_bytes(length, bits):
    """Bytes of one packed row of ``length`` codes: whole 32-bit words."""
    return WORD_BYTES * -(-int(length) // codes_per_word(bits))


def _fields(codes, bits):
    """The unsigned field of each code: its low ``bits`` bits in two's complement; 1 bit: +1 -> 1, -1 -> 0."""
    codes = np.asarray(codes).astype(np.int64)
    if bits == 1:
        if not np.all(np.abs(codes) == 1):
            raise ExportError("1-bit codes must be -1 or +1")
        return (codes > 0).astype(np.uint32)
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if codes.size and (codes.min() < low or codes.max() > high):
        raise ExportError(f"codes in [{codes.min()}, {codes.max()}] do not fit {bits} bits")
    return (codes & (2 ** bits - 1)).astype(np.uint32)


def pack_rows(codes, bits):
    """Packs a (rows, length) array of integer codes into rows of whole words; padding fields are 0."""
    _check_width(bits)
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ExportError(f"pack_rows needs a (rows, length) array, got shape {codes.shape}")
    rows, length = codes.shape
    per_word = codes_per_word(bits)
    words = -(-length // per_word)
    fields = np.zeros((rows, words * per_word), np.uint32)
    fields[:, :length] = _fields(codes, bits)
    fields = fields.reshape(rows, words, per_word) << field_offsets(bits).astype(np.uint32)
    return np.bitwise_or.reduce(fields, axis=2).astype("<u4").tobytes()


def unpack_rows(data, bits, rows, length):
    """Inverse of :func:`pack_rows`: a (rows, length) int8 array; the data must be exactly that many rows."""
    _check_width(bits)
    expected = rows * row_bytes(length, bits)
    if len(data) != expected:
        raise ExportError(f"{len(data)} bytes cannot hold exactly {rows} rows of {length} codes of {bits} bits "
                          f"({expected} bytes)")
    words = np.frombuffer(bytes(data), "<u4").reshape(rows, -1)
    fields = (words[:, :, None] >> field_offsets(bits).astype(np.uint32)) & np.uint32(2 ** bits - 1)
    fields = fields.reshape(rows, -1)[:, :length].astype(np.int16)
    if bits == 1:
        return np.where(fields == 1, 1, -1).astype(np.int8)
    return np.where(fields >= 2 ** (bits - 1), fields - 2 ** bits, fields).astype(np.int8)

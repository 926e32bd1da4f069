/* Helpers shared by the kernels of the QGT library; not part of its API. */
#ifndef QGT_INTERNAL_H
#define QGT_INTERNAL_H

#include <string.h>

#include "qgt_kernels.h"

#if defined(__ARM_FEATURE_DSP) && defined(__ARM_FEATURE_SIMD32) && !defined(QGT_PORTABLE)
#define QGT_DSP 1
#include <arm_acle.h>
#else
#define QGT_DSP 0
#endif

/* Code the per-inference path does not take (parsing and parameter setup, done at Prepare or generation time;
 * the generic fallbacks): GCC optimizes a cold function for size, so only the hot code pays for speed in flash.
 * Never on a function the kernels call on their normal path: GCC predicts the blocks that call a cold function
 * as never run and would optimize what follows them, the kernel's loops, for size too. */
#define QGT_COLD __attribute__((cold))

/* A hand-written assembly routine. Word-aligned because its ADR instructions take their offsets from the
 * word-aligned PC: the assembler computes them for a word-aligned start, and at -Os or -O1 (no function
 * alignment) the linker could place the routine at 2 mod 4, sending every computed branch 2 bytes off. */
#define QGT_ASM_ROUTINE __attribute__((naked, aligned(4)))

#define QGT_INT32_MAX 2147483647
#define QGT_INT32_MIN (-QGT_INT32_MAX - 1)

/* A channel's requantization, expanded from the packed parameters into scratch once per kernel call, in one
 * of two forms.
 * Generic (right < 0): TFLite's MultiplyByQuantizedMultiplier of acc + bias with the signed shift `scale`, then
 *   the output offset.
 * Fast (right >= 0; DSP path, when 2 (acc + bias) << left stays below 2^31 for the layer's worst-case
 *   accumulator, and right <= 22): scale is 2^(left+1) and bias the bias times scale, so t = acc * scale + bias
 *   (one MLA) is 2 (acc + bias) << left; round holds 2^(right-1) (0 if right = 0) plus (output offset << right),
 *   sign is -1 when right > 0. SMMLAR(t, multiplier, round) is the rounding doubling high multiply plus round,
 *   and adding sign & (t >> 31) before the arithmetic right shift makes it TFLite's rounding right shift (ties
 *   away from zero) with the output offset added, exactly: the sign of t stands for the sign of the high
 *   product, which differs from it only where t < 0 and the high product is 0, and there both give the output
 *   offset; |high| < 2^30 and |offset << right| < 2^29, so nothing overflows. The field order is the order of
 *   use: LDRD pairs fetch a record (scale and sign unused in the common case, QGT_FAST_RIGHT). */
typedef struct {
  int32_t scale;
  int32_t bias;
  int32_t multiplier;
  int32_t round;
  int32_t right;
  int32_t sign;
} qgt_channel;

static inline size_t qgt__align4(size_t bytes) { return (bytes + 3u) & ~(size_t)3u; }

static inline int32_t qgt__min(int32_t a, int32_t b) { return a < b ? a : b; }
static inline int32_t qgt__max(int32_t a, int32_t b) { return a > b ? a : b; }

/* A positive finite float32 bit pattern as m * 2^e with 2^23 <= m < 2^24 (subnormals normalized). */
qgt_status qgt__float_parts(uint32_t bits, uint32_t *mantissa, int32_t *exponent);

/* TFLite's output size and leading padding along one axis (ComputeOutSize, ComputePaddingWithOffset);
 * QGT_ERR_SHAPE when the output would be empty. */
qgt_status qgt__output_size(int32_t size, int32_t kernel, int32_t stride, int32_t dilation, uint8_t padding,
                            int32_t *output_size, int32_t *leading_padding);

/* Rotate right (a single ROR, or a rotated operand, for a constant n). */
static inline uint32_t qgt__ror(uint32_t x, uint32_t n) { return (x >> n) | (x << ((32u - n) & 31u)); }

/* Little-endian 32-bit load from any address (one LDR on the Cortex-M4, which loads unaligned words). */
static inline uint32_t qgt__load32(const void *p) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  const uint8_t *b = (const uint8_t *)p;
  return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
#else
  uint32_t word;
  memcpy(&word, p, sizeof word);
  return word;
#endif
}

/* Little-endian 32-bit store to any address (one STR on the Cortex-M4). */
static inline void qgt__store32(void *p, uint32_t word) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  uint8_t *b = (uint8_t *)p;
  b[0] = (uint8_t)word;
  b[1] = (uint8_t)(word >> 8);
  b[2] = (uint8_t)(word >> 16);
  b[3] = (uint8_t)(word >> 24);
#else
  memcpy(p, &word, sizeof word);
#endif
}

/* Product of positive dims, or -1 when one is not positive or the product exceeds INT32_MAX. */
int32_t qgt__dims_count(const qgt_dims *dims);

/* Rejects NULL and non-positive/overflowing dims. */
qgt_status qgt__check_dims(const qgt_dims *dims);

/* Whether the byte ranges [a, a + a_bytes) and [b, b + b_bytes) intersect. */
int qgt__overlap(const void *a, size_t a_bytes, const void *b, size_t b_bytes);

/* Checks offsets and clamp range of an int8 kernel. */
qgt_status qgt__check_offsets(int32_t input_offset, int32_t output_offset, qgt_range activation);

/* Scratch check: non-NULL, 4-byte aligned, at least `needed` bytes. */
qgt_status qgt__check_scratch(const void *scratch, size_t scratch_bytes, size_t needed);

/* Bytes of the per-channel table in scratch. */
static inline size_t qgt__channels_bytes(int32_t channels) { return (size_t)channels * sizeof(qgt_channel); }

/* How a layer's channels can be requantized: each has the fast form with a right shift (right >= 1, so no left
 * shift: the pointwise routines specialize this common case); each has the fast form; some do not. */
enum { QGT_GENERIC = 0, QGT_FAST = 1, QGT_FAST_RIGHT = 2 };

/* Fills channels[0 .. filter->out_channels) from the packed biases, scale codes and the 32-entry table (the
 * fast form where the DSP path can use it, with `output_offset` folded in); returns QGT_GENERIC, QGT_FAST or
 * QGT_FAST_RIGHT for the layer. */
int qgt__expand_channels(const qgt_filter *filter, const qgt_quant_params *quant, int32_t output_offset,
                         qgt_channel *channels);

/* TFLite's MultiplyByQuantizedMultiplier (double rounding): a rounding doubling high multiply of
 * x * 2^max(shift, 0) (an int32 product that wraps, as compiled TFLM code computes it), then a rounding
 * arithmetic right shift by max(-shift, 0). Assumes arithmetic right shifts of negative values. */
static inline int32_t qgt__requantize(int32_t x, int32_t multiplier, int32_t shift) {
  const int32_t left = shift > 0 ? shift : 0;
  const int32_t right = shift > 0 ? 0 : -shift;
  const int32_t shifted = (int32_t)((uint32_t)x << left);
  const int32_t high = (int32_t)(((int64_t)shifted * multiplier + ((int64_t)1 << 30)) >> 31);
  const int32_t mask = (int32_t)((1u << right) - 1u);
  const int32_t threshold = (mask >> 1) + (high < 0 ? 1 : 0);
  return (high >> right) + ((high & mask) > threshold ? 1 : 0);
}

/* The generic form of a channel's requantization plus the output offset, saturated to int32 (out of line:
 * the DSP path's hot loops use the fast form). */
int32_t qgt__requantized_generic(int32_t acc, const qgt_channel *channel, int32_t output_offset);

#if QGT_DSP
/* The low 16 bits of v in both half-words: an SXTAB16 operand that adds v to both lanes. */
static inline int32_t qgt__both_lanes(int32_t v) { return (int32_t)((uint32_t)(v & 0xFFFF) * 0x00010001u); }

/* SXTAB16 of x rotated right by 8: its odd bytes sign-extended into two lanes, offset2's lanes added (the
 * rotation folded into the instruction). */
static inline int32_t qgt__sxtab16_odd(int32_t offset2, int32_t x) {
  int32_t r;
  __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(offset2), "r"(x));
  return r;
}

/* The fast form's value (qgt_channel); the hot loops do the same in their assembly. */
static inline __attribute__((always_inline)) int32_t qgt__fast_value(int32_t acc, const qgt_channel *channel) {
  const int32_t t = (int32_t)((uint32_t)acc * (uint32_t)channel->scale + (uint32_t)channel->bias);
  int32_t high;
  __asm__("smmlar %0, %1, %2, %3" : "=r"(high) : "r"(t), "r"(channel->multiplier), "r"(channel->round));
  return (high + (channel->sign & (t >> 31))) >> channel->right;
}

/* The fast form's output saturated to int8, for layers whose channels all have it and whose clamp range is
 * the whole int8 range. */
static inline __attribute__((always_inline)) int32_t qgt__fast_output(int32_t acc, const qgt_channel *channel) {
  return __ssat(qgt__fast_value(acc, channel), 8);
}

/* The requantized accumulator (bias not yet added) plus the output offset, before the activation clamp. */
static inline int32_t qgt__requantized(int32_t acc, const qgt_channel *channel, int32_t output_offset) {
  if (channel->right >= 0) return qgt__fast_value(acc, channel);
  return qgt__requantized_generic(acc, channel, output_offset);
}
#else
static inline int32_t qgt__requantized(int32_t acc, const qgt_channel *channel, int32_t output_offset) {
  return qgt__requantized_generic(acc, channel, output_offset);
}
#endif

/* The int8 output of an accumulator (bias not yet added). */
static inline int8_t qgt__output(int32_t acc, const qgt_channel *channel, int32_t output_offset,
                                 qgt_range activation) {
  const int32_t v = qgt__requantized(acc, channel, output_offset);
  return (int8_t)(v < activation.min ? activation.min : v > activation.max ? activation.max : v);
}

/* The code in the field at bit `offset` of a weight word: two's complement; 1 bit: 1 -> +1, 0 -> -1. */
static inline int32_t qgt__field_code(uint32_t word, int32_t offset, int32_t bits) {
  const uint32_t field = (word >> offset) & ((1u << bits) - 1u);
  if (bits == 1) return field ? 1 : -1;
  return (int32_t)field - (field >> (bits - 1) ? (int32_t)(1u << bits) : 0);
}

/* Weight code `position` of a packed row (FORMAT.md, "Order inside a word"). */
static inline int32_t qgt__code(const uint8_t *row, int32_t position, int32_t bits) {
  const int32_t per_word = 32 / bits;
  const int32_t r = position % per_word;
  const int32_t offset = 16 * ((r & 2) >> 1) + bits * (2 * (r / 4) + (r & 1));
  return qgt__field_code(qgt__load32(row + 4 * (position / per_word)), offset, bits);
}

#endif /* QGT_INTERNAL_H */

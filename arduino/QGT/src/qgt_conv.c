/* CONV_2D and FULLY_CONNECTED over packed rows (a fully connected layer is a 1x1 conv over its input rows).
 *
 * Pixels are taken two at a time: their receptive fields are copied into scratch as 16-bit values with the
 * input offset added (zero where the window leaves the input), interleaved pixel by pixel, word by word, in
 * the lane order that SXTAB16 produces: copy word 2*i + p holds, for pixel p, values (4q, 4q+2) when
 * i = 2q and (4q+1, 4q+3) when i = 2q+1. Output channels are then taken two at a time, and each 2 x 2 block
 * of accumulators is a dot product of two packed rows with the two copies: the field order of the packed
 * format (FORMAT.md) puts field j of both half-words of a weight word against copy word j. On the DSP path a
 * pair of fields is one AND of the rotated word (1, 2, 4 bits: the codes read as unsigned, c + 2^(bits-1),
 * and 2^(bits-1) times the pixel's sum of copied values subtracted once) or one SXTB16 (8 bits), and one
 * LDRD fetches copy word j of both pixels, which two SMLADs then use.
 */
#include "qgt_internal.h"

static inline int32_t quads_of(int32_t length) { return (length + 3) / 4; }

/* Copy words for a pixel pair: 2 words per quad per pixel. */
static size_t pair_copy_bytes(const qgt_filter *filter) { return (size_t)16 * (size_t)quads_of(filter->row_length); }

/* channels | pair copy | gathered field */
static size_t conv_scratch_size(const qgt_filter *filter) {
  return qgt__align4(qgt__channels_bytes(filter->out_channels)) + pair_copy_bytes(filter) +
         (size_t)4 * (size_t)quads_of(filter->row_length);
}

/* Halfword of the pair copy holding value k of pixel p. */
static inline int32_t copy_halfword(int32_t k, int32_t p) {
  const int32_t word = 2 * (k >> 2) + (k & 1);
  return 2 * (2 * word + p) + ((k >> 1) & 1);
}

#if QGT_DSP
static const uint32_t kOnes = 0x00010001u;
#endif

/* Copies n bytes: short runs (a filter row of few channels) inline, long ones through memcpy. */
static inline void copy_bytes_to(int8_t *to, const int8_t *from, int32_t n) {
  if (n >= 16) {
    memcpy(to, from, (size_t)n);
    return;
  }
  for (int32_t i = 0; i < n; ++i) to[i] = from[i];
}

/* Gathers the receptive field of output pixel `pixel` (batch-major raster order) into `field`, K int8 values
 * in the filter's order; positions outside the input hold the input zero point, whose value plus the input
 * offset is zero. */
static void gather_field(const qgt_conv_params *params, const qgt_dims *input_dims, const int8_t *input,
                         const qgt_filter *filter, const qgt_dims *output_dims, int32_t pixel, int8_t *field) {
  const int32_t out_w = output_dims->w, out_h = output_dims->h, in_c = input_dims->c, kw = filter->kernel_w;
  const int32_t batch = pixel / (out_h * out_w), oy = pixel / out_w % out_h, ox = pixel % out_w;
  const int32_t y0 = oy * params->stride.h - params->padding.h, x0 = ox * params->stride.w - params->padding.w;
  const int8_t *image = input + (size_t)batch * input_dims->h * input_dims->w * in_c;
  const int8_t zero = (int8_t)(-params->input_offset);
  const int32_t x_last = x0 + (kw - 1) * params->dilation.w;
  const int contiguous = params->dilation.w == 1 && x0 >= 0 && x_last < input_dims->w; /* a row of taps in one run */
  int8_t *out = field;
  for (int32_t ky = 0; ky < filter->kernel_h; ++ky) {
    const int32_t y = y0 + ky * params->dilation.h;
    if (y < 0 || y >= input_dims->h) {
      for (int32_t i = 0; i < kw * in_c; ++i) out[i] = zero;
    } else if (contiguous) {
      copy_bytes_to(out, image + ((size_t)y * input_dims->w + x0) * in_c, kw * in_c);
    } else {
      for (int32_t kx = 0; kx < kw; ++kx) {
        const int32_t x = x0 + kx * params->dilation.w;
        if (x < 0 || x >= input_dims->w) {
          for (int32_t i = 0; i < in_c; ++i) out[kx * in_c + i] = zero;
        } else {
          copy_bytes_to(out + kx * in_c, image + ((size_t)y * input_dims->w + x) * in_c, in_c);
        }
      }
    }
    out += kw * in_c;
  }
}

/* Widens `length` int8 values (the input offset added) into pixel p of the pair copy, zeros up to the next
 * whole quad; returns their sum. */
static int32_t widen(const int8_t *values, int32_t length, int32_t input_offset, int32_t p, int16_t *copy) {
  int32_t sum = 0, k = 0;
#if QGT_DSP
  const uint32_t offset = (uint32_t)(input_offset & 0xFFFF) * kOnes;
  uint32_t *words = (uint32_t *)(void *)copy + p;
  for (; k + 4 <= length; k += 4, words += 4) {
    const uint32_t x4 = qgt__load32(values + k);
    const uint32_t even = (uint32_t)__sxtab16((int32_t)offset, (int32_t)x4);
    const uint32_t odd = (uint32_t)__sxtab16((int32_t)offset, (int32_t)qgt__ror(x4, 8));
    words[0] = even;
    words[2] = odd;
    sum = __smlad((int32_t)even, (int32_t)kOnes, sum);
    sum = __smlad((int32_t)odd, (int32_t)kOnes, sum);
  }
#endif
  for (; k < 4 * quads_of(length); ++k) {
    const int32_t value = k < length ? values[k] + input_offset : 0;
    copy[copy_halfword(k, p)] = (int16_t)value;
    sum += value;
  }
  return sum;
}

#if QGT_DSP
/* One quad of the 2 x 2 block on the DSP path: copy words 2q and 2q+1 of both pixels (two LDRD at byte offset
 * `offset` of c) against fields j = 2q and 2q+1 of both rows' weight words, which are one AND each of the
 * word rotated by `rot0` and `rot1` bits (j * bits). Hand-scheduled because the block needs 14 live
 * registers, which the compiler spills. */
#define QGT_QUAD_ASM(offset, and0, and1)                                        \
  "ldrd %[x0], %[x1], [%[c], #" #offset "]\n\t"                                \
  "and %[l], %[m], %[w0]" and0 "\n\t"                                          \
  "smlad %[a00], %[l], %[x0], %[a00]\n\t"                                      \
  "smlad %[a01], %[l], %[x1], %[a01]\n\t"                                      \
  "and %[l], %[m], %[w1]" and0 "\n\t"                                          \
  "smlad %[a10], %[l], %[x0], %[a10]\n\t"                                      \
  "smlad %[a11], %[l], %[x1], %[a11]\n\t"                                      \
  "ldrd %[x0], %[x1], [%[c], #" #offset "+8]\n\t"                              \
  "and %[l], %[m], %[w0]" and1 "\n\t"                                          \
  "smlad %[a00], %[l], %[x0], %[a00]\n\t"                                      \
  "smlad %[a01], %[l], %[x1], %[a01]\n\t"                                      \
  "and %[l], %[m], %[w1]" and1 "\n\t"                                          \
  "smlad %[a10], %[l], %[x0], %[a10]\n\t"                                      \
  "smlad %[a11], %[l], %[x1], %[a11]\n\t"
#define QGT_ROR(n) ", ror #" #n
#define QGT_RUN_ASM(code)                                                                                   \
  do {                                                                                                      \
    uint32_t l, x0, x1;                                                                                     \
    __asm__(code                                                                                            \
            : [a00] "+r"(a00), [a01] "+r"(a01), [a10] "+r"(a10), [a11] "+r"(a11), [l] "=&r"(l),            \
              [x0] "=&r"(x0), [x1] "=&r"(x1)                                                               \
            : [w0] "r"(w0), [w1] "r"(w1), [m] "r"(mask), [c] "r"(c)                                         \
            : "memory");                                                                                    \
  } while (0)

/* Whole weight words: the quads of each width with their rotations. */
#define QGT_WORD_1                                                                                 \
  QGT_QUAD_ASM(0, "", QGT_ROR(1)) QGT_QUAD_ASM(16, QGT_ROR(2), QGT_ROR(3))                          \
  QGT_QUAD_ASM(32, QGT_ROR(4), QGT_ROR(5)) QGT_QUAD_ASM(48, QGT_ROR(6), QGT_ROR(7))                 \
  QGT_QUAD_ASM(64, QGT_ROR(8), QGT_ROR(9)) QGT_QUAD_ASM(80, QGT_ROR(10), QGT_ROR(11))               \
  QGT_QUAD_ASM(96, QGT_ROR(12), QGT_ROR(13)) QGT_QUAD_ASM(112, QGT_ROR(14), QGT_ROR(15))
#define QGT_WORD_2                                                                                 \
  QGT_QUAD_ASM(0, "", QGT_ROR(2)) QGT_QUAD_ASM(16, QGT_ROR(4), QGT_ROR(6))                          \
  QGT_QUAD_ASM(32, QGT_ROR(8), QGT_ROR(10)) QGT_QUAD_ASM(48, QGT_ROR(12), QGT_ROR(14))
#define QGT_WORD_4 QGT_QUAD_ASM(0, "", QGT_ROR(4)) QGT_QUAD_ASM(16, QGT_ROR(8), QGT_ROR(12))
#define QGT_FIRST_QUAD_1 QGT_QUAD_ASM(0, "", QGT_ROR(1))
#define QGT_FIRST_QUAD_2 QGT_QUAD_ASM(0, "", QGT_ROR(2))
#define QGT_FIRST_QUAD_4 QGT_QUAD_ASM(0, "", QGT_ROR(4))

/* acc[2*r + p] = row r . copy of pixel p over `quads` quads (DSP path). Unsigned fields: the caller corrects.
 * A partial last word is taken quad by quad, its fields rotated into place. */
#define QGT_DOT_UNSIGNED(name, BITS, FLIP, WORD, FIRST_QUAD)                                               \
  static inline __attribute__((always_inline)) void name(const uint32_t *r0, const uint32_t *r1,          \
                                                         const uint32_t *c, int32_t quads, int32_t acc[4]) { \
    enum { QUADS = 8 / BITS };                                                                             \
    const uint32_t mask = ((1u << BITS) - 1u) * 0x00010001u;                                               \
    int32_t a00 = 0, a01 = 0, a10 = 0, a11 = 0;                                                            \
    for (int32_t words = quads / QUADS; words > 0; --words) {                                              \
      const uint32_t w0 = *r0++ ^ (FLIP), w1 = *r1++ ^ (FLIP);                                             \
      QGT_RUN_ASM(WORD);                                                                                   \
      c += 4 * QUADS;                                                                                      \
    }                                                                                                      \
    int32_t rest = quads % QUADS;                                                                          \
    if (rest > 0) {                                                                                        \
      uint32_t w0 = *r0 ^ (FLIP), w1 = *r1 ^ (FLIP);                                                       \
      for (; rest > 0; --rest, c += 4) {                                                                   \
        QGT_RUN_ASM(FIRST_QUAD);                                                                           \
        w0 = qgt__ror(w0, 2 * BITS);                                                                       \
        w1 = qgt__ror(w1, 2 * BITS);                                                                       \
      }                                                                                                    \
    }                                                                                                      \
    acc[0] = a00;                                                                                          \
    acc[1] = a01;                                                                                          \
    acc[2] = a10;                                                                                          \
    acc[3] = a11;                                                                                          \
  }

QGT_DOT_UNSIGNED(dot_1bit, 1, 0u, QGT_WORD_1, QGT_FIRST_QUAD_1)
QGT_DOT_UNSIGNED(dot_2bit, 2, 0xAAAAAAAAu, QGT_WORD_2, QGT_FIRST_QUAD_2)
QGT_DOT_UNSIGNED(dot_4bit, 4, 0x88888888u, QGT_WORD_4, QGT_FIRST_QUAD_4)

/* SXTB16 of w rotated right by 8 (the odd bytes), the rotation folded into the instruction. */
static inline int32_t sxtb16_odd(uint32_t w) {
  int32_t r;
  __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(w));
  return r;
}

static inline __attribute__((always_inline)) void dot_8bit(const uint32_t *r0, const uint32_t *r1, const uint32_t *c,
                                                         int32_t quads, int32_t acc[4]) {
  int32_t a00 = 0, a01 = 0, a10 = 0, a11 = 0;
  for (; quads > 0; --quads) {
    const uint32_t w0 = *r0++, w1 = *r1++;
    const int32_t e0 = __sxtb16((int32_t)w0), o0 = sxtb16_odd(w0);
    const int32_t e1 = __sxtb16((int32_t)w1), o1 = sxtb16_odd(w1);
    const int32_t x0e = (int32_t)c[0], x1e = (int32_t)c[1], x0o = (int32_t)c[2], x1o = (int32_t)c[3];
    c += 4;
    a00 = __smlad(e0, x0e, a00);
    a00 = __smlad(o0, x0o, a00);
    a01 = __smlad(e0, x1e, a01);
    a01 = __smlad(o0, x1o, a01);
    a10 = __smlad(e1, x0e, a10);
    a10 = __smlad(o1, x0o, a10);
    a11 = __smlad(e1, x1e, a11);
    a11 = __smlad(o1, x1o, a11);
  }
  acc[0] = a00;
  acc[1] = a01;
  acc[2] = a10;
  acc[3] = a11;
}

/* The true accumulators from the unsigned-field sums: raw_scale * raw - sum_scale * pixel sum, modulo 2^32 (the
 * raw sums may wrap where the true ones do not). */
static inline void correct(int32_t acc[4], int32_t bits, const int32_t sums[2]) {
  if (bits == 8) return;
  const uint32_t scale = bits == 1 ? 2u : 1u, c0 = (uint32_t)sums[0] << (bits == 1 ? 0 : bits - 1),
                 c1 = (uint32_t)sums[1] << (bits == 1 ? 0 : bits - 1);
  acc[0] = (int32_t)((uint32_t)acc[0] * scale - c0);
  acc[1] = (int32_t)((uint32_t)acc[1] * scale - c1);
  acc[2] = (int32_t)((uint32_t)acc[2] * scale - c0);
  acc[3] = (int32_t)((uint32_t)acc[3] * scale - c1);
}
#endif

/* The 2 x 2 block of accumulators of rows (r0, r1) and the pair copy (sums of the two pixels' copies). */
static inline __attribute__((always_inline)) void dot_block(int32_t bits, const uint8_t *r0, const uint8_t *r1,
                                                            const int16_t *copy, int32_t quads, const int32_t sums[2],
                                                            int32_t acc[4]) {
#if QGT_DSP
  const uint32_t *w0 = (const uint32_t *)(const void *)r0, *w1 = (const uint32_t *)(const void *)r1;
  const uint32_t *c = (const uint32_t *)(const void *)copy;
  switch (bits) { /* only the widths of the build (QGT_WEIGHT_BITS_MASK) reach here */
#if (QGT_WEIGHT_BITS_MASK >> 1) & 1u
    case 1: dot_1bit(w0, w1, c, quads, acc); break;
#endif
#if (QGT_WEIGHT_BITS_MASK >> 2) & 1u
    case 2: dot_2bit(w0, w1, c, quads, acc); break;
#endif
#if (QGT_WEIGHT_BITS_MASK >> 4) & 1u
    case 4: dot_4bit(w0, w1, c, quads, acc); break;
#endif
    default: dot_8bit(w0, w1, c, quads, acc); break;
  }
  correct(acc, bits, sums);
#else
  const int32_t quads_per_word = 8 / bits;
  (void)sums;
  acc[0] = acc[1] = acc[2] = acc[3] = 0;
  for (int32_t q = 0, t = 0; q < quads; q += quads_per_word, ++t) {
    const uint32_t w0 = qgt__load32(r0 + 4 * t), w1 = qgt__load32(r1 + 4 * t);
    const int32_t copy_words = 2 * qgt__min(quads_per_word, quads - q);
    for (int32_t j = 0; j < copy_words; ++j) { /* field j of both half-words against copy word 2q + j */
      const int16_t *pair = copy + 4 * (2 * q + j); /* pixel 0: pair[0], pair[1]; pixel 1: pair[2], pair[3] */
      for (int32_t h = 0; h < 2; ++h) {
        const int32_t k0 = qgt__field_code(w0, 16 * h + bits * j, bits), k1 = qgt__field_code(w1, 16 * h + bits * j, bits);
        acc[0] += k0 * pair[h];
        acc[1] += k0 * pair[2 + h];
        acc[2] += k1 * pair[h];
        acc[3] += k1 * pair[2 + h];
      }
    }
  }
#endif
}

/* Requantizes and stores channel `channel`'s outputs of the block's two pixels, for a constant `form`: the
 * layer's requantization form when its clamp is the whole int8 range, else QGT_GENERIC. */
static inline __attribute__((always_inline)) void store_channel(int32_t acc_p0, int32_t acc_p1,
                                                                const qgt_channel *channel, int8_t *out0,
                                                                int8_t *out1, int32_t output_offset,
                                                                qgt_range activation, int form) {
#if QGT_DSP
  if (form != QGT_GENERIC) {
    const qgt_channel record = *channel; /* once for both pixels: the byte stores could alias it */
    const int32_t v0 = qgt__fast_output(acc_p0, &record, form), v1 = qgt__fast_output(acc_p1, &record, form);
    *out0 = (int8_t)v0;
    *out1 = (int8_t)v1;
    return;
  }
#else
  (void)form;
#endif
  *out0 = qgt__output(acc_p0, channel, output_offset, activation);
  *out1 = qgt__output(acc_p1, channel, output_offset, activation);
}

typedef struct {
  const qgt_conv_params *params;
  const qgt_dims *input_dims, *output_dims;
  const int8_t *input;
  const qgt_filter *filter;
  int8_t *output;
  const qgt_channel *channels;
  int16_t *copy;
  int8_t *field; /* one receptive field gathered as int8, for non-pointwise layers */
  int pointwise;
  int form; /* the requantization form (QGT_FAST...) when the clamp is the whole int8 range, else QGT_GENERIC */
} conv_job;

/* An odd last channel: its row twice, the second result dropped (out of line: rare, and kept out of the
 * specialized loops for flash). */
static __attribute__((noinline)) void last_channel(const conv_job *job, int32_t bits, const int32_t sums[2],
                                                   const uint8_t *row, const qgt_channel *channel, int8_t *out0,
                                                   int8_t *out1) {
  int32_t acc[4];
  dot_block(bits, row, row, job->copy, quads_of(job->filter->row_length), sums, acc);
  store_channel(acc[0], acc[1], channel, out0, out1, job->params->output_offset, job->params->activation,
                QGT_GENERIC);
}

/* The channel pairs of one pixel pair (pixel 1's outputs at out1, which is out0 when the pair is one pixel
 * taken twice), for constant `bits` and requantization `form` (the compiler specializes them). */
static inline __attribute__((always_inline)) void channel_pairs(const conv_job *job, int32_t bits, int fast,
                                                                const int32_t sums[2], int8_t *out0, int8_t *out1) {
  const qgt_filter *filter = job->filter;
  const int32_t out_c = filter->out_channels, quads = quads_of(filter->row_length), row_bytes = filter->row_bytes;
  const int32_t output_offset = job->params->output_offset;
  const qgt_range activation = job->params->activation;
  const uint8_t *row = filter->weights;
  const qgt_channel *channel = job->channels;
  int32_t c = 0;
  for (; c + 2 <= out_c; c += 2, row += 2 * row_bytes, channel += 2) {
    int32_t acc[4];
    dot_block(bits, row, row + row_bytes, job->copy, quads, sums, acc);
    store_channel(acc[0], acc[1], &channel[0], out0 + c, out1 + c, output_offset, activation, fast);
    store_channel(acc[2], acc[3], &channel[1], out0 + c + 1, out1 + c + 1, output_offset, activation, fast);
  }
  if (c < out_c) last_channel(job, bits, sums, row, channel, out0 + c, out1 + c);
}

/* Per width: the common form (QGT_FAST_RIGHT) specialized, any other one through the general code. */
#define QGT_CHANNEL_PAIRS(bits)                                                                              \
  static void channel_pairs_##bits(const conv_job *job, const int32_t sums[2], int8_t *out0, int8_t *out1) { \
    if (job->form == QGT_FAST_RIGHT) {                                                                       \
      channel_pairs(job, bits, QGT_FAST_RIGHT, sums, out0, out1);                                            \
    } else {                                                                                                 \
      channel_pairs(job, bits, job->form == QGT_FAST ? QGT_FAST : QGT_GENERIC, sums, out0, out1);            \
    }                                                                                                        \
  }
#if (QGT_WEIGHT_BITS_MASK >> 1) & 1u
QGT_CHANNEL_PAIRS(1)
#endif
#if (QGT_WEIGHT_BITS_MASK >> 2) & 1u
QGT_CHANNEL_PAIRS(2)
#endif
#if (QGT_WEIGHT_BITS_MASK >> 4) & 1u
QGT_CHANNEL_PAIRS(4)
#endif
#if (QGT_WEIGHT_BITS_MASK >> 8) & 1u
QGT_CHANNEL_PAIRS(8)
#endif

/* The loop over a width's channel pairs, or NULL for a width this build leaves out. */
typedef void (*channel_loop)(const conv_job *, const int32_t[2], int8_t *, int8_t *);
static channel_loop channel_loop_of(int32_t bits) {
  switch (bits) {
#if (QGT_WEIGHT_BITS_MASK >> 1) & 1u
    case 1: return channel_pairs_1;
#endif
#if (QGT_WEIGHT_BITS_MASK >> 2) & 1u
    case 2: return channel_pairs_2;
#endif
#if (QGT_WEIGHT_BITS_MASK >> 4) & 1u
    case 4: return channel_pairs_4;
#endif
#if (QGT_WEIGHT_BITS_MASK >> 8) & 1u
    case 8: return channel_pairs_8;
#endif
    default: return NULL;
  }
}

/* The loop over pixel pairs; an odd last pixel is a pair of itself. */
static void conv_rows(const conv_job *job) {
  const qgt_filter *filter = job->filter;
  const int32_t pixels = job->output_dims->n * job->output_dims->h * job->output_dims->w;
  const int32_t out_c = filter->out_channels;
  const channel_loop channels_of_pair = channel_loop_of(filter->weight_bits);
  for (int32_t p = 0; p < pixels; p += 2) {
    const int32_t second = p + 1 < pixels ? p + 1 : p;
    int32_t sums[2];
    const int32_t offset = job->params->input_offset, length = filter->row_length;
    if (job->pointwise) { /* the receptive field is the input pixel */
      sums[0] = widen(job->input + (size_t)p * length, length, offset, 0, job->copy);
      sums[1] = widen(job->input + (size_t)second * length, length, offset, 1, job->copy);
    } else {
      gather_field(job->params, job->input_dims, job->input, filter, job->output_dims, p, job->field);
      sums[0] = widen(job->field, length, offset, 0, job->copy);
      gather_field(job->params, job->input_dims, job->input, filter, job->output_dims, second, job->field);
      sums[1] = widen(job->field, length, offset, 1, job->copy);
    }
    channels_of_pair(job, sums, job->output + (size_t)p * out_c, job->output + (size_t)second * out_c);
  }
}

/* Output may overlap input only for pointwise layers, where pixel pairs are copied before they are
 * overwritten: output + k * out_c <= input + k * in_c for k = 1 .. pixels. */
static qgt_status check_overlap(const int8_t *input, size_t input_bytes, const int8_t *output, size_t output_bytes,
                                int pointwise, int32_t pixels, int32_t in_c, int32_t out_c) {
  if (!qgt__overlap(input, input_bytes, output, output_bytes)) return QGT_OK;
  if (!pointwise) return QGT_ERR_ARGUMENT;
  const intptr_t gap = (intptr_t)input - (intptr_t)output; /* both bounds are linear in k: check the ends */
  if (gap + (intptr_t)in_c - out_c < 0 || gap + (intptr_t)pixels * (in_c - out_c) < 0) return QGT_ERR_ARGUMENT;
  return QGT_OK;
}

qgt_status qgt_conv_params_init(const qgt_layer *layer, const qgt_dims *input_dims, qgt_tensor_quant input,
                                qgt_tensor_quant output, qgt_conv_params *params, qgt_dims *output_dims) {
  qgt_conv_params p;
  qgt_dims out;
  if (layer == NULL || params == NULL || output_dims == NULL) return QGT_ERR_ARGUMENT;
  if (layer->op == QGT_OP_FULLY_CONNECTED) return QGT_ERR_ARGUMENT;
  qgt_status status = qgt__check_dims(input_dims);
  if (status != QGT_OK) return status;
  if (input_dims->c != layer->filter.in_channels) return QGT_ERR_SHAPE;
  if (input.zero_point < -128 || input.zero_point > 127) return QGT_ERR_ARGUMENT;
  status = qgt__output_size(input_dims->h, layer->filter.kernel_h, layer->stride.h, layer->dilation.h, layer->padding,
                            &out.h, &p.padding.h);
  if (status == QGT_OK) {
    status = qgt__output_size(input_dims->w, layer->filter.kernel_w, layer->stride.w, layer->dilation.w,
                              layer->padding, &out.w, &p.padding.w);
  }
  if (status == QGT_OK) status = qgt_activation_range(layer->activation, output, &p.activation);
  if (status != QGT_OK) return status;
  out.n = input_dims->n;
  out.c = layer->filter.out_channels;
  if (qgt__dims_count(&out) < 0) return QGT_ERR_SHAPE;
  p.input_offset = -input.zero_point;
  p.output_offset = output.zero_point;
  p.stride = layer->stride;
  p.dilation = layer->dilation;
  p.depth_multiplier = layer->depth_multiplier;
  *params = p;
  *output_dims = out;
  return QGT_OK;
}

size_t qgt_conv2d_scratch_size(const qgt_conv_params *params, const qgt_dims *input_dims, const qgt_filter *filter,
                               const qgt_dims *output_dims) {
  (void)params; /* the copies hold one receptive field per pixel of a pair, whatever the geometry */
  (void)input_dims;
  (void)output_dims;
  return filter == NULL ? 0 : conv_scratch_size(filter);
}

static qgt_status check_filter(const qgt_filter *filter, int32_t row_length) {
  if (filter->weights == NULL || filter->bias == NULL || filter->scale_codes == NULL) return QGT_ERR_ARGUMENT;
  if (((uintptr_t)filter->weights & 3u) != 0) return QGT_ERR_ARGUMENT;
  if (!QGT_SUPPORTS_BITS(filter->weight_bits)) return QGT_ERR_OPTIONS;
  const int64_t per_word = 32 / filter->weight_bits;
  if (filter->out_channels <= 0 || filter->row_length != row_length ||
      filter->row_bytes != 4 * ((row_length + per_word - 1) / per_word)) {
    return QGT_ERR_SHAPE;
  }
  return QGT_OK;
}

qgt_status qgt_conv2d(const qgt_conv_params *params, const qgt_quant_params *quant, const qgt_dims *input_dims,
                      const int8_t *input, const qgt_filter *filter, const qgt_dims *output_dims, int8_t *output,
                      void *scratch, size_t scratch_bytes) {
  if (params == NULL || quant == NULL || input == NULL || filter == NULL || output == NULL) return QGT_ERR_ARGUMENT;
  qgt_status status = qgt__check_dims(input_dims);
  if (status == QGT_OK) status = qgt__check_dims(output_dims);
  if (status != QGT_OK) return status;
  if (filter->kernel_h <= 0 || filter->kernel_w <= 0 || filter->in_channels != input_dims->c ||
      (int64_t)filter->kernel_h * filter->kernel_w * input_dims->c > QGT_INT32_MAX ||
      output_dims->c != filter->out_channels || output_dims->n != input_dims->n) {
    return QGT_ERR_SHAPE;
  }
  status = check_filter(filter, filter->kernel_h * filter->kernel_w * input_dims->c);
  if (status != QGT_OK) return status;
  if (params->stride.h <= 0 || params->stride.w <= 0 || params->dilation.h <= 0 || params->dilation.w <= 0 ||
      params->padding.h < 0 || params->padding.w < 0) {
    return QGT_ERR_ARGUMENT;
  }
  status = qgt__check_offsets(params->input_offset, params->output_offset, params->activation);
  if (status == QGT_OK) status = qgt__check_scratch(scratch, scratch_bytes, conv_scratch_size(filter));
  if (status != QGT_OK) return status;
  const int pointwise = filter->kernel_h == 1 && filter->kernel_w == 1 && params->stride.h == 1 &&
                        params->stride.w == 1 && params->padding.h == 0 && params->padding.w == 0 &&
                        output_dims->h == input_dims->h && output_dims->w == input_dims->w;
  const int32_t pixels = output_dims->n * output_dims->h * output_dims->w;
  const size_t input_bytes = (size_t)qgt__dims_count(input_dims), output_bytes = (size_t)qgt__dims_count(output_dims);
  status = check_overlap(input, input_bytes, output, output_bytes, pointwise, pixels, input_dims->c, output_dims->c);
  if (status == QGT_OK && (qgt__overlap(scratch, scratch_bytes, input, input_bytes) ||
                           qgt__overlap(scratch, scratch_bytes, output, output_bytes))) {
    status = QGT_ERR_SCRATCH;
  }
  if (status != QGT_OK) return status;
  qgt_channel *channels = (qgt_channel *)scratch;
  uint8_t *copy = (uint8_t *)scratch + qgt__align4(qgt__channels_bytes(filter->out_channels));
  const int form = qgt__expand_channels(filter, quant, params->output_offset, channels);
  const int full_range = params->activation.min == -128 && params->activation.max == 127;
  const conv_job job = {params, input_dims, output_dims, input, filter, output, channels,
                        (int16_t *)(void *)copy, (int8_t *)(copy + pair_copy_bytes(filter)), pointwise,
                        full_range ? form : QGT_GENERIC};
  conv_rows(&job);
  return QGT_OK;
}

qgt_status qgt_fc_params_init(const qgt_layer *layer, int32_t input_elements, qgt_tensor_quant input,
                              qgt_tensor_quant output, qgt_fc_params *params, qgt_dims *input_dims,
                              qgt_dims *output_dims) {
  qgt_fc_params p;
  if (layer == NULL || params == NULL || input_dims == NULL || output_dims == NULL) return QGT_ERR_ARGUMENT;
  if (layer->op != QGT_OP_FULLY_CONNECTED) return QGT_ERR_ARGUMENT;
  if (input_elements <= 0 || input_elements % layer->filter.in_channels != 0) return QGT_ERR_SHAPE;
  if (input.zero_point < -128 || input.zero_point > 127) return QGT_ERR_ARGUMENT;
  const int32_t rows = input_elements / layer->filter.in_channels;
  if ((int64_t)rows * layer->filter.out_channels > QGT_INT32_MAX) return QGT_ERR_SHAPE;
  qgt_status status = qgt_activation_range(layer->activation, output, &p.activation);
  if (status != QGT_OK) return status;
  p.input_offset = -input.zero_point;
  p.output_offset = output.zero_point;
  *params = p;
  input_dims->n = output_dims->n = rows;
  input_dims->h = input_dims->w = output_dims->h = output_dims->w = 1;
  input_dims->c = layer->filter.in_channels;
  output_dims->c = layer->filter.out_channels;
  return QGT_OK;
}

size_t qgt_fully_connected_scratch_size(const qgt_fc_params *params, const qgt_dims *input_dims,
                                        const qgt_filter *filter, const qgt_dims *output_dims) {
  (void)params;
  (void)input_dims;
  (void)output_dims;
  return filter == NULL ? 0 : conv_scratch_size(filter);
}

qgt_status qgt_fully_connected(const qgt_fc_params *params, const qgt_quant_params *quant,
                               const qgt_dims *input_dims, const int8_t *input, const qgt_filter *filter,
                               const qgt_dims *output_dims, int8_t *output, void *scratch, size_t scratch_bytes) {
  if (params == NULL || filter == NULL) return QGT_ERR_ARGUMENT;
  qgt_status status = qgt__check_dims(input_dims);
  if (status == QGT_OK) status = qgt__check_dims(output_dims);
  if (status != QGT_OK) return status;
  if (input_dims->h != 1 || input_dims->w != 1 || output_dims->h != 1 || output_dims->w != 1 ||
      filter->kernel_h != 1 || filter->kernel_w != 1) {
    return QGT_ERR_SHAPE;
  }
  const qgt_conv_params conv = {params->input_offset, params->output_offset, {1, 1}, {0, 0}, {1, 1}, 1,
                                params->activation};
  return qgt_conv2d(&conv, quant, input_dims, input, filter, output_dims, output, scratch, scratch_bytes);
}

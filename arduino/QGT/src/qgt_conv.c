/* CONV_2D and FULLY_CONNECTED over packed rows (a fully connected layer is a 1x1 conv over its input rows).
 *
 * Pixels are taken two at a time: their receptive fields are copied into scratch as 16-bit values with the
 * input offset added (zero where the window leaves the input), interleaved pixel by pixel, word by word, in
 * the lane order that SXTAB16 produces: copy word 2*i + p holds, for pixel p, values (4q, 4q+2) when
 * i = 2q and (4q+1, 4q+3) when i = 2q+1. Output channels are then taken two at a time, and each 2 x 2 block
 * of accumulators is a dot product of two packed rows with the two copies: the field order of the packed
 * format (FORMAT.md) puts field j of both half-words of a weight word against copy word j. On the DSP path a
 * pair of fields is one AND of the rotated word (1, 2, 4 bits: the codes read as unsigned, c + 2^(bits-1),
 * the accumulators starting at -2^(bits-1) times the pixel's sum of copied values) or one SXTB16 (8 bits), and
 * one LDRD fetches copy word j of both pixels, which two SMLADs then use: a 2-bit word (16 codes) of two rows
 * against two pixels is 2 loads, 2 EOR, 16 AND, 8 LDRD and 32 SMLAD for 64 multiply-accumulates. The loop over
 * a pixel pair's channel pairs, requantization included, is a hand-written routine per weight width.
 */
#include <stddef.h>

#include "qgt_internal.h"

static inline int32_t quads_of(int32_t length) { return (length + 3) / 4; }

/* Copy words for a pixel pair: 2 words per quad per pixel. */
static size_t pair_copy_bytes(const qgt_filter *filter) { return (size_t)16 * (size_t)quads_of(filter->row_length); }

/* channels | pair copy | gathered field */
static size_t conv_scratch_size(const qgt_filter *filter) {
  return qgt__align4(qgt__channels_bytes(filter->out_channels)) + pair_copy_bytes(filter) +
         (size_t)4 * (size_t)quads_of(filter->row_length);
}

/* Value k of a run of int8 values widened in SXTAB16's order (even bytes, then odd bytes, of each word) is
 * half-word lane_half(k) of 32-bit word lane_word(k). */
static inline int32_t lane_word(int32_t k) { return 2 * (k >> 2) + (k & 1); }
static inline int32_t lane_half(int32_t k) { return (k >> 1) & 1; }

/* Halfword of the pair copy holding value k of pixel p. */
static inline int32_t copy_halfword(int32_t k, int32_t p) { return 2 * (2 * lane_word(k) + p) + lane_half(k); }

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

/* Where a layer's receptive fields come from: the geometry, fixed per call. */
typedef struct {
  const int8_t *input;
  size_t image_bytes, row_bytes; /* an input image, an input row */
  int32_t in_h, in_w, in_c, kh, kw;
  int32_t run;    /* bytes of a filter row: kw * in_c */
  int32_t length; /* K */
  int32_t padded; /* K up to a whole quad */
  qgt_tile stride, padding, dilation;
  int8_t zero;    /* the input zero point */
  int word_rows;  /* filter rows of at most 4 bytes, taken as one word each (see word_field) */
  int8_t *field;  /* where a field is gathered */
} fields;

static fields fields_of(const qgt_conv_params *params, const qgt_dims *input_dims, const int8_t *input,
                        const qgt_filter *filter, int8_t *field) {
  fields f;
  f.input = input;
  f.in_h = input_dims->h;
  f.in_w = input_dims->w;
  f.in_c = input_dims->c;
  f.row_bytes = (size_t)f.in_w * (size_t)f.in_c;
  f.image_bytes = (size_t)f.in_h * f.row_bytes;
  f.kh = filter->kernel_h;
  f.kw = filter->kernel_w;
  f.run = f.kw * f.in_c;
  f.length = filter->row_length;
  f.padded = 4 * quads_of(f.length);
  f.stride = params->stride;
  f.padding = params->padding;
  f.dilation = params->dilation;
  f.zero = (int8_t)(-params->input_offset);
  f.word_rows = params->dilation.w == 1 && f.run <= 4 && (f.kh - 1) * f.run + 4 <= f.padded;
  f.field = field;
  return f;
}

/* The input zero point over the field's padding up to a whole quad: 1 to 3 bytes merged into the last word. */
static inline void pad_field(int8_t *field, int32_t length, int32_t padded, int8_t zero) {
  if (length == padded) return;
  const uint32_t keep = 0xFFFFFFFFu >> (8 * (padded - length)), zeros = (uint8_t)zero * 0x01010101u;
  int8_t *last = field + padded - 4;
  qgt__store32(last, (qgt__load32(last) & keep) | (zeros & ~keep));
}

/* Gathers the receptive field whose window starts at input row y0, column x0 of image `image` into f->field:
 * K int8 values in the filter's order, then the zero point up to a whole quad; positions outside the input hold
 * the zero point too, whose value plus the input offset is zero. The general way, for any window. */
static QGT_COLD void gather_field(const fields *f, const int8_t *image, int32_t y0, int32_t x0) {
  const int32_t in_c = f->in_c, kw = f->kw, run = f->run;
  const int contiguous = f->dilation.w == 1 && x0 >= 0 && x0 + kw - 1 < f->in_w; /* a row of taps in one run */
  int8_t *out = f->field;
  for (int32_t ky = 0; ky < f->kh; ++ky, out += run) {
    const int32_t y = y0 + ky * f->dilation.h;
    if (y < 0 || y >= f->in_h) {
      for (int32_t i = 0; i < run; ++i) out[i] = f->zero;
    } else if (contiguous) {
      copy_bytes_to(out, image + (size_t)y * f->row_bytes + (size_t)x0 * (size_t)in_c, run);
    } else {
      for (int32_t kx = 0; kx < kw; ++kx) {
        const int32_t x = x0 + kx * f->dilation.w;
        if (x < 0 || x >= f->in_w) {
          for (int32_t i = 0; i < in_c; ++i) out[kx * in_c + i] = f->zero;
        } else {
          copy_bytes_to(out + kx * in_c, image + (size_t)y * f->row_bytes + (size_t)x * (size_t)in_c, in_c);
        }
      }
    }
  }
  pad_field(f->field, f->length, f->padded, f->zero);
}

#if QGT_DSP
/* Widens `quads` whole quads of int8 values (the input offset added) into pixel p of the pair copy; returns their
 * sum. */
static inline __attribute__((always_inline)) int32_t widen_quads(const int8_t *values, int32_t quads,
                                                                 int32_t input_offset, int32_t p, int16_t *copy) {
  const int32_t offset = qgt__both_lanes(input_offset);
  uint32_t *words = (uint32_t *)(void *)copy + p;
  int32_t sum = 0;
  for (int32_t q = 0; q < quads; ++q, values += 4, words += 4) {
    const int32_t x4 = (int32_t)qgt__load32(values);
    const int32_t even = __sxtab16(offset, x4), odd = qgt__sxtab16_odd(offset, x4);
    words[0] = (uint32_t)even;
    words[2] = (uint32_t)odd;
    sum = __smlad(even, (int32_t)kOnes, __smlad(odd, (int32_t)kOnes, sum));
  }
  return sum;
}
#endif

/* Widens `length` int8 values (the input offset added) into pixel p of the pair copy, zeros up to the next
 * whole quad; returns their sum. */
static int32_t widen(const int8_t *values, int32_t length, int32_t input_offset, int32_t p, int16_t *copy) {
  int32_t sum = 0, k = 0;
#if QGT_DSP
  k = 4 * (length / 4);
  sum = widen_quads(values, length / 4, input_offset, p, copy);
#endif
  for (; k < 4 * quads_of(length); ++k) {
    const int32_t value = k < length ? values[k] + input_offset : 0;
    copy[copy_halfword(k, p)] = (int16_t)value;
    sum += value;
  }
  return sum;
}

#if QGT_DSP
/* Both pixels of a pair (their `length` values each, the input offset added) into the pair copy in one loop,
 * zeros up to the next whole quad; their sums into sums[0], sums[1]. */
static void widen_pair(const int8_t *pixel0, const int8_t *pixel1, int32_t length, int32_t input_offset,
                       int16_t *copy, int32_t sums[2]) {
  const int32_t offset = qgt__both_lanes(input_offset);
  uint32_t *words = (uint32_t *)(void *)copy;
  int32_t sum0 = 0, sum1 = 0;
  const int32_t k = 4 * (length / 4);
  if (k > 0) {
    /* per quad: both pixels' even and odd lanes stored in the copy's order by one STM, which stores in register
     * order: hence the lanes pinned to r8-r11 */
    register int32_t even0 __asm__("r8"), even1 __asm__("r9"), odd0 __asm__("r10"), odd1 __asm__("r11");
    const int8_t *at0 = pixel0, *at1 = pixel1;
    __asm__ volatile("1: ldr %[odd0], [%[at0]], #4\n\t"
                     "ldr %[odd1], [%[at1]], #4\n\t"
                     "sxtab16 %[even0], %[offset], %[odd0]\n\t"
                     "sxtab16 %[odd0], %[offset], %[odd0], ror #8\n\t"
                     "sxtab16 %[even1], %[offset], %[odd1]\n\t"
                     "sxtab16 %[odd1], %[offset], %[odd1], ror #8\n\t"
                     "stmia %[words]!, {r8, r9, r10, r11}\n\t"
                     "smlad %[sum0], %[even0], %[ones], %[sum0]\n\t"
                     "smlad %[sum0], %[odd0], %[ones], %[sum0]\n\t"
                     "smlad %[sum1], %[even1], %[ones], %[sum1]\n\t"
                     "smlad %[sum1], %[odd1], %[ones], %[sum1]\n\t"
                     "cmp %[at0], %[end]\n\t"
                     "bne 1b"
                     : [even0] "=&r"(even0), [even1] "=&r"(even1), [odd0] "=&r"(odd0), [odd1] "=&r"(odd1),
                       [at0] "+&r"(at0), [at1] "+&r"(at1), [words] "+&r"(words), [sum0] "+&r"(sum0),
                       [sum1] "+&r"(sum1)
                     : [offset] "r"(offset), [ones] "r"(kOnes), [end] "r"(pixel0 + k)
                     : "cc", "memory");
  }
  if (k < length) {
    sums[0] = sum0 + widen(pixel0 + k, length - k, input_offset, 0, (int16_t *)(void *)words);
    sums[1] = sum1 + widen(pixel1 + k, length - k, input_offset, 1, (int16_t *)(void *)words);
    return;
  }
  sums[0] = sum0;
  sums[1] = sum1;
}
#endif

/* The accumulator of a pixel before its dot products: 1, 2 and 4-bit fields are read as unsigned codes
 * c + 2^(bits-1) (1 bit: (c + 1) / 2) on the DSP path, so -2^(bits-1) times the pixel's sum of copied values
 * starts it (1 bit: -sum, and the sum of the unsigned products is doubled after); everything modulo 2^32, where
 * the true accumulator fits int32. */
static inline int32_t block_start(int32_t bits, int32_t sum) {
  if (!QGT_DSP || bits == 8) return 0;
  return (int32_t)(0u - ((uint32_t)sum << (bits == 1 ? 0 : bits - 1)));
}

#if QGT_DSP
/* The channel pairs of a pixel pair on the DSP path: assembly routines, one per weight width, over this job.
 * Per channel pair, the 2 x 2 block of accumulators (rows r, r + row_bytes against the copies of both pixels)
 * starts at `start`, runs over `steps` whole weight words (1, 2, 4 bits; 8 bits: quads) and `tail` quads of a
 * partial last word, then is requantized in the fast form and stored at out[c], out[c + delta], ... for every
 * pair (form QGT_FAST_RIGHT or QGT_FAST), or, with form QGT_GENERIC, stored raw in acc for one pair. A routine
 * reads the job once per call and writes only acc. They are hand-written because the loop needs all 14
 * registers: the compiler's version spilled and reloaded its state around every block. */
typedef struct {
  const uint8_t *weights;      /* 0: the first row of the first pair */
  int32_t row_bytes;           /* 4: 0 to take one row twice */
  const int16_t *copy;         /* 8 */
  int32_t steps;               /* 12 */
  int32_t start[2];            /* 16 */
  const qgt_channel *channels; /* 24 */
  int8_t *out;                 /* 28 */
  int32_t delta;               /* 32: pixel 1's outputs minus pixel 0's (0 for one pixel taken twice) */
  int32_t pairs;               /* 36 */
  int32_t tail;                /* 40 */
  int32_t form;                /* 44 */
  int32_t acc[4];              /* 48: pixel 0 row 0, pixel 1 row 0, pixel 0 row 1, pixel 1 row 1 */
} pairs_job;
typedef char pairs_job_layout_is_the_assembly_s[offsetof(pairs_job, acc) == 48 && sizeof(qgt_channel) == 24 ? 1 : -1];

/* Registers: r0-r3 the accumulators, r4/r5 the two rows' weight words, r6 a field pair, r7/r8 copy word j of
 * both pixels, r9 the field mask, r10 the copy, r11/r12 the rows, lr the step count. The frame, filled once per
 * call (QGT_PW_SETUP and the *_SETUP macros after it), so that a block starts with one LDM from sp and ends with
 * no read of the job: [sp, #0] to [sp, #28] what the LDM puts in r0-r3, r9, r10, r12 and lr (both pixels'
 * starts for both rows, the mask, the copy, row_bytes, steps); QGT_PW_STATE: the requantization's channels, out
 * and delta, then where the channels end; then the slots named below. */
#define QGT_PW_STATE "32"
#define QGT_PW_JOB "48"
#define QGT_PW_AFTER_WORDS "52" /* where the whole words go on: the partial word, or past it */
#define QGT_PW_TAIL_COPY "56"   /* the copy offset of the partial word's last quad */
#define QGT_PW_TAIL_ENTRY "60"  /* the entry into the backward quads that does the partial word's quads */
#define QGT_PW_FORM "64"        /* the requantization of the call's form */
#define QGT_PW_BLOCK_ENTRY "68" /* where a block goes after its start: the whole words, or the partial word */
#define QGT_PW_FRAME "76"       /* with the 9 registers pushed, sp stays 8-byte aligned */
/* The frame's first 12 words from the job (at r0), r1-r3 as scratch. */
#define QGT_PW_SETUP(MASK)                                                                          \
  "ldrd r2, r3, [r0, #16]\n\t"                    /* the starts */                                 \
  "strd r2, r3, [sp]\n\t"                                                                           \
  "strd r2, r3, [sp, #8]\n\t"                                                                       \
  "mov r2, #" MASK "\n\t"                                                                           \
  "ldr r3, [r0, #8]\n\t"                          /* copy */                                       \
  "strd r2, r3, [sp, #16]\n\t"                                                                      \
  "ldr r2, [r0, #4]\n\t"                          /* row_bytes */                                  \
  "ldr r3, [r0, #12]\n\t"                         /* steps */                                      \
  "strd r2, r3, [sp, #24]\n\t"                                                                      \
  "ldrd r2, r3, [r0, #24]\n\t"                    /* channels, out */                              \
  "strd r2, r3, [sp, #" QGT_PW_STATE "]\n\t"                                                        \
  "ldr r1, [r0, #36]\n\t"                         /* pairs: 2 records of 24 bytes each */          \
  "mov r3, #48\n\t"                                                                                 \
  "mla r3, r1, r3, r2\n\t"                                                                          \
  "ldr r2, [r0, #32]\n\t"                         /* delta */                                      \
  "strd r2, r3, [sp, #40]\n\t"                                                                      \
  "str r0, [sp, #" QGT_PW_JOB "]\n\t"
/* The form's requantization: label 7 (QGT_FAST), 6 (QGT_FAST_RIGHT) or 10 (QGT_GENERIC: the raw accumulators of
 * one block); left in r2 too. */
#define QGT_PW_FORM_SETUP                                                                           \
  "ldr r1, [r0, #44]\n\t"                                                                           \
  "cmp r1, #1\n\t"                                                                                  \
  "beq 11f\n\t"                                                                                     \
  "bhi 12f\n\t"                                                                                     \
  "adr.w r2, 10f\n\t"                                                                               \
  "b 13f\n\t"                                                                                       \
  "11:\n\t"                                                                                         \
  "adr.w r2, 7f\n\t"                                                                                \
  "b 13f\n\t"                                                                                       \
  "12:\n\t"                                                                                         \
  "adr.w r2, 6f\n\t"                                                                                \
  "13:\n\t"                                                                                         \
  "orr r2, r2, #1\n\t"                              /* Thumb */                                     \
  "str r2, [sp, #" QGT_PW_FORM "]\n\t"
/* For the unsigned widths, after QGT_PW_FORM_SETUP: where the whole words go on (label 4 for a partial word;
 * otherwise what NO_TAIL leaves in r2: the form's requantization unless it sets another), the partial word's
 * copy offset and its entry into the backward quads (label 5 less 56 bytes per quad), and where a block goes
 * after its start: label 2, or with no whole word label 18 (the partial word, the copy offset already in the
 * frame's copy). */
#define QGT_PW_TAIL_SETUP(NO_TAIL)                                                                  \
  "ldr r1, [r0, #40]\n\t"                                                                           \
  "cbnz r1, 15f\n\t" NO_TAIL                                                                        \
  "b 0f\n\t"                                                                                        \
  "15:\n\t"                                                                                         \
  "adr.w r2, 5f\n\t"                                                                                \
  "mov r3, #56\n\t"                                                                                 \
  "mls r3, r1, r3, r2\n\t"                                                                          \
  "orr r3, r3, #1\n\t"                              /* Thumb */                                     \
  "str r3, [sp, #" QGT_PW_TAIL_ENTRY "]\n\t"                                                        \
  "lsl r3, r1, #4\n\t"                                                                              \
  "sub r3, r3, #8\n\t"                                                                              \
  "str r3, [sp, #" QGT_PW_TAIL_COPY "]\n\t"                                                         \
  "adr.w r2, 4f\n\t"                                                                                \
  "orr r2, r2, #1\n\t"                                                                              \
  "0:\n\t"                                                                                          \
  "str r2, [sp, #" QGT_PW_AFTER_WORDS "]\n\t"                                                      \
  "ldr r3, [sp, #28]\n\t"                         /* steps */                                      \
  "cbnz r3, 16f\n\t"                                                                                \
  "cbz r1, 17f\n\t"                               /* no word at all: r2 */                         \
  "ldr r2, [sp, #20]\n\t"                                                                           \
  "ldr r3, [sp, #" QGT_PW_TAIL_COPY "]\n\t"                                                         \
  "add r2, r2, r3\n\t"                                                                              \
  "str r2, [sp, #20]\n\t"                                                                           \
  "adr.w r2, 18f\n\t"                                                                               \
  "b 19f\n\t"                                                                                       \
  "16:\n\t"                                                                                         \
  "adr.w r2, 2f\n\t"                                                                                \
  "19:\n\t"                                                                                         \
  "orr r2, r2, #1\n\t"                                                                              \
  "17:\n\t"                                                                                         \
  "str r2, [sp, #" QGT_PW_BLOCK_ENTRY "]\n\t"
/* A block's start: accumulators, mask, copy, steps and the second row from the frame. */
#define QGT_PW_BLOCK_START                                                                          \
  "1:\n\t"                                                                                          \
  "ldm sp, {r0, r1, r2, r3, r9, r10, r12, lr}\n\t"                                                  \
  "add r12, r12, r11\n\t"
/* The unsigned widths' start also goes where QGT_PW_TAIL_SETUP said. */
#define QGT_PW_UNSIGNED_BLOCK_START QGT_PW_BLOCK_START "ldr pc, [sp, #" QGT_PW_BLOCK_ENTRY "]\n\t"
/* Fields j = 2q and 2q+1 of both rows' words (the rotations bits * j) against copy words j of both pixels. */
#define QGT_PW_QUAD(ROT0, ROT1)                                                                     \
  "ldrd r7, r8, [r10], #8\n\t"                                                                      \
  "and.w r6, r9, r4" ROT0 "\n\t"                                                                    \
  "smlad r0, r6, r7, r0\n\t"                                                                        \
  "smlad r1, r6, r8, r1\n\t"                                                                        \
  "and.w r6, r9, r5" ROT0 "\n\t"                                                                    \
  "smlad r2, r6, r7, r2\n\t"                                                                        \
  "smlad r3, r6, r8, r3\n\t"                                                                        \
  "ldrd r7, r8, [r10], #8\n\t"                                                                      \
  "and.w r6, r9, r4" ROT1 "\n\t"                                                                    \
  "smlad r0, r6, r7, r0\n\t"                                                                        \
  "smlad r1, r6, r8, r1\n\t"                                                                        \
  "and.w r6, r9, r5" ROT1 "\n\t"                                                                    \
  "smlad r2, r6, r7, r2\n\t"                                                                        \
  "smlad r3, r6, r8, r3\n\t"
#define QGT_PW_LOAD_WORDS(FLIP)                                                                     \
  "ldr r4, [r11], #4\n\t"                                                                           \
  "ldr r5, [r12], #4\n\t" FLIP
#define QGT_PW_FLIP(VALUE) "eor r4, r4, #" VALUE "\n\teor r5, r5, #" VALUE "\n\t"
/* A quad of a partial last word, copy words taken backwards: 56 bytes of code (14 32-bit instructions), which
 * the tail entry relies on. */
#define QGT_PW_QUAD_BACK(ROT0, ROT1)                                                                \
  "ldrd r7, r8, [r10], #-8\n\t"                                                                     \
  "and.w r6, r9, r4" ROT1 "\n\t"                                                                    \
  "smlad r0, r6, r7, r0\n\t"                                                                        \
  "smlad r1, r6, r8, r1\n\t"                                                                        \
  "and.w r6, r9, r5" ROT1 "\n\t"                                                                    \
  "smlad r2, r6, r7, r2\n\t"                                                                        \
  "smlad r3, r6, r8, r3\n\t"                                                                        \
  "ldrd r7, r8, [r10], #-8\n\t"                                                                     \
  "and.w r6, r9, r4" ROT0 "\n\t"                                                                    \
  "smlad r0, r6, r7, r0\n\t"                                                                        \
  "smlad r1, r6, r8, r1\n\t"                                                                        \
  "and.w r6, r9, r5" ROT0 "\n\t"                                                                    \
  "smlad r2, r6, r7, r2\n\t"                                                                        \
  "smlad r3, r6, r8, r3\n\t"
/* The unsigned widths: whole words (entered only when there is one), then a partial word's quads from the last
 * down (no count, no rotations), then AFTER and the form's requantization. */
#define QGT_PW_UNSIGNED_DOT(FLIP, WORD, BACK_QUADS, BACK_BYTES, AFTER)                              \
  QGT_PW_UNSIGNED_BLOCK_START                                                                       \
  "2:\n\t" QGT_PW_LOAD_WORDS(FLIP) WORD                                                             \
  "subs lr, lr, #1\n\t"                                                                             \
  "bne 2b\n\t"                                                                                      \
  "ldr pc, [sp, #" QGT_PW_AFTER_WORDS "]\n\t"                                                       \
  "4:\n\t"                                                                                          \
  "ldr r6, [sp, #" QGT_PW_TAIL_COPY "]\n\t"                                                         \
  "add r10, r10, r6\n\t"                                                                            \
  "18:\n\t" QGT_PW_LOAD_WORDS(FLIP)                                                                 \
  "ldr pc, [sp, #" QGT_PW_TAIL_ENTRY "]\n\t"                                                        \
  "14:\n\t" BACK_QUADS                                                                              \
  "5:\n\t"                                                                                          \
  ".if (5b - 14b) != " BACK_BYTES "\n\t"                                                            \
  ".error \"a backward quad is not 56 bytes\"\n\t"                                                  \
  ".endif\n\t" AFTER                                                                                \
  "ldr pc, [sp, #" QGT_PW_FORM "]\n\t"
/* 8 bits: one quad per step (at least one), SXTB16 of each row's word (even bytes, then odd) against copy words
 * 2q, 2q+1. */
#define QGT_PW_8BIT_DOT                                                                             \
  QGT_PW_BLOCK_START                                                                                \
  "2:\n\t" QGT_PW_LOAD_WORDS("")                                                                    \
  "ldrd r7, r8, [r10], #8\n\t"                                                                      \
  "sxtb16 r6, r4\n\t"                                                                               \
  "smlad r0, r6, r7, r0\n\t"                                                                        \
  "smlad r1, r6, r8, r1\n\t"                                                                        \
  "sxtb16 r6, r5\n\t"                                                                               \
  "smlad r2, r6, r7, r2\n\t"                                                                        \
  "smlad r3, r6, r8, r3\n\t"                                                                        \
  "ldrd r7, r8, [r10], #8\n\t"                                                                      \
  "sxtb16 r6, r4, ror #8\n\t"                                                                       \
  "smlad r0, r6, r7, r0\n\t"                                                                        \
  "smlad r1, r6, r8, r1\n\t"                                                                        \
  "sxtb16 r6, r5, ror #8\n\t"                                                                       \
  "smlad r2, r6, r7, r2\n\t"                                                                        \
  "smlad r3, r6, r8, r3\n\t"                                                                        \
  "subs lr, lr, #1\n\t"                                                                             \
  "bne 2b\n\t"                                                                                      \
  "ldr pc, [sp, #" QGT_PW_FORM "]\n\t"
/* 1 bit: the unsigned products count twice (block_start): acc = 2 acc - start. */
#define QGT_PW_DOUBLE                                                                               \
  "ldrd r4, r5, [sp]\n\t"                                                                           \
  "rsb r0, r4, r0, lsl #1\n\t"                                                                      \
  "rsb r1, r5, r1, lsl #1\n\t"                                                                      \
  "rsb r2, r4, r2, lsl #1\n\t"                                                                      \
  "rsb r3, r5, r3, lsl #1\n\t"
/* The end of both requantization forms below: shift right by r6, saturate to int8, store the pair at [r9 + lr]
 * and [r9], move r9 on by one channel. */
#define QGT_PW_SHIFT_STORE                                                                          \
  "asr r4, r4, r6\n\t"                                                                              \
  "asr r5, r5, r6\n\t"                                                                              \
  "ssat r4, #8, r4\n\t"                                                                             \
  "ssat r5, #8, r5\n\t"                                                                             \
  "strb r5, [r9, lr]\n\t"                                                                           \
  "strb r4, [r9], #1\n\t"
/* The requantization of accumulators A0 (pixel 0) and A1 (pixel 1) of the channel record at r8 (the fast forms
 * of qgt_internal.h: scale, bias, multiplier and round in one LDM), stored at [r9] and [r9 + lr]; r8 and r9 move
 * on by one channel. */
#define QGT_PW_FAST(A0, A1)                                                                          \
  "ldm r8!, {r4, r5, r6, r7}\n\t"                 /* scale, bias, multiplier, round */            \
  "mla " A0 ", " A0 ", r4, r5\n\t"                                                                  \
  "mla " A1 ", " A1 ", r4, r5\n\t"                                                                  \
  "smmlar r4, " A0 ", r6, r7\n\t"                                                                   \
  "smmlar r5, " A1 ", r6, r7\n\t"                                                                   \
  "ldm r8!, {r6, r7}\n\t"                         /* right, sign */                               \
  "and " A0 ", r7, " A0 ", asr #31\n\t"                                                             \
  "and " A1 ", r7, " A1 ", asr #31\n\t"                                                             \
  "add r4, r4, " A0 "\n\t"                                                                          \
  "add r5, r5, " A1 "\n\t"                                                                          \
  QGT_PW_SHIFT_STORE
#define QGT_PW_FAST_RIGHT(A0, A1)                                                                    \
  "ldm r8!, {r4, r5, r6, r7}\n\t"                 /* scale (2), bias, multiplier, round */        \
  "add " A0 ", r5, " A0 ", lsl #1\n\t"                                                              \
  "add " A1 ", r5, " A1 ", lsl #1\n\t"                                                              \
  "smmlar r4, " A0 ", r6, r7\n\t"                                                                   \
  "smmlar r5, " A1 ", r6, r7\n\t"                                                                   \
  "ldr r6, [r8], #8\n\t"                          /* right; past sign */                          \
  "add r4, r4, " A0 ", asr #31\n\t"                                                                 \
  "add r5, r5, " A1 ", asr #31\n\t"                                                                 \
  QGT_PW_SHIFT_STORE
/* After a block: both channels requantized and stored, the state saved, then the next pair while the channels
 * last; or the raw accumulators. */
#define QGT_PW_BLOCK_END                                                                            \
  "10:\n\t"                                                                                         \
  "ldr r10, [sp, #" QGT_PW_JOB "]\n\t"                                                              \
  "add r10, r10, #48\n\t"                                                                           \
  "stm r10, {r0, r1, r2, r3}\n\t"                                                                   \
  "b 9f\n\t"                                                                                        \
  "6:\n\t"                                                                                          \
  "add r10, sp, #" QGT_PW_STATE "\n\t"                                                              \
  "ldm r10, {r8, r9, lr}\n\t"                     /* channels, out, delta */                      \
  QGT_PW_FAST_RIGHT("r0", "r1") QGT_PW_FAST_RIGHT("r2", "r3")                                      \
  "b 8f\n\t"                                                                                        \
  "7:\n\t"                                                                                          \
  "add r10, sp, #" QGT_PW_STATE "\n\t"                                                              \
  "ldm r10, {r8, r9, lr}\n\t"                                                                       \
  QGT_PW_FAST("r0", "r1") QGT_PW_FAST("r2", "r3")                                                  \
  "8:\n\t"                                                                                          \
  "stm r10, {r8, r9}\n\t"                                                                           \
  "mov r11, r12\n\t"                            /* the next pair's first row */                     \
  "ldr r4, [r10, #12]\n\t"                      /* where the channels end */                        \
  "cmp r8, r4\n\t"                                                                                  \
  "bne 1b\n\t"                                                                                      \
  "9:\n\t"
#define QGT_PW_ROUTINE(SETUP, DOT)                                                                  \
  __asm__("push {r4-r11, lr}\n\t"                                                                   \
          "sub sp, sp, #" QGT_PW_FRAME "\n\t" SETUP                                                 \
          "ldr r11, [r0]\n\t" DOT QGT_PW_BLOCK_END                               \
          "add sp, sp, #" QGT_PW_FRAME "\n\t"                                                       \
          "pop {r4-r11, pc}\n\t")
#define QGT_ROR(n) ", ror #" #n

#if (QGT_WEIGHT_BITS_MASK >> 1) & 1u
QGT_ASM_ROUTINE static void pairs_1bit(pairs_job *job __attribute__((unused))) {
  QGT_PW_ROUTINE(QGT_PW_SETUP("0x00010001") QGT_PW_FORM_SETUP QGT_PW_TAIL_SETUP("adr.w r2, 5f\n\torr r2, r2, #1\n\t"),
                 QGT_PW_UNSIGNED_DOT("",
                                     QGT_PW_QUAD("", QGT_ROR(1)) QGT_PW_QUAD(QGT_ROR(2), QGT_ROR(3))
                                     QGT_PW_QUAD(QGT_ROR(4), QGT_ROR(5)) QGT_PW_QUAD(QGT_ROR(6), QGT_ROR(7))
                                     QGT_PW_QUAD(QGT_ROR(8), QGT_ROR(9)) QGT_PW_QUAD(QGT_ROR(10), QGT_ROR(11))
                                     QGT_PW_QUAD(QGT_ROR(12), QGT_ROR(13)) QGT_PW_QUAD(QGT_ROR(14), QGT_ROR(15)),
                                     QGT_PW_QUAD_BACK(QGT_ROR(12), QGT_ROR(13))
                                     QGT_PW_QUAD_BACK(QGT_ROR(10), QGT_ROR(11))
                                     QGT_PW_QUAD_BACK(QGT_ROR(8), QGT_ROR(9)) QGT_PW_QUAD_BACK(QGT_ROR(6), QGT_ROR(7))
                                     QGT_PW_QUAD_BACK(QGT_ROR(4), QGT_ROR(5)) QGT_PW_QUAD_BACK(QGT_ROR(2), QGT_ROR(3))
                                     QGT_PW_QUAD_BACK("", QGT_ROR(1)), "392", QGT_PW_DOUBLE));
}
#endif
#if (QGT_WEIGHT_BITS_MASK >> 2) & 1u
QGT_ASM_ROUTINE static void pairs_2bit(pairs_job *job __attribute__((unused))) {
  QGT_PW_ROUTINE(QGT_PW_SETUP("0x00030003") QGT_PW_FORM_SETUP QGT_PW_TAIL_SETUP(""),
                 QGT_PW_UNSIGNED_DOT(QGT_PW_FLIP("0xAAAAAAAA"),
                                     QGT_PW_QUAD("", QGT_ROR(2)) QGT_PW_QUAD(QGT_ROR(4), QGT_ROR(6))
                                     QGT_PW_QUAD(QGT_ROR(8), QGT_ROR(10)) QGT_PW_QUAD(QGT_ROR(12), QGT_ROR(14)),
                                     QGT_PW_QUAD_BACK(QGT_ROR(8), QGT_ROR(10)) QGT_PW_QUAD_BACK(QGT_ROR(4), QGT_ROR(6))
                                     QGT_PW_QUAD_BACK("", QGT_ROR(2)), "168", ""));
}
#endif
#if (QGT_WEIGHT_BITS_MASK >> 4) & 1u
QGT_ASM_ROUTINE static void pairs_4bit(pairs_job *job __attribute__((unused))) {
  QGT_PW_ROUTINE(QGT_PW_SETUP("0x000F000F") QGT_PW_FORM_SETUP QGT_PW_TAIL_SETUP(""),
                 QGT_PW_UNSIGNED_DOT(QGT_PW_FLIP("0x88888888"),
                                     QGT_PW_QUAD("", QGT_ROR(4)) QGT_PW_QUAD(QGT_ROR(8), QGT_ROR(12)),
                                     QGT_PW_QUAD_BACK("", QGT_ROR(4)), "56", ""));
}
#endif
#if (QGT_WEIGHT_BITS_MASK >> 8) & 1u
QGT_ASM_ROUTINE static void pairs_8bit(pairs_job *job __attribute__((unused))) {
  QGT_PW_ROUTINE(QGT_PW_SETUP("0") QGT_PW_FORM_SETUP, QGT_PW_8BIT_DOT);
}
#endif

typedef void (*pairs_routine)(pairs_job *);

/* The routine of a width, or NULL for a width this build leaves out (QGT_WEIGHT_BITS_MASK). */
static pairs_routine pairs_routine_of(int32_t bits) {
  switch (bits) {
#if (QGT_WEIGHT_BITS_MASK >> 1) & 1u
    case 1: return pairs_1bit;
#endif
#if (QGT_WEIGHT_BITS_MASK >> 2) & 1u
    case 2: return pairs_2bit;
#endif
#if (QGT_WEIGHT_BITS_MASK >> 4) & 1u
    case 4: return pairs_4bit;
#endif
#if (QGT_WEIGHT_BITS_MASK >> 8) & 1u
    case 8: return pairs_8bit;
#endif
    default: return NULL;
  }
}

#endif

typedef struct {
  const qgt_conv_params *params;
  const qgt_dims *input_dims, *output_dims;
  const int8_t *input;
  const qgt_filter *filter;
  int8_t *output;
  const qgt_channel *channels;
  int16_t *copy;
  int8_t *field; /* one receptive field gathered as int8, for non-pointwise layers */
  int form; /* the requantization form (QGT_FAST...) when the clamp is the whole int8 range, else QGT_GENERIC */
#if QGT_DSP
  pairs_job pairs;        /* the channel-pair routine's job for every pixel pair but starts, out and delta */
  pairs_routine routine;
#endif
} conv_job;

#if QGT_DSP
/* The output channels from `first` of one pixel pair, pair by pair through the routine's raw accumulators, and
 * requantized here (TFLite's arithmetic, any clamp); an odd last channel is its row taken twice. */
static void generic_channels(const conv_job *job, const pairs_job *fixed, int32_t first, int8_t *out0, int8_t *out1) {
  const qgt_filter *filter = job->filter;
  const int32_t out_c = filter->out_channels, output_offset = job->params->output_offset;
  const qgt_range activation = job->params->activation;
  pairs_job j = *fixed;
  for (int32_t c = first; c < out_c; c += 2) {
    j.weights = filter->weights + (size_t)c * (size_t)filter->row_bytes;
    j.row_bytes = c + 1 < out_c ? filter->row_bytes : 0;
    j.pairs = 1;
    j.form = QGT_GENERIC;
    job->routine(&j);
    out0[c] = qgt__output(j.acc[0], &job->channels[c], output_offset, activation);
    out1[c] = qgt__output(j.acc[1], &job->channels[c], output_offset, activation);
    if (c + 1 < out_c) {
      out0[c + 1] = qgt__output(j.acc[2], &job->channels[c + 1], output_offset, activation);
      out1[c + 1] = qgt__output(j.acc[3], &job->channels[c + 1], output_offset, activation);
    }
  }
}

/* The output channels of one pixel pair (pixel 1's outputs at out1, which is out0 when the pair is one pixel
 * taken twice): every pair in one routine call for the fast forms; otherwise, and an odd last channel,
 * through generic_channels. */
static void channels_of_pair(conv_job *job, const int32_t sums[2], int8_t *out0, int8_t *out1) {
  const qgt_filter *filter = job->filter;
  const int32_t out_c = filter->out_channels, bits = filter->weight_bits;
  pairs_job *const routine_job = &job->pairs;
  routine_job->start[0] = block_start(bits, sums[0]);
  routine_job->start[1] = block_start(bits, sums[1]);
  routine_job->out = out0;
  routine_job->delta = (int32_t)(out1 - out0);
  if (job->form != QGT_GENERIC && out_c >= 2) {
    job->routine(routine_job);
    if ((out_c & 1) == 0) return;
  }
  generic_channels(job, routine_job, job->form != QGT_GENERIC ? out_c - 1 : 0, out0, out1);
}

/* The channel-pair routine's job of a layer: all but the per pixel pair fields. */
static void pairs_job_of(conv_job *job) {
  const qgt_filter *filter = job->filter;
  const int32_t bits = filter->weight_bits, quads = quads_of(filter->row_length), per_word = 8 / bits;
  pairs_job *j = &job->pairs;
  j->weights = filter->weights;
  j->row_bytes = filter->row_bytes;
  j->copy = job->copy;
  j->steps = bits == 8 ? quads : quads / per_word;
  j->tail = bits == 8 ? 0 : quads % per_word;
  j->channels = job->channels;
  j->pairs = filter->out_channels / 2;
  j->form = job->form;
  job->routine = pairs_routine_of(bits);
}
#else
/* The 2 x 2 block of accumulators of rows (r0, r1) and the pair copy, the portable way: field j of both
 * half-words of weight word t against copy word j of quad group t. */
static inline __attribute__((always_inline)) void dot_block(int32_t bits, const uint8_t *r0, const uint8_t *r1,
                                                            const int16_t *copy, int32_t quads, int32_t acc[4]) {
  const int32_t quads_per_word = 8 / bits;
  acc[0] = acc[1] = acc[2] = acc[3] = 0;
  for (int32_t q = 0, t = 0; q < quads; q += quads_per_word, ++t) {
    const uint32_t w0 = qgt__load32(r0 + 4 * t), w1 = qgt__load32(r1 + 4 * t);
    const int32_t copy_words = 2 * qgt__min(quads_per_word, quads - q);
    for (int32_t j = 0; j < copy_words; ++j) { /* field j of both half-words against copy word 2q + j */
      const int16_t *pair = copy + 4 * (2 * q + j); /* pixel 0: pair[0], pair[1]; pixel 1: pair[2], pair[3] */
      for (int32_t h = 0; h < 2; ++h) {
        const int32_t k0 = qgt__field_code(w0, 16 * h + bits * j, bits);
        const int32_t k1 = qgt__field_code(w1, 16 * h + bits * j, bits);
        acc[0] += k0 * pair[h];
        acc[1] += k0 * pair[2 + h];
        acc[2] += k1 * pair[h];
        acc[3] += k1 * pair[2 + h];
      }
    }
  }
}

/* The output channels of one pixel pair for a constant width (the compiler specializes the field extraction),
 * two at a time; an odd last channel is its row taken twice. */
static inline __attribute__((always_inline)) void channel_pairs(const conv_job *job, int32_t bits, int8_t *out0,
                                                                int8_t *out1) {
  const qgt_filter *filter = job->filter;
  const int32_t out_c = filter->out_channels, quads = quads_of(filter->row_length), row_bytes = filter->row_bytes;
  const int32_t output_offset = job->params->output_offset;
  const qgt_range activation = job->params->activation;
  for (int32_t c = 0; c < out_c; c += 2) {
    const uint8_t *row = filter->weights + (size_t)c * (size_t)row_bytes;
    const int both = c + 1 < out_c;
    int32_t acc[4];
    dot_block(bits, row, both ? row + row_bytes : row, job->copy, quads, acc);
    out0[c] = qgt__output(acc[0], &job->channels[c], output_offset, activation);
    out1[c] = qgt__output(acc[1], &job->channels[c], output_offset, activation);
    if (both) {
      out0[c + 1] = qgt__output(acc[2], &job->channels[c + 1], output_offset, activation);
      out1[c + 1] = qgt__output(acc[3], &job->channels[c + 1], output_offset, activation);
    }
  }
}

/* The output channels of one pixel pair (pixel 1's outputs at out1, which is out0 when the pair is one pixel
 * taken twice), per width of the build (QGT_WEIGHT_BITS_MASK). */
static void channels_of_pair(conv_job *job, const int32_t sums[2], int8_t *out0, int8_t *out1) {
  (void)sums;
  switch (job->filter->weight_bits) {
#if (QGT_WEIGHT_BITS_MASK >> 1) & 1u
    case 1: channel_pairs(job, 1, out0, out1); break;
#endif
#if (QGT_WEIGHT_BITS_MASK >> 2) & 1u
    case 2: channel_pairs(job, 2, out0, out1); break;
#endif
#if (QGT_WEIGHT_BITS_MASK >> 4) & 1u
    case 4: channel_pairs(job, 4, out0, out1); break;
#endif
    default: channel_pairs(job, 8, out0, out1); break;
  }
}
#endif

/* The field of a window inside the input whose filter rows take at most 4 bytes (a first conv over few channels),
 * widened into pixel p of the pair copy: each row one word into `field` (its extra bytes overwritten by the next
 * row or the padding), the zero point up to a whole quad, then the quads widened. Returns the sum of the copied
 * values. Scalars only, in its own frame: the byte stores could alias any structure. */
static __attribute__((noinline)) int32_t word_field(const int8_t *from, size_t step, int32_t rows, int32_t run,
                                                    int8_t *field, int32_t length, int32_t padded, int8_t zero,
                                                    int16_t *copy, int32_t p) {
  for (int32_t ky = 0; ky < rows; ++ky, from += step) qgt__store32(field + ky * run, qgt__load32(from));
  pad_field(field, length, padded, zero);
#if QGT_DSP
  return widen_quads(field, padded / 4, -zero, p, copy);
#else
  return widen(field, padded, -zero, p, copy);
#endif
}

/* The receptive field of pixel p of a pair, output pixel (oy, ox) of image `image` of a non-pointwise layer, in
 * the pair copy; returns the sum of its copied values. */
static int32_t copy_field(const fields *f, const int8_t *image, int32_t oy, int32_t ox, int16_t *copy, int32_t p) {
  const int32_t y0 = oy * f->stride.h - f->padding.h, x0 = ox * f->stride.w - f->padding.w;
  const int32_t y_last = y0 + (f->kh - 1) * f->dilation.h;
  const size_t start = (size_t)y0 * f->row_bytes + (size_t)x0 * (size_t)f->in_c;
  if (f->word_rows && x0 >= 0 && x0 + f->kw <= f->in_w && y0 >= 0 && y_last < f->in_h &&
      start + (size_t)(y_last - y0) * f->row_bytes + 4 <= f->image_bytes) {
    return word_field(image + start, (size_t)f->dilation.h * f->row_bytes, f->kh, f->run, f->field, f->length,
                      f->padded, f->zero, copy, p);
  }
  gather_field(f, image, y0, x0);
  return widen(f->field, f->padded, -f->zero, p, copy);
}

#if QGT_DSP
/* A first conv: 3 x 3 over a gray or RGB image (1 or 3 input channels), every channel at the fast requantization.
 * It goes channel pair by channel pair over every pixel instead of gathering and widening every field: a window
 * row is 3 * in_c contiguous input bytes, read as 1 or 3 words whose SXTAB16 lanes (even bytes, odd bytes) meet
 * the pair's filter widened once into the pair copy in the same lane order, so a window row of an RGB image is 3
 * loads, 5 SXTAB16 and 5 SMLAD per channel (MobileNetV1-0.25's first conv at 96 x 96: a third fewer instructions
 * for RGB, 27% fewer for gray; docs/KERNELS.md). An odd last channel is the second of a pair with the
 * channel before it, computed twice. The word loads stay inside the window's rows: windows that leave the input,
 * or whose words would pass the row's end, are summed tap by tap. */
enum { FIRST_CONV_ROWS = 3 };

/* Weight words of a window row per channel: one per SXTAB16 result that holds a tap. */
static inline int32_t first_conv_lanes(int32_t run) { return quads_of(run) + quads_of(run - 1); }

/* Whether first_conv takes the layer: the geometry above, two channels or more, and room for a pair's widened
 * filter in the pair copy and field (always, for these shapes). */
static int first_conv_fits(const qgt_conv_params *params, const qgt_filter *filter, int form) {
  const int32_t run = 3 * filter->in_channels;
  return (filter->in_channels == 1 || filter->in_channels == 3) && filter->kernel_h == FIRST_CONV_ROWS &&
         filter->kernel_w == 3 && params->dilation.w == 1 && filter->out_channels >= 2 && form != QGT_GENERIC &&
         (size_t)8 * FIRST_CONV_ROWS * (size_t)first_conv_lanes(run) <= (size_t)20 * (size_t)quads_of(filter->row_length);
}

/* The widened filter of channels c and c + 1: row ky of channel c + s in words (2 ky + s) * lanes onwards. */
static __attribute__((noinline)) void widen_first_conv_pair(const qgt_filter *filter, int32_t c, int32_t lanes,
                                                            uint32_t *w) {
  const int32_t run = 3 * filter->in_channels;
  for (int32_t i = 0; i < 2 * FIRST_CONV_ROWS * lanes; ++i) w[i] = 0;
  for (int32_t s = 0; s < 2; ++s) {
    const uint8_t *row = filter->weights + (size_t)(c + s) * filter->row_bytes;
    for (int32_t k = 0; k < FIRST_CONV_ROWS * run; ++k) {
      const uint32_t code = (uint16_t)qgt__code(row, k, filter->weight_bits);
      w[(2 * (k / run) + s) * lanes + lane_word(k % run)] |= code << (16 * lane_half(k % run));
    }
  }
}

/* One window row of `words` words from `at` against both channels' weight words. */
static inline __attribute__((always_inline)) void first_conv_row(const int8_t *at, int32_t words, int32_t lanes,
                                                                 const uint32_t *w, int32_t offset2, int32_t *a0,
                                                                 int32_t *a1) {
#pragma GCC unroll 3
  for (int32_t q = 0; q < words; ++q) {
    const int32_t x = (int32_t)qgt__load32(at + 4 * q);
    const int32_t even = __sxtab16(offset2, x);
    *a0 = __smlad(even, (int32_t)w[2 * q], *a0);
    *a1 = __smlad(even, (int32_t)w[lanes + 2 * q], *a1);
    if (2 * q + 1 < lanes) {
      const int32_t odd = qgt__sxtab16_odd(offset2, x);
      *a0 = __smlad(odd, (int32_t)w[2 * q + 1], *a0);
      *a1 = __smlad(odd, (int32_t)w[lanes + 2 * q + 1], *a1);
    }
  }
}

/* `count` output pixels of one output row from `out` on (channels c and c + 1 of channel[0..1]), whose windows
 * are inside the input with their word loads and start at `at`, `stride` bytes apart; window rows `step` bytes
 * apart, `words` words and `lanes` weight words each (constants where this is inlined). */
static inline __attribute__((always_inline)) void first_conv_columns(const int8_t *at, size_t step, size_t stride,
                                                                     int32_t count, int32_t words, int32_t lanes,
                                                                     const uint32_t *w, int32_t offset2,
                                                                     const qgt_channel *channel, int8_t *out,
                                                                     int32_t out_c) {
  for (const int8_t *const end = at + (size_t)count * stride; at != end; at += stride, out += out_c) {
    int32_t a0 = 0, a1 = 0;
#pragma GCC unroll 3
    for (int32_t ky = 0; ky < FIRST_CONV_ROWS; ++ky) {
      first_conv_row(at + (size_t)ky * step, words, lanes, w + 2 * ky * lanes, offset2, &a0, &a1);
      __asm__ volatile("" ::: "memory"); /* row by row: interleaved rows spill their taps to the stack */
    }
    out[0] = (int8_t)qgt__fast_output(a0, &channel[0]);
    out[1] = (int8_t)qgt__fast_output(a1, &channel[1]);
  }
}

static __attribute__((noinline)) void gray_columns(const int8_t *at, size_t step, size_t stride, int32_t count,
                                                   const uint32_t *w, int32_t offset2, const qgt_channel *channel,
                                                   int8_t *out, int32_t out_c) {
  first_conv_columns(at, step, stride, count, 1, first_conv_lanes(3), w, offset2, channel, out, out_c);
}

static __attribute__((noinline)) void rgb_columns(const int8_t *at, size_t step, size_t stride, int32_t count,
                                                  const uint32_t *w, int32_t offset2, const qgt_channel *channel,
                                                  int8_t *out, int32_t out_c) {
  first_conv_columns(at, step, stride, count, 3, first_conv_lanes(9), w, offset2, channel, out, out_c);
}

/* Both channels' outputs of the window starting at input row y0, column x0 of `image`, tap by tap: the taps
 * outside the input add nothing. */
static __attribute__((noinline)) void first_conv_edge(const int8_t *image, const qgt_dims *in, int32_t y0,
                                                      int32_t x0, int32_t dilation_h, int32_t lanes, const uint32_t *w,
                                                      int32_t input_offset, const qgt_channel *channel, int8_t *out) {
  int32_t acc[2] = {0, 0};
  for (int32_t ky = 0; ky < FIRST_CONV_ROWS; ++ky) {
    const int32_t y = y0 + ky * dilation_h;
    if (y < 0 || y >= in->h) continue;
    for (int32_t k = 0; k < 3 * in->c; ++k) {
      const int32_t x = x0 + k / in->c;
      if (x < 0 || x >= in->w) continue;
      const int32_t value =
          image[((size_t)y * (size_t)in->w + (size_t)x) * (size_t)in->c + (size_t)(k % in->c)] + input_offset;
      for (int32_t s = 0; s < 2; ++s) {
        acc[s] += value * (int16_t)(w[(2 * ky + s) * lanes + lane_word(k)] >> (16 * lane_half(k)));
      }
    }
  }
  out[0] = (int8_t)qgt__fast_output(acc[0], &channel[0]);
  out[1] = (int8_t)qgt__fast_output(acc[1], &channel[1]);
}

static void first_conv(const conv_job *job) {
  const qgt_conv_params *params = job->params;
  const qgt_dims *in = job->input_dims, *out = job->output_dims;
  const int32_t out_c = job->filter->out_channels, dilation_h = params->dilation.h, in_c = in->c;
  const int32_t sh = params->stride.h, sw = params->stride.w, ph = params->padding.h, pw = params->padding.w;
  const int32_t run = 3 * in_c, words = quads_of(run), lanes = first_conv_lanes(run);
  const size_t row_bytes = (size_t)in->w * (size_t)in_c, image_bytes = (size_t)in->h * row_bytes;
  const size_t step = (size_t)dilation_h * row_bytes, stride = (size_t)sw * (size_t)in_c;
  const int32_t offset2 = qgt__both_lanes(params->input_offset);
  /* The columns and rows whose windows lie inside the input, the word loads (4 * words bytes from the window's
   * first column) included. */
  const int32_t loaded = 4 * words, row = in->w * in_c; /* int32: the input's size was checked */
  const int32_t x_first = (pw + sw - 1) / sw, y_first = (ph + sh - 1) / sh;
  const int32_t x_end = row >= loaded ? qgt__min(out->w, ((row - loaded) / in_c + pw) / sw + 1) : 0;
  const int32_t y_reach = (FIRST_CONV_ROWS - 1) * dilation_h;
  const int32_t y_end = in->h > y_reach ? qgt__min(out->h, (in->h - 1 - y_reach + ph) / sh + 1) : 0;
  uint32_t *w = (uint32_t *)(void *)job->copy;
  for (int32_t c = 0; c < out_c; c += 2) {
    if (c + 1 == out_c) c = out_c - 2; /* an odd last channel: the pair before it again */
    const qgt_channel *channel = &job->channels[c];
    widen_first_conv_pair(job->filter, c, lanes, w);
    int8_t *o = job->output + c;
    for (int32_t b = 0; b < out->n; ++b) {
      const int8_t *image = job->input + (size_t)b * image_bytes;
      for (int32_t oy = 0; oy < out->h; ++oy) {
        const int32_t y0 = oy * sh - ph;
        const int inner_row = oy >= y_first && oy < y_end && x_first < x_end;
        for (int32_t ox = 0; ox < out->w; ++ox, o += out_c) {
          if (inner_row && ox == x_first) {
            const int8_t *at = image + (size_t)y0 * row_bytes + (size_t)(ox * sw - pw) * (size_t)in_c;
            (in_c == 1 ? gray_columns : rgb_columns)(at, step, stride, x_end - x_first, w, offset2, channel, o,
                                                     out_c);
            o += (size_t)(x_end - x_first - 1) * (size_t)out_c;
            ox = x_end - 1;
            continue;
          }
          first_conv_edge(image, in, y0, ox * sw - pw, dilation_h, lanes, w, params->input_offset, channel, o);
        }
      }
    }
  }
}
#endif

/* The pixel pairs of a pointwise layer (raster order over the batch), whose receptive field is the input pixel; an
 * odd last pixel is a pair of itself. */
static void pointwise_rows(conv_job *job) {
  const qgt_dims *out = job->output_dims;
  const int32_t pixels = out->n * out->h * out->w, out_c = job->filter->out_channels;
  const int32_t offset = job->params->input_offset, length = job->filter->row_length;
  const int8_t *in = job->input;
  int8_t *o = job->output;
  for (int32_t p = 0; p < pixels; p += 2, in += 2 * (size_t)length, o += 2 * (size_t)out_c) {
    const int both = p + 1 < pixels;
    int32_t sums[2];
#if QGT_DSP
    widen_pair(in, both ? in + length : in, length, offset, job->copy, sums);
#else
    sums[0] = widen(in, length, offset, 0, job->copy);
    sums[1] = widen(both ? in + length : in, length, offset, 1, job->copy);
#endif
    channels_of_pair(job, sums, o, both ? o + out_c : o);
  }
}

/* The pixel pairs of any other layer, their receptive fields gathered (raster order over the batch); an odd last
 * pixel is a pair of itself. */
static void field_rows(conv_job *job) {
  const qgt_dims *out = job->output_dims;
  const int32_t pixels = out->n * out->h * out->w, out_c = job->filter->out_channels;
  const int32_t offset = job->params->input_offset;
  const fields f = fields_of(job->params, job->input_dims, job->input, job->filter, job->field);
  const int8_t *image = job->input;
  int32_t oy = 0, ox = 0; /* of pixel p + k */
  for (int32_t p = 0; p < pixels; p += 2) {
    const int32_t second = p + 1 < pixels ? p + 1 : p;
    int32_t sums[2];
    for (int32_t k = 0; k < 2; ++k) {
      if (k == 1 && second == p) {
        sums[1] = widen(job->field, f.padded, offset, 1, job->copy);
        break;
      }
      sums[k] = copy_field(&f, image, oy, ox, job->copy, k);
      if (++ox == out->w) {
        ox = 0;
        if (++oy == out->h) {
          oy = 0;
          image += f.image_bytes;
        }
      }
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

QGT_COLD
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

QGT_COLD
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
  const int32_t per_word = 32 / filter->weight_bits; /* int32 arithmetic: no 64-bit division from libgcc */
  if (filter->out_channels <= 0 || filter->row_length != row_length ||
      filter->row_bytes / 4 != row_length / per_word + (row_length % per_word != 0) || filter->row_bytes % 4 != 0) {
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
  conv_job job;
  job.params = params;
  job.input_dims = input_dims;
  job.output_dims = output_dims;
  job.input = input;
  job.filter = filter;
  job.output = output;
  job.channels = channels;
  job.copy = (int16_t *)(void *)copy;
  job.field = (int8_t *)(copy + pair_copy_bytes(filter));
  job.form = full_range ? form : QGT_GENERIC;
#if QGT_DSP
  if (!pointwise && first_conv_fits(params, filter, job.form)) {
    first_conv(&job);
    return QGT_OK;
  }
  pairs_job_of(&job);
#endif
  (pointwise ? pointwise_rows : field_rows)(&job);
  return QGT_OK;
}

QGT_COLD
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

QGT_COLD
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

/* DEPTHWISE_CONV_2D.
 *
 * The input is read only through a ring of the window's rows in scratch: each input row is copied once, when
 * the first output row that needs it is computed, in channel pairs: for each pair of input channels, the
 * row's columns, 2 bytes each (the two channels), padding columns (and padding rows) and a missing last
 * channel filled with the input zero point, whose contribution is zero. So the inner loops have no bounds
 * checks, and one word load at a column gives both channels at it and at the next column: SXTAB16 (input
 * offset added) makes the lanes (x[col], x[col+1]) of each channel, a pair of horizontally adjacent taps for
 * SMLAD. The output may overwrite the input in place. The filter is widened once per call into scratch, 2 bytes
 * per weight, per output channel pair: for 3 x 3 filters on the DSP path, per filter row the words
 * (w0, w1) of each channel and (w2 of both); otherwise per tap the word (w of both channels). On the DSP path
 * 3 x 3 layers at stride 1 or 2 run in hand-written routines (rows_3x3_*): channel pairs outer, two output
 * pixels per pass (stride 1: columns x..x+3, stride 2: x..x+4, loaded once for both): per filter row 2 or 3
 * loads, 4 or 6 SXTAB16 and 10 or 8 multiply-accumulates for 12 MACs, then the four outputs requantized.
 */
#include <stddef.h>

#include "qgt_internal.h"

typedef struct {
  int32_t taps;         /* kh * kw */
  int32_t pairs;        /* output channels in pairs, the last one possibly half */
  int32_t rows;         /* ring rows: the window's height in input rows */
  int32_t width;        /* ring row width in pixels: the columns the output row reads, padding included */
  size_t segment_bytes; /* one pair of input channels of a ring row: 2 bytes per column */
  size_t row_bytes;     /* a ring row: its input channel pairs */
  size_t channels_bytes, ring_bytes, weights_bytes;
} layout;

/* Whether the layout's sizes fit int32. */
static int layout_fits(const qgt_conv_params *params, const qgt_dims *input_dims, const qgt_filter *filter,
                       const qgt_dims *output_dims) {
  const int64_t rows = (int64_t)(filter->kernel_h - 1) * params->dilation.h + 1;
  const int64_t width = (int64_t)(output_dims->w - 1) * params->stride.w +
                        (int64_t)(filter->kernel_w - 1) * params->dilation.w + 1;
  const int64_t ring = width * 4 * ((input_dims->c + 3) / 4) * rows;
  const int64_t weights = (int64_t)filter->kernel_h * filter->kernel_w * (filter->out_channels + 3) * 2;
  return ring <= QGT_INT32_MAX && weights <= QGT_INT32_MAX;
}

/* Scratch: channel records | ring | widened filter. The sizes reserved (kernel_abi.py mirrors them) count the
 * ring's input channels and the filter's output channels in groups of 4, which holds their pairs; the ring's
 * rows take 2 bytes per channel and column, so a word load at a row's last column (which reads 2 bytes past it)
 * stays inside the scratch. */
static layout layout_of(const qgt_conv_params *params, const qgt_dims *input_dims, const qgt_filter *filter,
                        const qgt_dims *output_dims) {
  layout l;
  l.taps = filter->kernel_h * filter->kernel_w;
  l.pairs = (filter->out_channels + 1) / 2;
  l.rows = (filter->kernel_h - 1) * params->dilation.h + 1;
  l.width = (output_dims->w - 1) * params->stride.w + (filter->kernel_w - 1) * params->dilation.w + 1;
  l.segment_bytes = (size_t)2 * (size_t)l.width;
  l.row_bytes = l.segment_bytes * (size_t)((input_dims->c + 1) / 2);
  l.channels_bytes = qgt__align4(qgt__channels_bytes(filter->out_channels));
  l.ring_bytes = (size_t)4 * (size_t)l.width * (size_t)((input_dims->c + 3) / 4) * (size_t)l.rows;
  l.weights_bytes = (size_t)8 * (size_t)((filter->out_channels + 3) / 4) * (size_t)l.taps;
  return l;
}

static size_t scratch_of(const layout *l) { return l->channels_bytes + l->ring_bytes + l->weights_bytes; }

QGT_COLD
size_t qgt_depthwise_conv2d_scratch_size(const qgt_conv_params *params, const qgt_dims *input_dims,
                                         const qgt_filter *filter, const qgt_dims *output_dims) {
  if (params == NULL || input_dims == NULL || filter == NULL || output_dims == NULL) return 0;
  if (qgt__dims_count(input_dims) < 0 || qgt__dims_count(output_dims) < 0 || filter->kernel_h <= 0 ||
      filter->kernel_w <= 0 || params->stride.w <= 0 || params->dilation.h <= 0 || params->dilation.w <= 0 ||
      !layout_fits(params, input_dims, filter, output_dims)) {
    return 0;
  }
  const layout l = layout_of(params, input_dims, filter, output_dims);
  return scratch_of(&l);
}

/* Halfword of the widened filter (per tap layout) holding channel c at tap t. */
static inline size_t weight_halfword(const layout *l, int32_t c, int32_t t) {
  return ((size_t)(c >> 1) * (size_t)l->taps + (size_t)t) * 2u + (size_t)(c & 1);
}

/* The low half-words of a and b as one word (PKHBT), and their high half-words (PKHTB): two columns of a channel
 * pair, or two channels of a tap. */
static inline uint32_t low_halves(uint32_t a, uint32_t b) {
#if QGT_DSP
  uint32_t r;
  __asm__("pkhbt %0, %1, %2, lsl #16" : "=r"(r) : "r"(a), "r"(b));
  return r;
#else
  return (a & 0xFFFFu) | b << 16;
#endif
}

static inline uint32_t high_halves(uint32_t a, uint32_t b) {
#if QGT_DSP
  uint32_t r;
  __asm__("pkhtb %0, %1, %2, asr #16" : "=r"(r) : "r"(b), "r"(a));
  return r;
#else
  return (b & 0xFFFF0000u) | a >> 16;
#endif
}

/* The signed codes of field j of both half-words of a weight word, as int16 lanes (FORMAT.md's field order). */
static inline __attribute__((always_inline)) uint32_t field_lanes(uint32_t word, int32_t j, int32_t bits) {
#if QGT_DSP
  const uint32_t lanes = qgt__ror(word, (uint32_t)(bits * j)) & (((1u << bits) - 1u) * 0x00010001u);
  if (bits == 8) return (uint32_t)__sxtb16((int32_t)lanes);
  if (bits == 1) return (uint32_t)__ssub16((int32_t)(lanes << 1), 0x00010001); /* 0 -> -1, 1 -> +1 */
  const uint32_t sign = (1u << (bits - 1)) * 0x00010001u;                           /* (v ^ s) - s per lane */
  return (uint32_t)__ssub16((int32_t)(lanes ^ sign), (int32_t)sign);
#else
  const int32_t low = qgt__field_code(word, bits * j, bits), high = qgt__field_code(word, 16 + bits * j, bits);
  return ((uint32_t)low & 0xFFFFu) | (uint32_t)high << 16;
#endif
}

/* The filter widened per tap (see the file comment); a missing last channel is zero. Where the channels come
 * in whole groups of 4, a quad of a weight word holds channels c..c+3 of one tap: its field pairs (w[c], w[c+2])
 * and (w[c+1], w[c+3]) become (w[c], w[c+1]) and (w[c+2], w[c+3]) by two half-word packs. */
static void widen_filter(const qgt_filter *filter, const layout *l, uint32_t *weights) {
  const int32_t channels = filter->out_channels, bits = filter->weight_bits, quads = 8 / bits;
  if ((channels & 3) == 0) {
    const uint32_t *word = (const uint32_t *)(const void *)filter->weights;
    int32_t q = 0;
    for (int32_t t = 0; t < l->taps; ++t) {
      uint32_t *pair = weights + t;
      for (int32_t c = 0; c < channels; c += 4, pair += 2 * l->taps) {
        const uint32_t even = field_lanes(*word, 2 * q, bits), odd = field_lanes(*word, 2 * q + 1, bits);
        pair[0] = low_halves(even, odd);
        pair[l->taps] = high_halves(even, odd);
        if (++q == quads) {
          q = 0;
          ++word;
        }
      }
    }
    return;
  }
  int16_t *half = (int16_t *)(void *)weights;
  for (size_t i = 0; i < 2u * (size_t)l->pairs * (size_t)l->taps; ++i) half[i] = 0;
  for (int32_t t = 0; t < l->taps; ++t) {
    for (int32_t c = 0; c < channels; ++c) {
      half[weight_halfword(l, c, t)] = (int16_t)qgt__code(filter->weights, t * channels + c, bits);
    }
  }
}

static inline void store16(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}

/* The ring columns inside the input: [first, last). */
static inline int32_t first_inside(const qgt_conv_params *params, const layout *l) {
  return qgt__min(qgt__max(params->padding.w, 0), l->width);
}

static inline int32_t last_inside(const qgt_conv_params *params, const qgt_dims *input_dims, const layout *l) {
  return qgt__min(params->padding.w + input_dims->w, l->width);
}

/* The padding columns of every ring row hold the zero point: written once per call, as load_row writes only the
 * columns inside the input (and a whole row outside it). */
static void pad_ring(const qgt_conv_params *params, const qgt_dims *input_dims, const layout *l, uint8_t *ring) {
  const uint32_t zero = (uint8_t)(-params->input_offset) * 0x0101u;
  const int32_t first = first_inside(params, l), last = last_inside(params, input_dims, l);
  const int32_t segments = l->rows * ((input_dims->c + 1) / 2);
  for (int32_t p = 0; p < segments; ++p) { /* padding columns: a few, so no memset call */
    uint8_t *column = ring + (size_t)p * l->segment_bytes;
    for (int32_t x = 0; x < first; ++x) store16(column + 2 * x, zero);
    for (int32_t x = last; x < l->width; ++x) store16(column + 2 * x, zero);
  }
}

/* Input row y of image `image` into ring slot `slot`, in channel pairs, its padding columns left as pad_ring wrote
 * them; a missing last channel holds the zero point, and so does a row outside the input. Inside the input, whole
 * groups of 4 channels of two columns at a time: two word loads, two half-word packs, two word stores. */
static void load_row(const qgt_conv_params *params, const qgt_dims *input_dims, const int8_t *image, const layout *l,
                     int32_t y, uint8_t *slot) {
  const uint8_t zero = (uint8_t)(-params->input_offset);
  const int32_t c = input_dims->c, in_pairs = (c + 1) / 2, groups = c / 4;
  const size_t segment = l->segment_bytes;
  if (y < 0 || y >= input_dims->h) {
    memset(slot, zero, l->row_bytes);
    return;
  }
  const int32_t first = first_inside(params, l), last = last_inside(params, input_dims, l);
  const int8_t *row = image + (size_t)y * (size_t)input_dims->w * (size_t)c;
  const int32_t cx = first + (last - first) / 2 * 2; /* the column pairs end */
  for (int32_t g = 0; g < groups; ++g) { /* group by group: a column pair is a 4-byte step of the stores */
    const int8_t *x0 = row + (size_t)(first - params->padding.w) * (size_t)c + 4 * g;
    uint8_t *to = slot + 2 * (size_t)g * segment + 2u * (size_t)first;
    for (uint8_t *const end = slot + 2 * (size_t)g * segment + 2u * (size_t)cx; to != end; to += 4, x0 += 2 * c) {
      const uint32_t a = qgt__load32(x0), b = qgt__load32(x0 + c);
      qgt__store32(to + segment, high_halves(a, b));
      qgt__store32(to, low_halves(a, b));
    }
  }
  /* the rest: channels past the groups of 4, and a last odd column */
  for (int32_t x = 2 * groups < in_pairs ? first : cx; x < last; ++x) {
    const int8_t *pixel = row + (size_t)(x - params->padding.w) * (size_t)c;
    for (int32_t p = x < cx ? 2 * groups : 0; p < in_pairs; ++p) {
      const uint32_t low = (uint8_t)pixel[2 * p], high = 2 * p + 1 < c ? (uint8_t)pixel[2 * p + 1] : zero;
      store16(slot + (size_t)p * segment + 2u * (size_t)x, low | high << 8);
    }
  }
}

/* Input channel ic at ring column cx of slot row `slot`. */
static inline int32_t ring_value(const layout *l, const int8_t *slot, int32_t cx, int32_t ic) {
  return slot[(size_t)(ic >> 1) * l->segment_bytes + 2u * (size_t)cx + (size_t)(ic & 1)];
}

static inline int32_t ring_slot(int32_t row, int32_t rows) {
  const int32_t r = row % rows;
  return r < 0 ? r + rows : r;
}

/* In place: output row (b, oy) must not cover input rows still to be copied. */
static int in_place_ok(const qgt_conv_params *params, const qgt_dims *in, const qgt_filter *filter,
                       const qgt_dims *out) {
  const int64_t in_row = (int64_t)in->w * in->c, out_row = (int64_t)out->w * out->c;
  for (int32_t b = 0; b < out->n; ++b) {
    for (int32_t oy = 0; oy < out->h; ++oy) {
      const int64_t next = (int64_t)oy * params->stride.h - params->padding.h +
                           (int64_t)(filter->kernel_h - 1) * params->dilation.h + 1;
      const int64_t first_unread = ((int64_t)b * in->h + (next < 0 ? 0 : next > in->h ? in->h : next)) * in_row;
      if (((int64_t)b * out->h + oy + 1) * out_row > first_unread) return 0;
    }
  }
  return 1;
}

typedef struct {
  const qgt_conv_params *params;
  const qgt_filter *filter;
  const layout *l;
  const qgt_channel *channels;
  const uint32_t *weights;
  int form; /* the requantization form (QGT_FAST...) when the clamp is the whole int8 range, else QGT_GENERIC */
} depthwise_job;

/* Stores the outputs of a channel pair at one pixel (`both`: the second channel exists), for a constant
 * requantization `form` (QGT_GENERIC unless the clamp is the whole int8 range). */
static inline __attribute__((always_inline)) void store_pair(int8_t *out, int both, const qgt_channel *channel,
                                                             int32_t a0, int32_t a1, int32_t output_offset,
                                                             qgt_range activation, int form) {
#if QGT_DSP
  if (form != QGT_GENERIC) {
    out[0] = (int8_t)qgt__fast_output(a0, &channel[0]);
    if (both) out[1] = (int8_t)qgt__fast_output(a1, &channel[1]);
    return;
  }
#else
  (void)form;
#endif
  out[0] = qgt__output(a0, &channel[0], output_offset, activation);
  if (both) out[1] = qgt__output(a1, &channel[1], output_offset, activation);
}

#if QGT_DSP
/* Whether the DSP path's 3 x 3 loops (and their filter layout) serve the layer. */
static int three_by_three(const qgt_conv_params *params, const qgt_filter *filter) {
  return filter->kernel_h == 3 && filter->kernel_w == 3 && params->dilation.w == 1 &&
         params->depth_multiplier == 1;
}

/* The per tap filter rearranged for the 3 x 3 loops: per channel pair and filter row, the words (w0, w1) of the
 * first channel, (w0, w1) of the second and (w2 of both). */
static void filter_for_three_by_three(const layout *l, uint32_t *weights) {
  for (int32_t p = 0; p < l->pairs; ++p) {
    uint32_t *w = weights + 9 * (size_t)p;
    for (int32_t ky = 0; ky < 3; ++ky, w += 3) {
      const uint32_t w0 = w[0], w1 = w[1];
      w[0] = low_halves(w0, w1);
      w[1] = high_halves(w0, w1);
    }
  }
}


/* The 3 x 3 layers' loop on the DSP path: assembly routines (one per stride), over all whole channel pairs of
 * an output row, two pixels per pass. Per pair, its 9 weight words and 2 channel records are copied into the
 * routine's stack frame, where they are addressed from sp: so the 13 registers of a pass (4 accumulators, 4
 * temporaries, 3 row pointers, the input offset, the output pointer) and out_c fit in the 14 there are, and a
 * pass ends when the first row pointer reaches the end kept in the frame; the compiler's version spilled and
 * reloaded row pointers around every pass. Filter row k reads the
 * ring row at its pointer: stride 1, columns 0..3 (words A: columns 0, 1 and B: 2, 3 of both channels); stride
 * 2, columns 0..4 (words A, B, C). Its weights are 12 bytes at [sp, #12k]: (w0, w1) of channel 0, (w0, w1) of
 * channel 1, (w2 of both). r0, r1: channel 0 at pixels 0, 1; r2, r3: channel 1. The first row multiplies, the
 * others accumulate; the row pointers move on by the two pixels. Requantization: the fast form, QGT_FAST (which
 * also serves layers of the QGT_FAST_RIGHT form, for flash). */
typedef struct {
  const int8_t *rows[3];       /* 0: the ring rows of the 3 filter rows at the first pair's segment, column 0 */
  const uint32_t *weights;     /* 12: 9 words per pair */
  const qgt_channel *channels; /* 16: 2 records per pair */
  int8_t *out;                 /* 20: the first pair's outputs at pixel 0 */
  int32_t out_c;               /* 24 */
  int32_t passes;              /* 28: two-pixel passes per pair (>= 1) */
  int32_t pairs;               /* 32: whole channel pairs (>= 1) */
  int32_t segment;             /* 36 */
  int32_t offset2;             /* 40: the input offset in both half-words */
} dw_rows_job;
typedef char dw_rows_job_layout_is_the_assembly_s[offsetof(dw_rows_job, offset2) == 40 ? 1 : -1];

/* The frame: weights at [sp, #0], records at [sp, #36], the job at [sp, #84], out_c at [sp, #88], offset2 at
 * [sp, #92], where the pair's passes end (the first row pointer after them) at [sp, #96]. In a pass r11 holds
 * out_c and r12 offset2. */
#define QGT_DW_MUL(acc, op) op " " acc ", r6, r7\n\t"
#define QGT_DW_ACC(acc, op) op " " acc ", r6, r7, " acc "\n\t"
#define QGT_DW_FIRST(acc, mul, mla) QGT_DW_MUL(acc, mul)
#define QGT_DW_LATER(acc, mul, mla) QGT_DW_ACC(acc, mla)
#define QGT_DW_NEXT(acc, mul, mla) QGT_DW_ACC(acc, mla)
#define QGT_DW_STRIDE1(ROW, W0, W4, W8, FIRST)                                                            \
  "ldr r5, [" ROW ", #4]\n\t"                                                                             \
  "ldr r4, [" ROW "], #4\n\t"                                /* and the row on by two pixels */          \
  "ldr r7, [sp, #" W0 "]\n\t"                                /* (w0, w1) of channel 0 */                  \
  "sxtab16 r6, r12, r4\n\t"                                  /* channel 0, columns 0, 1 */                \
  FIRST("r0", "smuad", "smlad") FIRST("r1", "smultb", "smlatb")                                           \
  "sxtab16 r6, r12, r5\n\t"                                  /* columns 2, 3 */                           \
  QGT_DW_NEXT("r1", "", "smlabt")                                                                         \
  "ldr r7, [sp, #" W8 "]\n\t"                                /* w2 of both */                             \
  QGT_DW_NEXT("r0", "", "smlabb") QGT_DW_NEXT("r1", "", "smlatb")                                         \
  "sxtab16 r6, r12, r5, ror #8\n\t"                          /* channel 1, columns 2, 3 */                \
  FIRST("r2", "smulbt", "smlabt") FIRST("r3", "smultt", "smlatt")                                         \
  "ldr r7, [sp, #" W4 "]\n\t"                                /* (w0, w1) of channel 1 */                  \
  QGT_DW_NEXT("r3", "", "smlabt")                                                                         \
  "sxtab16 r6, r12, r4, ror #8\n\t"                          /* columns 0, 1 */                           \
  QGT_DW_NEXT("r2", "", "smlad") QGT_DW_NEXT("r3", "", "smlatb")
#define QGT_DW_STRIDE2(ROW, W0, W4, W8, FIRST)                                                            \
  "ldr r5, [" ROW ", #4]\n\t"                                                                             \
  "ldr r4, [" ROW "], #8\n\t"                                /* and the row on by two pixels */          \
  "ldr r7, [sp, #" W0 "]\n\t"                                /* (w0, w1) of channel 0 */                  \
  "sxtab16 r6, r12, r4\n\t"                                  /* channel 0, columns 0, 1 */                \
  FIRST("r0", "smuad", "smlad")                                                                           \
  "sxtab16 r6, r12, r5\n\t"                                  /* columns 2, 3 */                           \
  FIRST("r1", "smuad", "smlad")                                                                           \
  "ldr r7, [sp, #" W4 "]\n\t"                                /* (w0, w1) of channel 1 */                  \
  "sxtab16 r6, r12, r4, ror #8\n\t"                                                                       \
  FIRST("r2", "smuad", "smlad")                                                                           \
  "sxtab16 r6, r12, r5, ror #8\n\t"                                                                       \
  FIRST("r3", "smuad", "smlad")                                                                           \
  "ldr r7, [sp, #" W8 "]\n\t"                                /* w2 of both */                             \
  QGT_DW_NEXT("r2", "", "smlabt")                                                                         \
  "sxtab16 r6, r12, r5\n\t"                                                                               \
  QGT_DW_NEXT("r0", "", "smlabb")                                                                         \
  "ldr r4, [" ROW "]\n\t"                                    /* column 4 */                               \
  "sxtab16 r6, r12, r4\n\t"                                                                               \
  QGT_DW_NEXT("r1", "", "smlabb")                                                                         \
  "sxtab16 r6, r12, r4, ror #8\n\t"                                                                       \
  QGT_DW_NEXT("r3", "", "smlabt")
#define QGT_DW_PASS(ROW)                                                                                   \
  ROW("r8", "0", "4", "8", QGT_DW_FIRST) ROW("r9", "12", "16", "20", QGT_DW_LATER)                        \
  ROW("r10", "24", "28", "32", QGT_DW_LATER)
/* Accumulators A0 (pixel 0) and A1 (pixel 1) requantized with the record at [sp, #B] (the fast form of
 * qgt_internal.h) and stored at [lr] and [lr + r11]; lr then moves by MOVE. */
#define QGT_DW_FAST(A0, A1, B, B8, B16, MOVE)                                                        \
  "ldrd r4, r5, [sp, #" B "]\n\t"                   /* scale, bias */                               \
  "mla " A0 ", " A0 ", r4, r5\n\t"                                                                  \
  "mla " A1 ", " A1 ", r4, r5\n\t"                                                                  \
  "ldrd r4, r5, [sp, #" B8 "]\n\t"                  /* multiplier, round */                         \
  "smmlar r6, " A0 ", r4, r5\n\t"                                                                   \
  "smmlar r7, " A1 ", r4, r5\n\t"                                                                   \
  "ldrd r4, r5, [sp, #" B16 "]\n\t"                 /* right, sign */                               \
  "and " A0 ", r5, " A0 ", asr #31\n\t"                                                             \
  "and " A1 ", r5, " A1 ", asr #31\n\t"                                                             \
  "add r6, r6, " A0 "\n\t"                                                                          \
  "add r7, r7, " A1 "\n\t"                                                                          \
  "asr r6, r6, r4\n\t"                                                                              \
  "asr r7, r7, r4\n\t"                                                                              \
  "ssat r6, #8, r6\n\t"                                                                             \
  "ssat r7, #8, r7\n\t"                                                                             \
  "strb r7, [lr, r11]\n\t"                                                                          \
  "strb r6, [lr], #" MOVE "\n\t"
/* ROW_SHIFT: log2 of the bytes a pass moves a row pointer on. */
#define QGT_DW_ROUTINE(ROW, ROW_SHIFT)                                                              \
  __asm__("push {r4-r11, lr}\n\t"                                                                   \
          "sub sp, sp, #100\n\t"                                                                    \
          "str r0, [sp, #84]\n\t"                                                                   \
          "ldr r1, [r0, #24]\n\t"                                                                   \
          "ldr r12, [r0, #40]\n\t"                                                                  \
          "strd r1, r12, [sp, #88]\n\t"                                                             \
          "1:\n\t"                                  /* a channel pair: its weights and records */   \
          "ldr r0, [sp, #84]\n\t"                                                                   \
          "ldr r1, [r0, #12]\n\t"                                                                   \
          "ldm r1!, {r2-r10}\n\t"                                                                   \
          "str r1, [r0, #12]\n\t"                                                                   \
          "stm sp, {r2-r10}\n\t"                                                                    \
          "ldr r1, [r0, #16]\n\t"                                                                   \
          "add r11, sp, #36\n\t"                                                                    \
          "ldm r1!, {r2-r7}\n\t"                                                                    \
          "stm r11!, {r2-r7}\n\t"                                                                   \
          "ldm r1!, {r2-r7}\n\t"                                                                    \
          "stm r11, {r2-r7}\n\t"                                                                    \
          "str r1, [r0, #16]\n\t"                                                                   \
          "ldm r0, {r8, r9, r10}\n\t"               /* its rows; the next pair's after them */      \
          "ldr r11, [r0, #36]\n\t"                                                                  \
          "add r1, r8, r11\n\t"                                                                     \
          "add r2, r9, r11\n\t"                                                                     \
          "add r3, r10, r11\n\t"                                                                    \
          "stm r0, {r1, r2, r3}\n\t"                                                                \
          "ldr lr, [r0, #20]\n\t"                                                                   \
          "add r1, lr, #2\n\t"                                                                      \
          "str r1, [r0, #20]\n\t"                                                                   \
          "ldr r11, [r0, #28]\n\t"                                                                  \
          "add r11, r8, r11, lsl #" ROW_SHIFT "\n\t"                                                \
          "str r11, [sp, #96]\n\t"                                                                  \
          "ldr r11, [sp, #88]\n\t"                                                                  \
          "2:\n\t" QGT_DW_PASS(ROW)                 /* a pass: two pixels */                        \
          QGT_DW_FAST("r0", "r1", "36", "44", "52", "1")                                            \
          QGT_DW_FAST("r2", "r3", "60", "68", "76", "-1")                                           \
          "add lr, lr, r11, lsl #1\n\t"                                                             \
          "ldr r4, [sp, #96]\n\t"                                                                   \
          "cmp r8, r4\n\t"                                                                          \
          "bne 2b\n\t"                                                                              \
          "ldr r0, [sp, #84]\n\t"                                                                   \
          "ldr r1, [r0, #32]\n\t"                                                                   \
          "subs r1, r1, #1\n\t"                                                                     \
          "str r1, [r0, #32]\n\t"                                                                   \
          "bne 1b\n\t"                                                                              \
          "add sp, sp, #100\n\t"                                                                    \
          "pop {r4-r11, pc}\n\t")

QGT_ASM_ROUTINE static void rows_3x3_stride1(dw_rows_job *job __attribute__((unused))) {
  QGT_DW_ROUTINE(QGT_DW_STRIDE1, "2");
}

QGT_ASM_ROUTINE static void rows_3x3_stride2(dw_rows_job *job __attribute__((unused))) {
  QGT_DW_ROUTINE(QGT_DW_STRIDE2, "3");
}

/* One filter row of a 3 x 3 channel pair at one pixel: ring columns 0..2 at r; acc = {channel 0, channel 1}. */
static inline __attribute__((always_inline)) void row_single(const int8_t *r, const uint32_t *w, int32_t offset2,
                                                             int32_t acc[2]) {
  const int32_t a = (int32_t)qgt__load32(r), b = (int32_t)qgt__load32(r + 4);
  acc[0] = __smlad(__sxtab16(offset2, a), (int32_t)w[0], acc[0]);
  acc[1] = __smlad(qgt__sxtab16_odd(offset2, a), (int32_t)w[1], acc[1]);
  acc[0] = __smlabb(__sxtab16(offset2, b), (int32_t)w[2], acc[0]);
  acc[1] = __smlabt(qgt__sxtab16_odd(offset2, b), (int32_t)w[2], acc[1]);
}

/* One channel pair of a 3 x 3 layer along output pixels [first, last) of a row, one pixel at a time, at any stride
 * and requantization (a half last pair when `both` is 0): the layers and pixels the routines leave. */
QGT_COLD
static void pair_row_3x3(const depthwise_job *job, int32_t p, const int8_t *const *rows, int8_t *row_out,
                         int32_t first, int32_t last, int both) {
  const int32_t out_c = job->filter->out_channels;
  const int32_t offset2 = qgt__both_lanes(job->params->input_offset);
  const uint32_t *w = job->weights + 9 * (size_t)p;
  const qgt_channel *channel = job->channels + 2 * p;
  const size_t step = 2u * (size_t)job->params->stride.w, at = (size_t)p * job->l->segment_bytes + step * (size_t)first;
  const int8_t *r0 = rows[0] + at, *r1 = rows[1] + at, *r2 = rows[2] + at;
  int8_t *out = row_out + 2 * p + (size_t)first * (size_t)out_c;
  for (int32_t ox = first; ox < last; ++ox, r0 += step, r1 += step, r2 += step, out += out_c) {
    int32_t acc[2] = {0, 0};
    row_single(r0, w, offset2, acc);
    row_single(r1, w + 3, offset2, acc);
    row_single(r2, w + 6, offset2, acc);
    store_pair(out, both, channel, acc[0], acc[1], job->params->output_offset, job->params->activation,
               job->form == QGT_GENERIC ? QGT_GENERIC : QGT_FAST);
  }
}

/* The whole channel pairs of a 3 x 3 layer along an output row at stride 1 or 2 in the fast form: two pixels per
 * pass by the routines, an odd last pixel here. rows[ky] is the ring row of filter row ky. */
static void pairs_3x3(const depthwise_job *job, const int8_t *const *rows, int8_t *row_out, int32_t out_w) {
  const int32_t out_c = job->filter->out_channels, pairs = out_c / 2, stride = job->params->stride.w;
  const int32_t offset2 = qgt__both_lanes(job->params->input_offset);
  const size_t segment = job->l->segment_bytes;
  if (out_w >= 2) {
    dw_rows_job j = {{rows[0], rows[1], rows[2]}, job->weights, job->channels, row_out, out_c, out_w / 2, pairs,
                     (int32_t)segment, offset2};
    (stride == 1 ? rows_3x3_stride1 : rows_3x3_stride2)(&j);
  }
  if (out_w & 1) { /* odd widths (MobileNet's last layers): inline, it is a third of their pixels */
    const size_t column = 2u * (size_t)(stride * (out_w - 1));
    int8_t *out = row_out + (size_t)(out_w - 1) * (size_t)out_c;
    for (int32_t p = 0; p < pairs; ++p, out += 2) {
      const uint32_t *w = job->weights + 9 * (size_t)p;
      const qgt_channel *channel = job->channels + 2 * p;
      const size_t at = (size_t)p * segment + column;
      int32_t acc[2] = {0, 0};
      row_single(rows[0] + at, w, offset2, acc);
      row_single(rows[1] + at, w + 3, offset2, acc);
      row_single(rows[2] + at, w + 6, offset2, acc);
      const int32_t v0 = qgt__fast_output(acc[0], &channel[0]);
      const int32_t v1 = qgt__fast_output(acc[1], &channel[1]);
      out[0] = (int8_t)v0;
      out[1] = (int8_t)v1;
    }
  }
}

/* One channel pair along an output row for any filter (depth multiplier 1): per tap, one word load at the
 * tap's column and the two channels' low lanes against the tap's weight word. `offsets[t]` is tap t's offset
 * from the pair's segment of the first window row. */
QGT_COLD
static __attribute__((noinline)) void pair_row_taps(const depthwise_job *job, int32_t p, const int8_t *segment,
                                                    const int32_t *offsets, int8_t *out, int32_t out_w) {
  const int32_t out_c = job->filter->out_channels, taps = job->l->taps;
  const int both = 2 * p + 1 < out_c;
  const int32_t offset2 = qgt__both_lanes(job->params->input_offset);
  const uint32_t *w = job->weights + (size_t)taps * (size_t)p;
  const qgt_channel *channel = job->channels + 2 * p;
  const size_t step = 2u * (size_t)job->params->stride.w;
  out += 2 * p;
  for (int32_t ox = 0; ox < out_w; ++ox, segment += step, out += out_c) {
    int32_t a0 = 0, a1 = 0;
    for (int32_t t = 0; t < taps; ++t) {
      const int32_t x = (int32_t)qgt__load32(segment + offsets[t]);
      a0 = __smlabb(__sxtab16(offset2, x), (int32_t)w[t], a0);
      a1 = __smlabt(qgt__sxtab16_odd(offset2, x), (int32_t)w[t], a1);
    }
    store_pair(out, both, channel, a0, a1, job->params->output_offset, job->params->activation,
               job->form == QGT_GENERIC ? QGT_GENERIC : QGT_FAST);
  }
}

#define QGT_DW_MAX_TAPS 49 /* the DSP path's tap table (up to 7 x 7); larger filters take the scalar loop */

/* The channel pairs of one output row on the DSP path (depth multiplier 1). `top` is the first input row of
 * its window. */
static void row_pairs(const depthwise_job *job, const int8_t *ring, int32_t top, int8_t *row_out, int32_t out_w) {
  const layout *l = job->l;
  const qgt_conv_params *params = job->params;
  const int32_t kw = job->filter->kernel_w;
  if (three_by_three(params, job->filter)) { /* MobileNet's layers */
    const int8_t *rows[3];
    for (int32_t ky = 0; ky < 3; ++ky) {
      rows[ky] = ring + (size_t)ring_slot(top + ky * params->dilation.h, l->rows) * l->row_bytes;
    }
    const int32_t stride = params->stride.w, out_c = job->filter->out_channels;
    if (stride <= 2 && job->form != QGT_GENERIC && out_c >= 2) {
      pairs_3x3(job, rows, row_out, out_w);
    } else {
      for (int32_t p = 0; 2 * p + 1 < out_c; ++p) pair_row_3x3(job, p, rows, row_out, 0, out_w, 1);
    }
    if (out_c & 1) pair_row_3x3(job, out_c / 2, rows, row_out, 0, out_w, 0);
    return;
  }
  int32_t offsets[QGT_DW_MAX_TAPS];
  for (int32_t t = 0; t < l->taps; ++t) {
    const int32_t ky = t / kw, kx = t % kw;
    offsets[t] = (int32_t)((size_t)ring_slot(top + ky * params->dilation.h, l->rows) * l->row_bytes +
                           (size_t)kx * (size_t)params->dilation.w * 2u);
  }
  for (int32_t p = 0; p < l->pairs; ++p) {
    pair_row_taps(job, p, ring + (size_t)p * l->segment_bytes, offsets, row_out, out_w);
  }
}
#endif

/* One output row the scalar way: any filter and depth multiplier (and the portable path's only loop). Cold on
 * the DSP path, where MobileNet's layers never take it. */
#if QGT_DSP
QGT_COLD __attribute__((noinline))
#endif
static void scalar_row(const qgt_conv_params *params, const qgt_filter *filter, const layout *l,
                       const qgt_channel *channels, const int16_t *half, const int8_t *ring, int32_t top,
                       int8_t *row_out, int32_t out_w) {
  const int32_t out_c = filter->out_channels, multiplier = params->depth_multiplier;
  for (int32_t ox = 0; ox < out_w; ++ox) {
    const int32_t column = ox * params->stride.w;
    int8_t *pixel_out = row_out + (size_t)ox * out_c;
    for (int32_t c = 0; c < out_c; ++c) {
      const int32_t ic = c / multiplier;
      int32_t acc = 0;
      for (int32_t t = 0; t < l->taps; ++t) {
        const int32_t ky = t / filter->kernel_w, kx = t % filter->kernel_w;
        const int8_t *slot = ring + (size_t)ring_slot(top + ky * params->dilation.h, l->rows) * l->row_bytes;
        acc += (ring_value(l, slot, column + kx * params->dilation.w, ic) + params->input_offset) *
               half[weight_halfword(l, c, t)];
      }
      pixel_out[c] = qgt__output(acc, &channels[c], params->output_offset, params->activation);
    }
  }
}

static void depthwise_rows(const qgt_conv_params *params, const qgt_quant_params *quant, const qgt_dims *in,
                           const int8_t *input, const qgt_filter *filter, const qgt_dims *out, int8_t *output,
                           void *scratch) {
  const layout l = layout_of(params, in, filter, out);
  uint8_t *bytes = (uint8_t *)scratch;
  qgt_channel *channels = (qgt_channel *)scratch;
  uint8_t *ring = bytes + l.channels_bytes;
  uint32_t *weights = (uint32_t *)(void *)(bytes + l.channels_bytes + l.ring_bytes);
  const int32_t out_c = out->c, in_c = in->c;
  const int form = qgt__expand_channels(filter, quant, params->output_offset, channels);
  widen_filter(filter, &l, weights);
  pad_ring(params, in, &l, ring);
#if !QGT_DSP
  (void)form; /* the portable path has one form */
#else
  const int full_range = params->activation.min == -128 && params->activation.max == 127;
  const depthwise_job job = {params, filter, &l, channels, weights, full_range ? form : QGT_GENERIC};
  const int fast = params->depth_multiplier == 1 && l.taps <= QGT_DW_MAX_TAPS;
  if (three_by_three(params, filter)) filter_for_three_by_three(&l, weights);
#endif
  for (int32_t b = 0; b < out->n; ++b) {
    const int8_t *image = input + (size_t)b * in->h * in->w * in_c;
    int32_t next_row = QGT_INT32_MIN; /* first input row not yet in the ring */
    for (int32_t oy = 0; oy < out->h; ++oy) {
      const int32_t top = oy * params->stride.h - params->padding.h, bottom = top + l.rows - 1;
      for (int32_t y = next_row > top ? next_row : top; y <= bottom; ++y) {
        load_row(params, in, image, &l, y, ring + (size_t)ring_slot(y, l.rows) * l.row_bytes);
      }
      next_row = bottom + 1;
      int8_t *row_out = output + ((size_t)b * out->h + oy) * out->w * out_c;
#if QGT_DSP
      if (fast) {
        row_pairs(&job, (const int8_t *)ring, top, row_out, out->w);
        continue;
      }
#endif
      scalar_row(params, filter, &l, channels, (const int16_t *)(const void *)weights, (const int8_t *)ring, top,
                 row_out, out->w);
    }
  }
}

qgt_status qgt_depthwise_conv2d(const qgt_conv_params *params, const qgt_quant_params *quant,
                                const qgt_dims *input_dims, const int8_t *input, const qgt_filter *filter,
                                const qgt_dims *output_dims, int8_t *output, void *scratch, size_t scratch_bytes) {
  if (params == NULL || quant == NULL || input == NULL || filter == NULL || output == NULL) return QGT_ERR_ARGUMENT;
  qgt_status status = qgt__check_dims(input_dims);
  if (status == QGT_OK) status = qgt__check_dims(output_dims);
  if (status != QGT_OK) return status;
  if (filter->weights == NULL || filter->bias == NULL || filter->scale_codes == NULL ||
      ((uintptr_t)filter->weights & 3u) != 0) {
    return QGT_ERR_ARGUMENT;
  }
  if (params->depth_multiplier <= 0 || params->stride.h <= 0 || params->stride.w <= 0 || params->dilation.h <= 0 ||
      params->dilation.w <= 0 || params->padding.h < 0 || params->padding.w < 0) {
    return QGT_ERR_ARGUMENT;
  }
  if (!QGT_SUPPORTS_BITS(filter->weight_bits)) return QGT_ERR_OPTIONS;
  const int64_t taps = (int64_t)filter->kernel_h * filter->kernel_w;
  const int32_t per_word = 32 / filter->weight_bits; /* int32 arithmetic: no 64-bit division from libgcc */
  if (filter->kernel_h <= 0 || filter->kernel_w <= 0 || output_dims->n != input_dims->n ||
      output_dims->c != filter->out_channels || (int64_t)input_dims->c * params->depth_multiplier != output_dims->c ||
      taps * output_dims->c > QGT_INT32_MAX || filter->row_length != taps * output_dims->c ||
      filter->row_bytes / 4 != filter->row_length / per_word + (filter->row_length % per_word != 0) ||
      filter->row_bytes % 4 != 0 || !layout_fits(params, input_dims, filter, output_dims)) {
    return QGT_ERR_SHAPE;
  }
  status = qgt__check_offsets(params->input_offset, params->output_offset, params->activation);
  if (status != QGT_OK) return status;
  const layout l = layout_of(params, input_dims, filter, output_dims);
  status = qgt__check_scratch(scratch, scratch_bytes, scratch_of(&l));
  if (status != QGT_OK) return status;
  const size_t input_bytes = (size_t)qgt__dims_count(input_dims), output_bytes = (size_t)qgt__dims_count(output_dims);
  if (qgt__overlap(scratch, scratch_bytes, input, input_bytes) ||
      qgt__overlap(scratch, scratch_bytes, output, output_bytes)) {
    return QGT_ERR_SCRATCH;
  }
  if (qgt__overlap(input, input_bytes, output, output_bytes) &&
      ((const void *)input != (const void *)output || !in_place_ok(params, input_dims, filter, output_dims))) {
    return QGT_ERR_ARGUMENT;
  }
  depthwise_rows(params, quant, input_dims, input, filter, output_dims, output, scratch);
  return QGT_OK;
}

/* DEPTHWISE_CONV_2D.
 *
 * The input is read only through a ring of the window's rows in scratch: each input row is copied once, when
 * the first output row that needs it is computed, group-major (for each group of 4 input channels, the row's
 * columns one word each), with the padding columns (and padding rows) and missing channels filled with the
 * input zero point, whose contribution is zero. So the inner loops have no bounds checks, a 3x3 window's
 * taps sit at constant offsets, and the output may overwrite the input in place. The filter is widened once
 * per call into scratch, 2 bytes per weight, in groups of 4 channels: per group and tap the words
 * (w[c], w[c+2]) and (w[c+1], w[c+3]), the lanes SXTAB16 makes of 4 input bytes (the packed format's field
 * order gives both from one weight word). On the DSP path a tap of a group is one word load, two SXTAB16
 * (input offset added) and SMLABB/SMLATT for each channel; groups go outer, the output row's pixels inner.
 */
#include "qgt_internal.h"

#define QGT_DW_MAX_TAPS 49 /* the DSP path's tap table (up to 7 x 7); larger filters take the scalar loop */

typedef struct {
  int32_t taps;       /* kh * kw */
  int32_t groups;     /* output channels in groups of 4, the last one possibly partial */
  int32_t rows;       /* ring rows: the window's height in input rows */
  int32_t width;      /* ring row width in pixels: the columns the output row reads, padding included */
  size_t group_bytes; /* one group of 4 input channels of a ring row: width words */
  size_t row_bytes;   /* a ring row: its input channel groups */
  size_t channels_bytes, ring_bytes, weights_bytes;
} layout;

static int layout_fits(const qgt_conv_params *params, const qgt_dims *input_dims, const qgt_filter *filter,
                       const qgt_dims *output_dims) {
  const int64_t rows = (int64_t)(filter->kernel_h - 1) * params->dilation.h + 1;
  const int64_t width = (int64_t)(output_dims->w - 1) * params->stride.w +
                        (int64_t)(filter->kernel_w - 1) * params->dilation.w + 1;
  const int64_t ring = width * 4 * ((input_dims->c + 3) / 4) * rows;
  const int64_t weights = (int64_t)filter->kernel_h * filter->kernel_w * (filter->out_channels + 3) * 2;
  return ring <= QGT_INT32_MAX && weights <= QGT_INT32_MAX;
}

static layout layout_of(const qgt_conv_params *params, const qgt_dims *input_dims, const qgt_filter *filter,
                        const qgt_dims *output_dims) {
  layout l;
  l.taps = filter->kernel_h * filter->kernel_w;
  l.groups = (filter->out_channels + 3) / 4;
  l.rows = (filter->kernel_h - 1) * params->dilation.h + 1;
  l.width = (output_dims->w - 1) * params->stride.w + (filter->kernel_w - 1) * params->dilation.w + 1;
  l.group_bytes = (size_t)4 * (size_t)l.width;
  l.row_bytes = l.group_bytes * (size_t)((input_dims->c + 3) / 4);
  l.channels_bytes = qgt__align4(qgt__channels_bytes(filter->out_channels));
  l.ring_bytes = l.row_bytes * (size_t)l.rows;
  l.weights_bytes = (size_t)8 * (size_t)l.groups * (size_t)l.taps;
  return l;
}

static size_t scratch_of(const layout *l) { return l->channels_bytes + l->ring_bytes + l->weights_bytes; }

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

/* Halfword of the widened filter holding channel c at tap t. */
static inline size_t weight_halfword(const layout *l, int32_t c, int32_t t) {
  return (((size_t)(c >> 2) * (size_t)l->taps + (size_t)t) * 2u + (size_t)(c & 1)) * 2u + (size_t)((c >> 1) & 1);
}

/* The signed lanes of field j of both half-words of `word`, as a pair of int16. */
static inline uint32_t field_pair(uint32_t word, int32_t j, int32_t bits) {
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

/* The filter widened (see the file comment); missing channels of a partial last group are zero. */
static void widen_filter(const qgt_filter *filter, const layout *l, uint32_t *weights) {
  const int32_t channels = filter->out_channels, bits = filter->weight_bits, per_word = 32 / bits;
  if ((channels & 3) == 0) { /* quads of the row are 4 channels of one tap: one field pair per word */
    const uint32_t *row = (const uint32_t *)(const void *)filter->weights;
    for (int32_t position = 0; position < filter->row_length; position += 4) {
      const uint32_t word = row[position / per_word];
      const int32_t q = (position % per_word) / 4, t = position / channels, c = position % channels;
      uint32_t *pair = weights + ((size_t)(c >> 2) * (size_t)l->taps + (size_t)t) * 2u;
      pair[0] = field_pair(word, 2 * q, bits);
      pair[1] = field_pair(word, 2 * q + 1, bits);
    }
    return;
  }
  int16_t *half = (int16_t *)(void *)weights;
  for (size_t i = 0; i < 4u * (size_t)l->groups * (size_t)l->taps; ++i) half[i] = 0;
  for (int32_t t = 0; t < l->taps; ++t) {
    for (int32_t c = 0; c < channels; ++c) {
      half[weight_halfword(l, c, t)] = (int16_t)qgt__code(filter->weights, t * channels + c, bits);
    }
  }
}

/* Input row y of image `image` into ring slot `slot`, group-major; padding and missing channels hold the zero
 * point. */
static void load_row(const qgt_conv_params *params, const qgt_dims *input_dims, const int8_t *image, const layout *l,
                     int32_t y, int8_t *slot) {
  const uint8_t zero = (uint8_t)(-params->input_offset);
  const uint32_t zeros = zero * 0x01010101u;
  const int32_t c = input_dims->c, groups = (c + 3) / 4, full = c / 4;
  const int inside_row = y >= 0 && y < input_dims->h;
  for (int32_t cx = 0; cx < l->width; ++cx) {
    const int32_t x = cx - params->padding.w;
    uint8_t *column = (uint8_t *)slot + (size_t)cx * 4;
    if (!inside_row || x < 0 || x >= input_dims->w) {
      for (int32_t g = 0; g < groups; ++g) memcpy(column + (size_t)g * l->group_bytes, &zeros, 4);
      continue;
    }
    const int8_t *pixel = image + ((size_t)y * input_dims->w + x) * (size_t)c;
    for (int32_t g = 0; g < full; ++g) memcpy(column + (size_t)g * l->group_bytes, pixel + 4 * g, 4);
    if (full < groups) {
      uint8_t last[4] = {zero, zero, zero, zero};
      memcpy(last, pixel + 4 * full, (size_t)(c - 4 * full));
      memcpy(column + (size_t)full * l->group_bytes, last, 4);
    }
  }
}

/* Input channel ic at ring column cx of slot row `slot`. */
static inline int32_t ring_value(const layout *l, const int8_t *slot, int32_t cx, int32_t ic) {
  return slot[(size_t)(ic >> 2) * l->group_bytes + (size_t)cx * 4 + (size_t)(ic & 3)];
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

#if QGT_DSP
/* SXTAB16 of x rotated right by 8: the odd bytes, offset added (the rotation folded into the instruction). */
static inline int32_t sxtab16_odd(int32_t offset2, int32_t x) {
  int32_t r;
  __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(offset2), "r"(x));
  return r;
}

/* Tap t of a group: one word of 4 channels at `at`, widened, against the group's weight pair of tap t. */
#define QGT_DW_TAP(at, t)                                                                \
  {                                                                                      \
    const int32_t x = (int32_t)qgt__load32(at);                                          \
    const int32_t even = __sxtab16(offset2, x), odd = sxtab16_odd(offset2, x);           \
    const int32_t w02 = (int32_t)w[2 * (t)], w13 = (int32_t)w[2 * (t) + 1];              \
    a0 = __smlabb(even, w02, a0);                                                        \
    a2 = __smlatt(even, w02, a2);                                                        \
    a1 = __smlabb(odd, w13, a1);                                                         \
    a3 = __smlatt(odd, w13, a3);                                                         \
  }

/* The 9 taps of a 3 x 3 window for one group of 4 channels: rows r0, r1, r2 at column offsets 0, 4, 8, weight
 * pairs at w[0 .. 17]. Hand-scheduled: the block needs 13 live registers, which the compiler spills. */
#define QGT_DW_ASM_TAP(row, column, pair)                                 \
  "ldr %[x], [%[" row "], #" column "]\n\t"                                \
  "ldrd %[wa], %[wb], [%[w], #" pair "]\n\t"                              \
  "sxtab16 %[o], %[off], %[x], ror #8\n\t"                               \
  "sxtab16 %[x], %[off], %[x]\n\t"                                        \
  "smlabb %[a0], %[x], %[wa], %[a0]\n\t"                                  \
  "smlatt %[a2], %[x], %[wa], %[a2]\n\t"                                  \
  "smlabb %[a1], %[o], %[wb], %[a1]\n\t"                                  \
  "smlatt %[a3], %[o], %[wb], %[a3]\n\t"

static inline __attribute__((always_inline)) void taps_3x3(const int8_t *r0, const int8_t *r1, const int8_t *r2,
                                                           const uint32_t *w, int32_t offset2, int32_t acc[4]) {
  int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  uint32_t x, o, wa, wb;
  __asm__(QGT_DW_ASM_TAP("r0", "0", "0") QGT_DW_ASM_TAP("r0", "4", "8") QGT_DW_ASM_TAP("r0", "8", "16")
          QGT_DW_ASM_TAP("r1", "0", "24") QGT_DW_ASM_TAP("r1", "4", "32") QGT_DW_ASM_TAP("r1", "8", "40")
          QGT_DW_ASM_TAP("r2", "0", "48") QGT_DW_ASM_TAP("r2", "4", "56") QGT_DW_ASM_TAP("r2", "8", "64")
          : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [x] "=&r"(x), [o] "=&r"(o),
            [wa] "=&r"(wa), [wb] "=&r"(wb)
          : [r0] "r"(r0), [r1] "r"(r1), [r2] "r"(r2), [w] "r"(w), [off] "r"(offset2)
          : "memory");
  acc[0] = a0;
  acc[1] = a1;
  acc[2] = a2;
  acc[3] = a3;
}

/* Stores a group's four outputs (`count` of them valid) for a constant requantization `form` (QGT_GENERIC
 * unless the clamp is the whole int8 range). */
static inline __attribute__((always_inline)) void store_group(int8_t *out, int32_t count, const qgt_channel *channel,
                                                              int32_t a0, int32_t a1, int32_t a2, int32_t a3,
                                                              int32_t output_offset, qgt_range activation, int form) {
  if (form != QGT_GENERIC && count == 4) {
    const int32_t v0 = qgt__fast_output(a0, &channel[0], form), v1 = qgt__fast_output(a1, &channel[1], form);
    const int32_t v2 = qgt__fast_output(a2, &channel[2], form), v3 = qgt__fast_output(a3, &channel[3], form);
    out[0] = (int8_t)v0;
    out[1] = (int8_t)v1;
    out[2] = (int8_t)v2;
    out[3] = (int8_t)v3;
    return;
  }
  const int32_t acc[4] = {a0, a1, a2, a3};
  for (int32_t i = 0; i < count; ++i) out[i] = qgt__output(acc[i], &channel[i], output_offset, activation);
}

/* One group of 4 channels along an output row (depth multiplier 1), for constant `three_by_three` (3 x 3
 * filter, column dilation 1: taps at constant offsets from three row pointers) and requantization `form`. `rows[ky]`
 * is the group's part of the ring row of filter row ky, `offsets[t]` tap t's offset from rows[0] otherwise. */
static inline __attribute__((always_inline)) void group_row(const depthwise_job *job, int32_t g,
                                                            const int8_t *const *rows, const int32_t *offsets,
                                                            int8_t *out, int32_t out_w, int three_by_three, int form) {
  const int32_t channels = job->filter->out_channels, taps = job->l->taps, out_c = channels;
  const int32_t count = qgt__min(4, channels - 4 * g), step = 4 * job->params->stride.w;
  const int32_t offset2 = (int32_t)((uint32_t)(job->params->input_offset & 0xFFFF) * 0x00010001u);
  const int32_t output_offset = job->params->output_offset;
  const qgt_range activation = job->params->activation;
  const uint32_t *w = job->weights + (size_t)g * (size_t)taps * 2u;
  const qgt_channel *channel = job->channels + 4 * g;
  const int8_t *r0 = rows[0], *r1 = rows[1], *r2 = rows[2];
  out += 4 * g;
  for (int32_t ox = 0; ox < out_w; ++ox, out += out_c) {
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    if (three_by_three) {
      int32_t acc[4];
      taps_3x3(r0, r1, r2, w, offset2, acc);
      a0 = acc[0];
      a1 = acc[1];
      a2 = acc[2];
      a3 = acc[3];
      r0 += step;
      r1 += step;
      r2 += step;
    } else {
      for (int32_t t = 0; t < taps; ++t) QGT_DW_TAP(r0 + offsets[t], t)
      r0 += step;
    }
    store_group(out, count, channel, a0, a1, a2, a3, output_offset, activation, form);
  }
}

/* The groups of one output row on the DSP path. `top` is the first input row of its window. */
static void row_groups(const depthwise_job *job, const int8_t *ring, int32_t top, int8_t *row_out, int32_t out_w) {
  const layout *l = job->l;
  const qgt_conv_params *params = job->params;
  const int form = job->form;
  const int three_by_three = job->filter->kernel_h == 3 && job->filter->kernel_w == 3 && params->dilation.w == 1;
  int32_t offsets[QGT_DW_MAX_TAPS];
  const int8_t *rows[3];
  for (int32_t t = 0; t < l->taps; ++t) {
    const int32_t ky = t / job->filter->kernel_w, kx = t % job->filter->kernel_w;
    offsets[t] = (int32_t)((size_t)ring_slot(top + ky * params->dilation.h, l->rows) * l->row_bytes +
                           (size_t)kx * params->dilation.w * 4u);
  }
  for (int32_t g = 0; g < l->groups; ++g) {
    const int8_t *group = ring + (size_t)g * l->group_bytes;
    if (three_by_three) { /* MobileNet's layers */
      for (int32_t ky = 0; ky < 3; ++ky) rows[ky] = group + offsets[3 * ky];
      if (form == QGT_FAST_RIGHT) {
        group_row(job, g, rows, offsets, row_out, out_w, 1, QGT_FAST_RIGHT);
      } else {
        group_row(job, g, rows, offsets, row_out, out_w, 1, form == QGT_FAST ? QGT_FAST : QGT_GENERIC);
      }
    } else {
      rows[0] = rows[1] = rows[2] = group;
      group_row(job, g, rows, offsets, row_out, out_w, 0, form == QGT_FAST_RIGHT ? QGT_FAST : form);
    }
  }
}
#endif

static void depthwise_rows(const qgt_conv_params *params, const qgt_quant_params *quant, const qgt_dims *in,
                           const int8_t *input, const qgt_filter *filter, const qgt_dims *out, int8_t *output,
                           void *scratch) {
  const layout l = layout_of(params, in, filter, out);
  uint8_t *bytes = (uint8_t *)scratch;
  qgt_channel *channels = (qgt_channel *)scratch;
  int8_t *ring = (int8_t *)(bytes + l.channels_bytes);
  uint32_t *weights = (uint32_t *)(void *)(bytes + l.channels_bytes + l.ring_bytes);
  const int32_t out_c = out->c, in_c = in->c, multiplier = params->depth_multiplier;
  const int16_t *half = (const int16_t *)(const void *)weights;
  const int form = qgt__expand_channels(filter, quant, params->output_offset, channels);
  widen_filter(filter, &l, weights);
#if !QGT_DSP
  (void)form; /* the portable path has one form */
#else
  const int full_range = params->activation.min == -128 && params->activation.max == 127;
  const depthwise_job job = {params, filter, &l, channels, weights, full_range ? form : QGT_GENERIC};
  const int fast = multiplier == 1 && l.taps <= QGT_DW_MAX_TAPS;
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
        row_groups(&job, ring, top, row_out, out->w);
        continue;
      }
#endif
      for (int32_t ox = 0; ox < out->w; ++ox) {
        const int32_t column = ox * params->stride.w;
        int8_t *pixel_out = row_out + (size_t)ox * out_c;
        for (int32_t c = 0; c < out_c; ++c) {
          const int32_t ic = c / multiplier;
          int32_t acc = 0;
          for (int32_t t = 0; t < l.taps; ++t) {
            const int32_t ky = t / filter->kernel_w, kx = t % filter->kernel_w;
            const int8_t *slot = ring + (size_t)ring_slot(top + ky * params->dilation.h, l.rows) * l.row_bytes;
            acc += (ring_value(&l, slot, column + kx * params->dilation.w, ic) + params->input_offset) *
                   half[weight_halfword(&l, c, t)];
          }
          pixel_out[c] = qgt__output(acc, &channels[c], params->output_offset, params->activation);
        }
      }
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
  const int64_t taps = (int64_t)filter->kernel_h * filter->kernel_w, per_word = 32 / filter->weight_bits;
  if (filter->kernel_h <= 0 || filter->kernel_w <= 0 || output_dims->n != input_dims->n ||
      output_dims->c != filter->out_channels || (int64_t)input_dims->c * params->depth_multiplier != output_dims->c ||
      taps * output_dims->c > QGT_INT32_MAX || filter->row_length != taps * output_dims->c ||
      filter->row_bytes != 4 * ((filter->row_length + per_word - 1) / per_word) ||
      !layout_fits(params, input_dims, filter, output_dims)) {
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

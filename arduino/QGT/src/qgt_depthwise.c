/* DEPTHWISE_CONV_2D.
 *
 * The input is read only through a ring of the window's rows in scratch: each input row is copied once,
 * when the first output row that needs it is computed, with the padding columns (and padding rows) filled
 * with the input zero point, whose contribution is zero. So the inner loops have no bounds checks, and the
 * output may overwrite the input in place. The filter is widened once per call into scratch, 2 bytes per
 * weight, per channel in tap pairs (w[2p], w[2p+1]) plus the last tap of an odd count: on the DSP path
 * SXTAB16 widens 4 channels of two taps, PKHBT/PKHTB pair the taps per channel and SMLAD multiplies a pair
 * of taps with a pair of weights.
 */
#include "qgt_internal.h"

#define QGT_DW_MAX_TAPS 25 /* the DSP path's tap table (up to 5 x 5); larger filters take the scalar loop */

typedef struct {
  int32_t taps, pairs;       /* kh * kw taps, taps / 2 pairs */
  int32_t rows;              /* ring rows: the window's height in input rows */
  int32_t width;             /* ring row width in pixels: the columns the output row reads, padding included */
  size_t row_bytes;          /* width * input channels */
  size_t channels_bytes, ring_bytes, pairs_bytes, last_bytes;
} layout;

static layout layout_of(const qgt_conv_params *params, const qgt_dims *input_dims, const qgt_filter *filter,
                        const qgt_dims *output_dims) {
  layout l;
  l.taps = filter->kernel_h * filter->kernel_w;
  l.pairs = l.taps / 2;
  l.rows = (filter->kernel_h - 1) * params->dilation.h + 1;
  l.width = (output_dims->w - 1) * params->stride.w + (filter->kernel_w - 1) * params->dilation.w + 1;
  l.row_bytes = (size_t)l.width * (size_t)input_dims->c;
  l.channels_bytes = qgt__align4(qgt__channels_bytes(filter->out_channels));
  l.ring_bytes = qgt__align4(l.row_bytes * (size_t)l.rows);
  l.pairs_bytes = (size_t)4 * (size_t)l.pairs * (size_t)filter->out_channels;
  l.last_bytes = qgt__align4((size_t)2 * (size_t)(l.taps & 1) * (size_t)filter->out_channels);
  return l;
}

static int layout_fits(const qgt_conv_params *params, const qgt_dims *input_dims, const qgt_filter *filter,
                       const qgt_dims *output_dims) {
  const int64_t rows = (int64_t)(filter->kernel_h - 1) * params->dilation.h + 1;
  const int64_t width = (int64_t)(output_dims->w - 1) * params->stride.w + (int64_t)(filter->kernel_w - 1) * params->dilation.w + 1;
  const int64_t ring = width * input_dims->c * rows, weights = (int64_t)filter->kernel_h * filter->kernel_w * filter->out_channels * 2;
  return rows <= QGT_INT32_MAX && width <= QGT_INT32_MAX && ring <= QGT_INT32_MAX && weights <= QGT_INT32_MAX;
}

static size_t scratch_of(const layout *l) { return l->channels_bytes + l->ring_bytes + l->pairs_bytes + l->last_bytes; }

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

/* The filter as int16, per channel: pairs[c * P + p] = (w[c][2p], w[c][2p+1]), last[c] = w[c][taps - 1]. */
static void widen_filter(const qgt_filter *filter, const layout *l, uint32_t *pairs, int16_t *last) {
  const int32_t channels = filter->out_channels;
  for (int32_t c = 0; c < channels; ++c) {
    for (int32_t p = 0; p < l->pairs; ++p) {
      const int32_t w0 = qgt__code(filter->weights, (2 * p) * channels + c, filter->weight_bits);
      const int32_t w1 = qgt__code(filter->weights, (2 * p + 1) * channels + c, filter->weight_bits);
      pairs[(size_t)c * l->pairs + p] = ((uint32_t)w0 & 0xFFFFu) | (uint32_t)w1 << 16;
    }
    if (l->taps & 1) last[c] = (int16_t)qgt__code(filter->weights, (l->taps - 1) * channels + c, filter->weight_bits);
  }
}

static inline int32_t weight_at(const layout *l, const uint32_t *pairs, const int16_t *last, int32_t c, int32_t t) {
  if (t / 2 < l->pairs) {
    const uint32_t word = pairs[(size_t)c * l->pairs + t / 2];
    return (int16_t)(t & 1 ? word >> 16 : word & 0xFFFFu);
  }
  return last[c];
}

/* Input row y of image `image` into ring slot `slot`: padding columns and rows hold the zero point. */
static void load_row(const qgt_conv_params *params, const qgt_dims *input_dims, const int8_t *image, const layout *l,
                     int32_t y, int8_t *slot) {
  const int8_t zero = (int8_t)(-params->input_offset);
  const int32_t c = input_dims->c;
  for (int32_t cx = 0; cx < l->width; ++cx) {
    const int32_t x = cx - params->padding.w;
    int8_t *dst = slot + (size_t)cx * c;
    if (y < 0 || y >= input_dims->h || x < 0 || x >= input_dims->w) {
      for (int32_t i = 0; i < c; ++i) dst[i] = zero;
    } else {
      const int8_t *src = image + ((size_t)y * input_dims->w + x) * c;
      for (int32_t i = 0; i < c; ++i) dst[i] = src[i];
    }
  }
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

#if QGT_DSP
/* Four channels c .. c+3 of one output pixel (depth multiplier 1): tap pairs through SMLAD. */
static inline void four_channels(const int8_t *base, const int32_t *tap_offsets, const layout *l,
                                 const uint32_t *pairs, const int16_t *last, int32_t c, uint32_t offset2,
                                 int32_t acc[4]) {
  int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  const uint32_t *w = pairs + (size_t)c * l->pairs;
  const size_t stride = (size_t)l->pairs;
  for (int32_t p = 0; p < l->pairs; ++p) {
    const uint32_t xa = qgt__load32(base + tap_offsets[2 * p]), xb = qgt__load32(base + tap_offsets[2 * p + 1]);
    const uint32_t a02 = (uint32_t)__sxtab16((int32_t)offset2, (int32_t)xa);
    const uint32_t a13 = (uint32_t)__sxtab16((int32_t)offset2, (int32_t)qgt__ror(xa, 8));
    const uint32_t b02 = (uint32_t)__sxtab16((int32_t)offset2, (int32_t)xb);
    const uint32_t b13 = (uint32_t)__sxtab16((int32_t)offset2, (int32_t)qgt__ror(xb, 8));
    a0 = __smlad((int32_t)((a02 & 0xFFFFu) | (b02 << 16)), (int32_t)w[p], a0);
    a1 = __smlad((int32_t)((a13 & 0xFFFFu) | (b13 << 16)), (int32_t)w[stride + p], a1);
    a2 = __smlad((int32_t)((b02 & 0xFFFF0000u) | (a02 >> 16)), (int32_t)w[2 * stride + p], a2);
    a3 = __smlad((int32_t)((b13 & 0xFFFF0000u) | (a13 >> 16)), (int32_t)w[3 * stride + p], a3);
  }
  if (l->taps & 1) {
    const uint32_t x = qgt__load32(base + tap_offsets[l->taps - 1]);
    const int32_t e = __sxtab16((int32_t)offset2, (int32_t)x), o = __sxtab16((int32_t)offset2, (int32_t)qgt__ror(x, 8));
    a0 = __smlabb(e, last[c], a0);
    a1 = __smlabb(o, last[c + 1], a1);
    a2 = __smlatb(e, last[c + 2], a2);
    a3 = __smlatb(o, last[c + 3], a3);
  }
  acc[0] = a0;
  acc[1] = a1;
  acc[2] = a2;
  acc[3] = a3;
}
#endif

static void depthwise_rows(const qgt_conv_params *params, const qgt_quant_params *quant, const qgt_dims *in,
                           const int8_t *input, const qgt_filter *filter, const qgt_dims *out, int8_t *output,
                           void *scratch) {
  const layout l = layout_of(params, in, filter, out);
  uint8_t *bytes = (uint8_t *)scratch;
  qgt_channel *channels = (qgt_channel *)scratch;
  int8_t *ring = (int8_t *)(bytes + l.channels_bytes);
  uint32_t *pairs = (uint32_t *)(void *)(bytes + l.channels_bytes + l.ring_bytes);
  int16_t *last = (int16_t *)(void *)(bytes + l.channels_bytes + l.ring_bytes + l.pairs_bytes);
  const int32_t out_c = out->c, in_c = in->c, multiplier = params->depth_multiplier;
  qgt__expand_channels(filter, quant, channels);
  widen_filter(filter, &l, pairs, last);
#if QGT_DSP
  const int fast = multiplier == 1 && l.taps <= QGT_DW_MAX_TAPS;
  const uint32_t offset2 = (uint32_t)(params->input_offset & 0xFFFF) * 0x00010001u;
  int32_t tap_offsets[QGT_DW_MAX_TAPS];
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
#if QGT_DSP
      if (fast) {
        for (int32_t t = 0; t < l.taps; ++t) {
          const int32_t ky = t / filter->kernel_w, kx = t % filter->kernel_w;
          tap_offsets[t] = (int32_t)((size_t)ring_slot(top + ky * params->dilation.h, l.rows) * l.row_bytes +
                                     (size_t)kx * params->dilation.w * in_c);
        }
      }
#endif
      int8_t *row_out = output + ((size_t)b * out->h + oy) * out->w * out_c;
      for (int32_t ox = 0; ox < out->w; ++ox) {
        const int32_t column = ox * params->stride.w;
        int8_t *pixel_out = row_out + (size_t)ox * out_c;
        int32_t c = 0;
#if QGT_DSP
        if (fast) {
          const int8_t *base = ring + (size_t)column * in_c;
          for (; c + 4 <= out_c; c += 4) {
            int32_t acc[4];
            four_channels(base + c, tap_offsets, &l, pairs, last, c, offset2, acc);
            for (int i = 0; i < 4; ++i) {
              pixel_out[c + i] = qgt__output(acc[i], &channels[c + i], params->output_offset, params->activation);
            }
          }
        }
#endif
        for (; c < out_c; ++c) {
          const int32_t ic = c / multiplier;
          int32_t acc = 0;
          for (int32_t t = 0; t < l.taps; ++t) {
            const int32_t ky = t / filter->kernel_w, kx = t % filter->kernel_w;
            const int8_t *slot = ring + (size_t)ring_slot(top + ky * params->dilation.h, l.rows) * l.row_bytes;
            const int32_t x = slot[(size_t)(column + kx * params->dilation.w) * in_c + ic];
            acc += (x + params->input_offset) * weight_at(&l, pairs, last, c, t);
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
  if (filter->weight_bits != 1 && filter->weight_bits != 2 && filter->weight_bits != 4 && filter->weight_bits != 8) {
    return QGT_ERR_OPTIONS;
  }
  const int64_t taps = (int64_t)filter->kernel_h * filter->kernel_w;
  if (filter->kernel_h <= 0 || filter->kernel_w <= 0 || output_dims->n != input_dims->n ||
      output_dims->c != filter->out_channels || (int64_t)input_dims->c * params->depth_multiplier != output_dims->c ||
      taps * output_dims->c > QGT_INT32_MAX || filter->row_length != taps * output_dims->c ||
      (int64_t)filter->row_bytes * 8 < (int64_t)filter->row_length * filter->weight_bits ||
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

/* CONV_2D and FULLY_CONNECTED over packed rows (a fully connected layer is a 1x1 conv over its input rows).
 *
 * Both paths share one structure: pixels are taken two at a time and their receptive fields copied into
 * scratch as 16-bit values with the input offset added (zero where the window leaves the input), in the
 * lane order that SXTAB16 produces (quad q of the field: words (x[4q], x[4q+2]) and (x[4q+1], x[4q+3]));
 * then output channels are taken two at a time, and each 2 x 2 block of accumulators is a dot product of two
 * packed rows with the two copies, unpacking the fields of each 32-bit weight word in registers. The field
 * order of the packed format (FORMAT.md) puts field j of both half-words against copy word j. On the DSP
 * path a pair of fields is one AND of the rotated word (1, 2, 4 bits; the codes are read as unsigned with the
 * sign bit flipped, c + 2^(bits-1), and 2^(bits-1) times the pixel's sum of copied values is subtracted once)
 * or one SXTB16 (8 bits), and SMLAD does two multiply-accumulates.
 */
#include "qgt_internal.h"

/* Halfword index of field value k in the copy: quad k/4, lane order (0, 2, 1, 3). */
static inline int32_t copy_index(int32_t k) { return 4 * (k >> 2) + (((k & 1) << 1) | ((k & 2) >> 1)); }

static inline int32_t quads_of(int32_t length) { return (length + 3) / 4; }

static size_t copy_bytes(const qgt_filter *filter) { return (size_t)8 * (size_t)quads_of(filter->row_length); }

static size_t conv_scratch_size(const qgt_filter *filter) {
  return qgt__align4(qgt__channels_bytes(filter->out_channels)) + 2u * copy_bytes(filter);
}

/* Copies the receptive field of output pixel `pixel` (batch-major raster order) into `copy`; returns the sum
 * of the copied values. */
static int32_t copy_field(const qgt_conv_params *params, const qgt_dims *input_dims, const int8_t *input,
                          const qgt_filter *filter, const qgt_dims *output_dims, int32_t pixel, int16_t *copy) {
  const int32_t out_w = output_dims->w, out_h = output_dims->h, in_c = input_dims->c;
  const int32_t batch = pixel / (out_h * out_w), oy = pixel / out_w % out_h, ox = pixel % out_w;
  const int32_t y0 = oy * params->stride.h - params->padding.h, x0 = ox * params->stride.w - params->padding.w;
  const int32_t quads = quads_of(filter->row_length);
  const int8_t *image = input + (size_t)batch * input_dims->h * input_dims->w * in_c;
  int32_t sum = 0, k = 0;
  for (int32_t ky = 0; ky < filter->kernel_h; ++ky) {
    const int32_t y = y0 + ky * params->dilation.h;
    for (int32_t kx = 0; kx < filter->kernel_w; ++kx) {
      const int32_t x = x0 + kx * params->dilation.w;
      const int inside = y >= 0 && y < input_dims->h && x >= 0 && x < input_dims->w;
      const int8_t *source = image + ((size_t)y * input_dims->w + x) * in_c;
      int32_t ic = 0;
#if QGT_DSP
      if ((k & 3) == 0 && inside) { /* whole quads straight from input words */
        const uint32_t offset = (uint32_t)(params->input_offset & 0xFFFF) * 0x00010001u;
        uint32_t *words = (uint32_t *)(void *)(copy + k);
        for (; ic + 4 <= in_c; ic += 4) {
          const uint32_t x4 = qgt__load32(source + ic);
          const uint32_t even = __sxtab16(offset, x4), odd = __sxtab16(offset, qgt__ror(x4, 8));
          words[0] = even;
          words[1] = odd;
          words += 2;
          sum = __smlad(even, 0x00010001u, sum);
          sum = __smlad(odd, 0x00010001u, sum);
        }
        k += ic;
      }
#endif
      for (; ic < in_c; ++ic, ++k) {
        const int32_t value = inside ? source[ic] + params->input_offset : 0;
        copy[copy_index(k)] = (int16_t)value;
        sum += value;
      }
    }
  }
  for (; k < 4 * quads; ++k) copy[copy_index(k)] = 0;
  return sum;
}

#if QGT_DSP
/* acc[2*r + p] += row r . copy p over `quads` quads (DSP path). */
#define QGT_DOT_UNSIGNED(name, BITS, FLIP)                                                                 \
  static void name(const uint8_t *r0, const uint8_t *r1, const uint32_t *c0, const uint32_t *c1,           \
                   int32_t quads, int32_t acc[4]) {                                                        \
    const uint32_t mask = ((1u << BITS) - 1u) * 0x00010001u;                                               \
    enum { QUADS = 8 / BITS };                                                                             \
    int32_t a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3];                                        \
    for (; quads >= QUADS; quads -= QUADS) {                                                               \
      const uint32_t w0 = qgt__load32(r0) ^ (FLIP), w1 = qgt__load32(r1) ^ (FLIP);                         \
      r0 += 4;                                                                                             \
      r1 += 4;                                                                                             \
      for (int j = 0; j < 2 * QUADS; ++j) {                                                                \
        const uint32_t x0 = c0[j], x1 = c1[j];                                                             \
        const uint32_t l0 = qgt__ror(w0, BITS * j) & mask;                                                    \
        a00 = __smlad(l0, x0, a00);                                                                        \
        a01 = __smlad(l0, x1, a01);                                                                        \
        const uint32_t l1 = qgt__ror(w1, BITS * j) & mask;                                                    \
        a10 = __smlad(l1, x0, a10);                                                                        \
        a11 = __smlad(l1, x1, a11);                                                                        \
      }                                                                                                    \
      c0 += 2 * QUADS;                                                                                     \
      c1 += 2 * QUADS;                                                                                     \
    }                                                                                                      \
    if (quads > 0) {                                                                                       \
      const uint32_t w0 = qgt__load32(r0) ^ (FLIP), w1 = qgt__load32(r1) ^ (FLIP);                         \
      for (int j = 0; j < 2 * quads; ++j) {                                                                \
        const uint32_t x0 = c0[j], x1 = c1[j];                                                             \
        const uint32_t l0 = qgt__ror(w0, BITS * j) & mask, l1 = qgt__ror(w1, BITS * j) & mask;                   \
        a00 = __smlad(l0, x0, a00);                                                                        \
        a01 = __smlad(l0, x1, a01);                                                                        \
        a10 = __smlad(l1, x0, a10);                                                                        \
        a11 = __smlad(l1, x1, a11);                                                                        \
      }                                                                                                    \
    }                                                                                                      \
    acc[0] = a00;                                                                                          \
    acc[1] = a01;                                                                                          \
    acc[2] = a10;                                                                                          \
    acc[3] = a11;                                                                                          \
  }

QGT_DOT_UNSIGNED(dot_1bit, 1, 0u)
QGT_DOT_UNSIGNED(dot_2bit, 2, 0xAAAAAAAAu)
QGT_DOT_UNSIGNED(dot_4bit, 4, 0x88888888u)

static void dot_8bit(const uint8_t *r0, const uint8_t *r1, const uint32_t *c0, const uint32_t *c1, int32_t quads,
                     int32_t acc[4]) {
  int32_t a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3];
  for (; quads > 0; --quads) {
    const uint32_t w0 = qgt__load32(r0), w1 = qgt__load32(r1);
    const uint32_t x0e = c0[0], x0o = c0[1], x1e = c1[0], x1o = c1[1];
    const uint32_t e0 = __sxtb16(w0), o0 = __sxtb16(qgt__ror(w0, 8));
    const uint32_t e1 = __sxtb16(w1), o1 = __sxtb16(qgt__ror(w1, 8));
    r0 += 4;
    r1 += 4;
    c0 += 2;
    c1 += 2;
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
#endif

/* The 2 x 2 block of accumulators of rows (r0, r1) and copies (c0, c1) with sums (s0, s1). */
static void dot_block(const qgt_filter *filter, const uint8_t *r0, const uint8_t *r1, const int16_t *c0,
                      const int16_t *c1, int32_t s0, int32_t s1, int32_t acc[4]) {
  const int32_t quads = quads_of(filter->row_length);
  acc[0] = acc[1] = acc[2] = acc[3] = 0;
#if QGT_DSP
  const uint32_t *w0 = (const uint32_t *)(const void *)c0, *w1 = (const uint32_t *)(const void *)c1;
  int32_t raw_scale = 1, sum_scale = 0; /* acc = raw_scale * raw - sum_scale * sum */
  switch (filter->weight_bits) {
    case 1: dot_1bit(r0, r1, w0, w1, quads, acc); raw_scale = 2; sum_scale = 1; break;
    case 2: dot_2bit(r0, r1, w0, w1, quads, acc); sum_scale = 2; break;
    case 4: dot_4bit(r0, r1, w0, w1, quads, acc); sum_scale = 8; break;
    default: dot_8bit(r0, r1, w0, w1, quads, acc); break;
  }
  /* the raw sums may wrap in int32 while the true accumulators do not: correct them modulo 2^32 */
  acc[0] = (int32_t)((uint32_t)acc[0] * (uint32_t)raw_scale - (uint32_t)(sum_scale * s0));
  acc[1] = (int32_t)((uint32_t)acc[1] * (uint32_t)raw_scale - (uint32_t)(sum_scale * s1));
  acc[2] = (int32_t)((uint32_t)acc[2] * (uint32_t)raw_scale - (uint32_t)(sum_scale * s0));
  acc[3] = (int32_t)((uint32_t)acc[3] * (uint32_t)raw_scale - (uint32_t)(sum_scale * s1));
#else
  const int32_t bits = filter->weight_bits, quads_per_word = 8 / bits;
  (void)s0;
  (void)s1;
  for (int32_t q = 0, t = 0; q < quads; q += quads_per_word, ++t) {
    const uint32_t w0 = qgt__load32(r0 + 4 * t), w1 = qgt__load32(r1 + 4 * t);
    const int32_t copy_words = 2 * qgt__min(quads_per_word, quads - q);
    for (int32_t j = 0; j < copy_words; ++j) { /* field j of both half-words against copy word 2q + j */
      const int32_t halfword = 2 * (2 * q + j);
      for (int32_t h = 0; h < 2; ++h) {
        const int32_t k0 = qgt__field_code(w0, 16 * h + bits * j, bits), k1 = qgt__field_code(w1, 16 * h + bits * j, bits);
        acc[0] += k0 * c0[halfword + h];
        acc[1] += k0 * c1[halfword + h];
        acc[2] += k1 * c0[halfword + h];
        acc[3] += k1 * c1[halfword + h];
      }
    }
  }
#endif
}

/* The shared loop of qgt_conv2d and qgt_fully_connected. */
static void conv_rows(const qgt_conv_params *params, const qgt_quant_params *quant, const qgt_dims *input_dims,
                      const int8_t *input, const qgt_filter *filter, const qgt_dims *output_dims, int8_t *output,
                      void *scratch) {
  qgt_channel *channels = (qgt_channel *)scratch;
  int16_t *copy0 = (int16_t *)(void *)((uint8_t *)scratch + qgt__align4(qgt__channels_bytes(filter->out_channels)));
  int16_t *copy1 = copy0 + 4 * quads_of(filter->row_length);
  const int32_t pixels = output_dims->n * output_dims->h * output_dims->w, out_c = filter->out_channels;
  qgt__expand_channels(filter, quant, channels);
  for (int32_t p = 0; p < pixels; p += 2) {
    const int two = p + 1 < pixels;
    const int32_t s0 = copy_field(params, input_dims, input, filter, output_dims, p, copy0);
    const int32_t s1 = two ? copy_field(params, input_dims, input, filter, output_dims, p + 1, copy1) : s0;
    const int16_t *second = two ? copy1 : copy0;
    int8_t *out0 = output + (size_t)p * out_c, *out1 = out0 + out_c;
    for (int32_t c = 0; c < out_c; c += 2) {
      const int pair = c + 1 < out_c;
      const uint8_t *r0 = filter->weights + (size_t)c * filter->row_bytes;
      const uint8_t *r1 = pair ? r0 + filter->row_bytes : r0;
      int32_t acc[4];
      dot_block(filter, r0, r1, copy0, second, s0, s1, acc);
      out0[c] = qgt__output(acc[0], &channels[c], params->output_offset, params->activation);
      if (pair) out0[c + 1] = qgt__output(acc[2], &channels[c + 1], params->output_offset, params->activation);
      if (two) {
        out1[c] = qgt__output(acc[1], &channels[c], params->output_offset, params->activation);
        if (pair) out1[c + 1] = qgt__output(acc[3], &channels[c + 1], params->output_offset, params->activation);
      }
    }
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
  if (filter->weight_bits != 1 && filter->weight_bits != 2 && filter->weight_bits != 4 && filter->weight_bits != 8) {
    return QGT_ERR_OPTIONS;
  }
  if (filter->out_channels <= 0 || filter->row_length != row_length ||
      (int64_t)filter->row_bytes < 4 * (int64_t)((row_length + 32 / filter->weight_bits - 1) / (32 / filter->weight_bits))) {
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
  status = check_overlap(input, (size_t)qgt__dims_count(input_dims), output, (size_t)qgt__dims_count(output_dims),
                         pointwise, pixels, input_dims->c, output_dims->c);
  if (status == QGT_OK && qgt__overlap(scratch, scratch_bytes, input, (size_t)qgt__dims_count(input_dims))) {
    status = QGT_ERR_SCRATCH;
  }
  if (status == QGT_OK && qgt__overlap(scratch, scratch_bytes, output, (size_t)qgt__dims_count(output_dims))) {
    status = QGT_ERR_SCRATCH;
  }
  if (status != QGT_OK) return status;
  conv_rows(params, quant, input_dims, input, filter, output_dims, output, scratch);
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

/* qgt_layer_parse: a QGT op's custom options and blob, validated (docs/FORMAT.md); the checks the kernels
 * share; the per-channel expansion of the packed parameters. */
#include "qgt_internal.h"

const char *qgt_status_name(qgt_status status) {
  switch (status) {
    case QGT_OK: return "QGT_OK";
    case QGT_ERR_ARGUMENT: return "QGT_ERR_ARGUMENT";
    case QGT_ERR_VERSION: return "QGT_ERR_VERSION";
    case QGT_ERR_FLAGS: return "QGT_ERR_FLAGS";
    case QGT_ERR_OPTIONS: return "QGT_ERR_OPTIONS";
    case QGT_ERR_ACTIVATION: return "QGT_ERR_ACTIVATION";
    case QGT_ERR_BLOB: return "QGT_ERR_BLOB";
    case QGT_ERR_SHAPE: return "QGT_ERR_SHAPE";
    case QGT_ERR_RANGE: return "QGT_ERR_RANGE";
    case QGT_ERR_SCALE: return "QGT_ERR_SCALE";
    case QGT_ERR_SCRATCH: return "QGT_ERR_SCRATCH";
  }
  return "QGT_ERR_UNKNOWN";
}

int32_t qgt__dims_count(const qgt_dims *dims) {
  const int32_t sizes[4] = {dims->n, dims->h, dims->w, dims->c};
  int64_t count = 1;
  for (int i = 0; i < 4; ++i) {
    if (sizes[i] <= 0) return -1;
    count *= sizes[i];
    if (count > QGT_INT32_MAX) return -1;
  }
  return (int32_t)count;
}

qgt_status qgt__check_dims(const qgt_dims *dims) {
  if (dims == NULL) return QGT_ERR_ARGUMENT;
  return qgt__dims_count(dims) < 0 ? QGT_ERR_SHAPE : QGT_OK;
}

int qgt__overlap(const void *a, size_t a_bytes, const void *b, size_t b_bytes) {
  const uintptr_t a0 = (uintptr_t)a, b0 = (uintptr_t)b;
  return a0 < b0 + b_bytes && b0 < a0 + a_bytes;
}

qgt_status qgt__check_offsets(int32_t input_offset, int32_t output_offset, qgt_range activation) {
  if (input_offset < -127 || input_offset > 128 || output_offset < -128 || output_offset > 127) {
    return QGT_ERR_ARGUMENT;
  }
  if (activation.min < -128 || activation.max > 127 || activation.min > activation.max) return QGT_ERR_ARGUMENT;
  return QGT_OK;
}

qgt_status qgt__check_scratch(const void *scratch, size_t scratch_bytes, size_t needed) {
  if (needed == 0) return QGT_OK;
  if (scratch == NULL || ((uintptr_t)scratch & 3u) != 0 || scratch_bytes < needed) return QGT_ERR_SCRATCH;
  return QGT_OK;
}

qgt_status qgt__output_size(int32_t size, int32_t kernel, int32_t stride, int32_t dilation, uint8_t padding,
                            int32_t *output_size, int32_t *leading_padding) {
  const int64_t effective = (int64_t)(kernel - 1) * dilation + 1;
  int64_t out;
  if (size <= 0 || kernel <= 0 || stride <= 0 || dilation <= 0) return QGT_ERR_SHAPE;
  if (padding == QGT_PADDING_SAME) {
    out = ((int64_t)size + stride - 1) / stride;
  } else if (padding == QGT_PADDING_VALID) {
    if (size < effective) return QGT_ERR_SHAPE;
    out = ((int64_t)size - effective) / stride + 1;
  } else {
    return QGT_ERR_OPTIONS;
  }
  const int64_t total = (out - 1) * stride + effective - size;
  *output_size = (int32_t)out;
  *leading_padding = total > 0 ? (int32_t)(total / 2) : 0;
  return QGT_OK;
}

static uint32_t read_u16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }

static int32_t stored_bias(const qgt_filter *filter, int32_t channel) {
  const uint8_t *p = filter->bias + (size_t)channel * filter->bias_bytes;
  if (filter->bias_bytes == 1) return (int8_t)p[0];
  if (filter->bias_bytes == 2) return (int16_t)read_u16(p);
  return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
}

/* bias = stored * 2^s with s = max(0, bias_shift - code / 32) <= 30 (FORMAT.md, "Biases"). */
static int32_t bias_shift_of(const qgt_filter *filter, int32_t channel) {
  const int32_t s = (int32_t)filter->bias_shift - filter->scale_codes[channel] / QGT_SCALE_STEPS;
  return s > 0 ? s : 0;
}

int qgt__expand_channels(const qgt_filter *filter, const qgt_quant_params *quant, int32_t output_offset,
                         qgt_channel *channels) {
  int form = QGT_FAST_RIGHT;
  for (int32_t c = 0; c < filter->out_channels; ++c) {
    const int32_t code = filter->scale_codes[c];
    const int32_t k = code % QGT_SCALE_STEPS;
    int32_t shift = (int32_t)quant->shift[k] + code / QGT_SCALE_STEPS;
    int32_t multiplier = quant->multiplier[k];
    const int32_t bias = stored_bias(filter, c) * (int32_t)(1u << bias_shift_of(filter, c));
    if (shift < -31) { /* QuantizeMultiplier's clamps (FORMAT.md, "Multipliers") */
      multiplier = 0;
      shift = 0;
    } else if (shift > 30) {
      multiplier = QGT_INT32_MAX;
      shift = 30;
    }
    const int32_t left = shift > 0 ? shift : 0, right = shift > 0 ? 0 : -shift;
    /* the fast form (qgt_internal.h): 2 (acc + bias) << left stays below 2^31, zp << right below 2^29 */
    if (QGT_DSP && multiplier != 0 && filter->accumulator_bits + left <= 30 && right <= 22) {
      channels[c].bias = 2 * bias;
      channels[c].multiplier = multiplier;
      channels[c].left = left;
      channels[c].right = right;
      channels[c].round = (right > 0 ? (int32_t)(1u << (right - 1)) : 0) + (int32_t)((uint32_t)output_offset << right);
      channels[c].sign = right > 0 ? -1 : 0;
      if (left > 0 || right == 0) form = form < QGT_FAST ? form : QGT_FAST;
    } else {
      channels[c].bias = bias;
      channels[c].multiplier = multiplier;
      channels[c].left = shift; /* the generic form: TFLite's signed shift */
      channels[c].right = -1;
      channels[c].round = 0;
      channels[c].sign = 0;
      form = QGT_GENERIC;
    }
  }
  return form;
}

int32_t qgt__requantized_generic(int32_t acc, const qgt_channel *channel, int32_t output_offset) {
  const int64_t v = (int64_t)qgt__requantize((int32_t)((uint32_t)acc + (uint32_t)channel->bias), channel->multiplier,
                                             channel->left) + output_offset;
  return v > QGT_INT32_MAX ? QGT_INT32_MAX : v < QGT_INT32_MIN ? QGT_INT32_MIN : (int32_t)v;
}

/* The custom options block (FORMAT.md, "Custom options"), little-endian and unaligned. */
enum {
  OPT_VERSION = 0, OPT_BITS = 1, OPT_BIAS_BYTES = 2, OPT_ACTIVATION = 3, OPT_PADDING = 4, OPT_FLAGS = 5,
  OPT_BIAS_SHIFT = 6, OPT_SCALE_EXPONENT = 7, OPT_STRIDE_W = 8, OPT_STRIDE_H = 9, OPT_DILATION_W = 10,
  OPT_DILATION_H = 11, OPT_DEPTH_MULTIPLIER = 12, OPT_SHAPE = 13
};

static qgt_status parse_options(qgt_op op, const uint8_t *o, qgt_layer *layer, uint32_t shape[4]) {
  const uint8_t bits = o[OPT_BITS], bias_bytes = o[OPT_BIAS_BYTES];
  const int8_t exponent = (int8_t)o[OPT_SCALE_EXPONENT];
  if (o[OPT_VERSION] != QGT_FORMAT_VERSION) return QGT_ERR_VERSION;
  if ((o[OPT_FLAGS] & ~(QGT_FLAG_KEEP_NUM_DIMS | QGT_FLAG_WORD_ROWS)) != 0 || !(o[OPT_FLAGS] & QGT_FLAG_WORD_ROWS)) {
    return QGT_ERR_FLAGS;
  }
  if (!QGT_SUPPORTS_BITS(bits) || (bias_bytes != 1 && bias_bytes != 2 && bias_bytes != 4) ||
      o[OPT_BIAS_SHIFT] > 30 || exponent < -126 || exponent > 120) {
    return QGT_ERR_OPTIONS;
  }
  if (o[OPT_ACTIVATION] > QGT_ACT_RELU6) return QGT_ERR_ACTIVATION;
  for (int i = 0; i < 4; ++i) {
    shape[i] = read_u16(o + OPT_SHAPE + 2 * i);
    if (shape[i] == 0) return QGT_ERR_SHAPE;
  }
  layer->op = op;
  layer->activation = o[OPT_ACTIVATION];
  layer->padding = o[OPT_PADDING];
  layer->keep_num_dims = (o[OPT_FLAGS] & QGT_FLAG_KEEP_NUM_DIMS) ? 1 : 0;
  layer->filter.weight_bits = bits;
  layer->filter.bias_bytes = bias_bytes;
  layer->filter.bias_shift = o[OPT_BIAS_SHIFT];
  layer->filter.scale_exponent = exponent;
  if (op == QGT_OP_FULLY_CONNECTED) {
    int zero = o[OPT_PADDING] == 0 && shape[2] == 1 && shape[3] == 1;
    for (int i = OPT_STRIDE_W; i <= OPT_DEPTH_MULTIPLIER; ++i) zero = zero && o[i] == 0;
    if (!zero) return QGT_ERR_OPTIONS;
    layer->stride.w = layer->stride.h = layer->dilation.w = layer->dilation.h = 1;
    layer->depth_multiplier = 1;
    return QGT_OK;
  }
  if (o[OPT_PADDING] > QGT_PADDING_VALID || layer->keep_num_dims || o[OPT_STRIDE_W] == 0 || o[OPT_STRIDE_H] == 0 ||
      o[OPT_DILATION_W] == 0 || o[OPT_DILATION_H] == 0) {
    return QGT_ERR_OPTIONS;
  }
  layer->stride.w = o[OPT_STRIDE_W];
  layer->stride.h = o[OPT_STRIDE_H];
  layer->dilation.w = o[OPT_DILATION_W];
  layer->dilation.h = o[OPT_DILATION_H];
  if (op == QGT_OP_DEPTHWISE_CONV_2D) {
    if (o[OPT_DEPTH_MULTIPLIER] == 0 || shape[0] != 1 || shape[3] % o[OPT_DEPTH_MULTIPLIER] != 0) {
      return o[OPT_DEPTH_MULTIPLIER] == 0 ? QGT_ERR_OPTIONS : QGT_ERR_SHAPE;
    }
    layer->depth_multiplier = o[OPT_DEPTH_MULTIPLIER];
  } else {
    if (o[OPT_DEPTH_MULTIPLIER] != 0) return QGT_ERR_OPTIONS;
    layer->depth_multiplier = 1;
  }
  return QGT_OK;
}

/* Largest |bias| and the check that every stored bias times its unit is an int32. */
static qgt_status check_biases(const qgt_filter *filter, int64_t *largest) {
  *largest = 0;
  for (int32_t c = 0; c < filter->out_channels; ++c) {
    const int64_t bias = (int64_t)stored_bias(filter, c) * ((int64_t)1 << bias_shift_of(filter, c));
    const int64_t magnitude = bias < 0 ? -bias : bias;
    if (bias < QGT_INT32_MIN || bias > QGT_INT32_MAX) return QGT_ERR_RANGE;
    if (magnitude > *largest) *largest = magnitude;
  }
  return QGT_OK;
}

static uint8_t bits_of(int64_t bound) {
  uint8_t bits = 0;
  while (bits < 63 && ((int64_t)1 << bits) <= bound) ++bits;
  return bits;
}

/* Every channel's worst case 255 * sum(|code|) + |bias| fits int32 (FORMAT.md, "Arithmetic"); its bit length
 * is recorded for the fast requantization. The cheap bound first, the codes only when it fails. */
static qgt_status check_accumulators(qgt_layer *layer, int64_t largest_bias) {
  qgt_filter *f = &layer->filter;
  const int64_t taps = (int64_t)f->kernel_h * f->kernel_w * (layer->op == QGT_OP_DEPTHWISE_CONV_2D ? 1 : f->in_channels);
  const int32_t depthwise = layer->op == QGT_OP_DEPTHWISE_CONV_2D;
  int64_t worst = taps * 255 * ((int64_t)1 << (f->weight_bits - 1)) + largest_bias;
  if (worst > QGT_INT32_MAX) {
    worst = 0;
    for (int32_t c = 0; c < f->out_channels; ++c) {
      const uint8_t *row = f->weights + (size_t)(depthwise ? 0 : c) * (size_t)f->row_bytes;
      int64_t sum = 0;
      for (int64_t t = 0; t < taps; ++t) {
        const int32_t code = qgt__code(row, (int32_t)(depthwise ? t * f->out_channels + c : t), f->weight_bits);
        sum += code < 0 ? -code : code;
      }
      const int64_t bias = (int64_t)stored_bias(f, c) * ((int64_t)1 << bias_shift_of(f, c));
      const int64_t channel_worst = 255 * sum + (bias < 0 ? -bias : bias);
      if (channel_worst > QGT_INT32_MAX) return QGT_ERR_RANGE;
      if (channel_worst > worst) worst = channel_worst;
    }
  }
  f->accumulator_bits = bits_of(worst);
  return QGT_OK;
}

qgt_status qgt_layer_parse(qgt_op op, const uint8_t *options, size_t options_len, const uint8_t *blob,
                           size_t blob_len, qgt_layer *layer) {
  uint32_t shape[4];
  qgt_layer parsed;
  qgt_filter *f = &parsed.filter;
  if (options == NULL || blob == NULL || layer == NULL) return QGT_ERR_ARGUMENT;
  if (op != QGT_OP_CONV_2D && op != QGT_OP_DEPTHWISE_CONV_2D && op != QGT_OP_FULLY_CONNECTED) return QGT_ERR_ARGUMENT;
  if (options_len < 1) return QGT_ERR_OPTIONS;
  if (options[OPT_VERSION] != QGT_FORMAT_VERSION) return QGT_ERR_VERSION;
  if (options_len != QGT_OPTIONS_BYTES) return QGT_ERR_OPTIONS;
  qgt_status status = parse_options(op, options, &parsed, shape);
  if (status != QGT_OK) return status;

  /* rows of whole words: conv [out, kh, kw, in], fc [out, in, 1, 1]: one row per output channel;
   * depthwise [1, kh, kw, C]: one row */
  const uint64_t per_word = 32u / f->weight_bits;
  const uint64_t row_length = (uint64_t)shape[1] * shape[2] * shape[3];
  const uint64_t channels = op == QGT_OP_DEPTHWISE_CONV_2D ? shape[3] : shape[0];
  const uint64_t rows = op == QGT_OP_DEPTHWISE_CONV_2D ? 1u : shape[0];
  const uint64_t row_bytes = 4u * ((row_length + per_word - 1u) / per_word);
  const uint64_t weight_bytes = rows * row_bytes;
  const uint64_t total = weight_bytes + channels * (f->bias_bytes + 1u);
  if (row_bytes > QGT_INT32_MAX || total > QGT_INT32_MAX) return QGT_ERR_SHAPE;
  if ((uintptr_t)blob % 4u != 0 || (uint64_t)blob_len != total) return QGT_ERR_BLOB;

  f->weights = blob;
  f->bias = blob + weight_bytes;
  f->scale_codes = blob + weight_bytes + channels * f->bias_bytes;
  f->out_channels = (int32_t)channels;
  if (op == QGT_OP_FULLY_CONNECTED) {
    f->kernel_h = f->kernel_w = 1;
    f->in_channels = (int32_t)shape[1];
  } else {
    f->kernel_h = (int32_t)shape[1];
    f->kernel_w = (int32_t)shape[2];
    f->in_channels = op == QGT_OP_DEPTHWISE_CONV_2D ? (int32_t)(shape[3] / parsed.depth_multiplier) : (int32_t)shape[3];
  }
  f->row_length = (int32_t)row_length;
  f->row_bytes = (int32_t)row_bytes;

  int64_t largest_bias;
  status = check_biases(f, &largest_bias);
  if (status == QGT_OK) status = check_accumulators(&parsed, largest_bias);
  if (status != QGT_OK) return status;
  *layer = parsed;
  return QGT_OK;
}

/* Scale arithmetic with integers only (docs/FORMAT.md, "Multipliers"): float32 bit patterns decoded into
 * mantissa and exponent, quotients rounded exactly as double or float32 division would round them, the
 * 32-entry multiplier table of a layer and the clamp range of a fused activation. */
#include "qgt_internal.h"

/* The float32 nearest to 2^(k/32), k = 0..31 (tflm_export.requant.SCALE_MANTISSAS). */
static const uint32_t kScaleMantissaBits[QGT_SCALE_STEPS] = {
    0x3F800000u, 0x3F82CD87u, 0x3F85AAC3u, 0x3F88980Fu, 0x3F8B95C2u, 0x3F8EA43Au, 0x3F91C3D3u, 0x3F94F4F0u,
    0x3F9837F0u, 0x3F9B8D3Au, 0x3F9EF532u, 0x3FA27043u, 0x3FA5FED7u, 0x3FA9A15Bu, 0x3FAD583Fu, 0x3FB123F6u,
    0x3FB504F3u, 0x3FB8FBAFu, 0x3FBD08A4u, 0x3FC12C4Du, 0x3FC5672Au, 0x3FC9B9BEu, 0x3FCE248Cu, 0x3FD2A81Eu,
    0x3FD744FDu, 0x3FDBFBB8u, 0x3FE0CCDFu, 0x3FE5B907u, 0x3FEAC0C7u, 0x3FEFE4BAu, 0x3FF5257Du, 0x3FFA83B3u};

QGT_COLD uint32_t qgt_scale_mantissa_bits(int32_t k) {
  return k >= 0 && k < QGT_SCALE_STEPS ? kScaleMantissaBits[k] : 0u;
}

QGT_COLD qgt_status qgt__float_parts(uint32_t bits, uint32_t *mantissa, int32_t *exponent) {
  const uint32_t field = (bits >> 23) & 0xFFu, fraction = bits & 0x7FFFFFu;
  if ((bits >> 31) != 0 || field == 0xFFu || (field == 0 && fraction == 0)) return QGT_ERR_SCALE;
  if (field != 0) {
    *mantissa = fraction | 0x800000u;
    *exponent = (int32_t)field - 150;
    return QGT_OK;
  }
  uint32_t m = fraction; /* subnormal: normalize */
  int32_t e = -149;
  while (m < 0x800000u) {
    m <<= 1;
    --e;
  }
  *mantissa = m;
  *exponent = e;
  return QGT_OK;
}

QGT_COLD static int32_t bit_length(uint64_t x) {
  int32_t n = 0;
  while (x != 0) {
    x >>= 1;
    ++n;
  }
  return n;
}

/* numerator / denominator rounded to `digits` significant bits, ties to even: m * 2^*exponent with
 * 2^(digits-1) <= m < 2^digits. Needs 2^46 <= numerator < 2^48, 2^23 <= denominator < 2^24, digits <= 53. */
QGT_COLD static uint64_t round_quotient(uint64_t numerator, uint64_t denominator, int32_t digits, int32_t *exponent) {
  const uint64_t high = numerator / denominator, remainder = numerator % denominator;
  const uint64_t low = (remainder << 32) / denominator;
  const int sticky = (remainder << 32) % denominator != 0;
  const uint64_t quotient = high << 32 | low; /* numerator / denominator = (quotient + fraction) * 2^-32 */
  int32_t drop = bit_length(quotient) - digits;
  uint64_t mantissa = quotient >> drop;
  const uint64_t rest = quotient & (((uint64_t)1 << drop) - 1u), half = (uint64_t)1 << (drop - 1);
  if (rest > half || (rest == half && (sticky || (mantissa & 1u)))) {
    ++mantissa;
    if (mantissa == (uint64_t)1 << digits) {
      mantissa >>= 1;
      ++drop;
    }
  }
  *exponent = drop - 32;
  return mantissa;
}

QGT_COLD
qgt_status qgt_quant_params_init(const qgt_filter *filter, uint32_t input_scale_bits, uint32_t output_scale_bits,
                                 qgt_quant_params *quant) {
  uint32_t input_m, output_m;
  int32_t input_e, output_e;
  if (filter == NULL || quant == NULL) return QGT_ERR_ARGUMENT;
  if (filter->scale_exponent < -126 || filter->scale_exponent > 120) return QGT_ERR_OPTIONS;
  if (qgt__float_parts(input_scale_bits, &input_m, &input_e) != QGT_OK ||
      qgt__float_parts(output_scale_bits, &output_m, &output_e) != QGT_OK) {
    return QGT_ERR_SCALE;
  }
  for (int32_t k = 0; k < QGT_SCALE_STEPS; ++k) {
    uint32_t weight_m;
    int32_t weight_e, e53;
    (void)qgt__float_parts(kScaleMantissaBits[k], &weight_m, &weight_e);
    /* input * weight is exact in double; the division rounds to 53 bits; std::round(frexp fraction * 2^31)
     * rounds that to 31 bits, half away from zero */
    const uint64_t m53 = round_quotient((uint64_t)input_m * weight_m, output_m, 53, &e53);
    uint64_t fixed = (m53 + ((uint64_t)1 << 21)) >> 22;
    int32_t shift = 53 + e53 + input_e + weight_e + filter->scale_exponent - output_e;
    if (fixed == (uint64_t)1 << 31) {
      fixed >>= 1;
      ++shift;
    }
    quant->multiplier[k] = (int32_t)fixed;
    quant->shift[k] = (int16_t)shift;
  }
  return QGT_OK;
}

/* TFLite's Quantize(): zero_point + round_half_away(float32(value / scale)) for value in {1, 6}, negated for
 * -1; QGT_ERR_SCALE where TFLite's overflow check fails (beyond 2^31). */
QGT_COLD static qgt_status quantize_value(int32_t value, uint32_t scale_bits, int32_t zero_point, int64_t *q) {
  uint32_t value_m, scale_m;
  int32_t value_e, scale_e, e24;
  const uint32_t magnitude = (uint32_t)(value < 0 ? -value : value);
  const uint32_t value_bits = magnitude == 1 ? 0x3F800000u : 0x40C00000u; /* 1.0f, 6.0f */
  (void)qgt__float_parts(value_bits, &value_m, &value_e);
  if (qgt__float_parts(scale_bits, &scale_m, &scale_e) != QGT_OK) return QGT_ERR_SCALE;
  const uint64_t m24 = round_quotient((uint64_t)value_m << 23, scale_m, 24, &e24);
  const int32_t exponent = e24 - 23 + value_e - scale_e; /* float32 quotient = m24 * 2^exponent */
  int64_t rounded;
  if (exponent >= 0) {
    if (exponent > 8) return QGT_ERR_SCALE; /* >= 2^31 */
    rounded = (int64_t)(m24 << exponent);
    if (rounded > ((int64_t)1 << 31)) return QGT_ERR_SCALE;
  } else if (exponent < -25) {
    rounded = 0; /* below one half */
  } else {
    rounded = (int64_t)((m24 + ((uint64_t)1 << (-exponent - 1))) >> -exponent);
  }
  *q = zero_point + (value < 0 ? -rounded : rounded);
  return QGT_OK;
}

QGT_COLD qgt_status qgt_activation_range(uint8_t activation, qgt_tensor_quant output, qgt_range *range) {
  int64_t low = -128, high = 127, q;
  uint32_t m;
  int32_t e;
  if (range == NULL) return QGT_ERR_ARGUMENT;
  if (output.zero_point < -128 || output.zero_point > 127) return QGT_ERR_ARGUMENT;
  if (qgt__float_parts(output.scale_bits, &m, &e) != QGT_OK) return QGT_ERR_SCALE;
  qgt_status status = QGT_OK;
  switch (activation) {
    case QGT_ACT_NONE: break;
    case QGT_ACT_RELU: low = output.zero_point > low ? output.zero_point : low; break;
    case QGT_ACT_RELU6:
      low = output.zero_point > low ? output.zero_point : low;
      status = quantize_value(6, output.scale_bits, output.zero_point, &q);
      if (status == QGT_OK && q < high) high = q;
      break;
    case QGT_ACT_RELU_N1_TO_1:
      status = quantize_value(-1, output.scale_bits, output.zero_point, &q);
      if (status == QGT_OK && q > low) low = q;
      if (status == QGT_OK) status = quantize_value(1, output.scale_bits, output.zero_point, &q);
      if (status == QGT_OK && q < high) high = q;
      break;
    default: return QGT_ERR_ACTIVATION;
  }
  if (status != QGT_OK) return status;
  range->min = (int32_t)low;
  range->max = (int32_t)high;
  return QGT_OK;
}

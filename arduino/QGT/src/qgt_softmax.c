/* SOFTMAX, int8 -> int8: TFLite's reference quantized softmax bit for bit. Its fixed-point arithmetic
 * (gemmlowp's): input differences in Q5.26, exp() of negative values in Q0.31 from a Taylor polynomial on
 * [-1/4, 0) and a barrel of exp(-2^k) factors, sums in Q12.19, a Newton-Raphson reciprocal. */
#include "qgt_internal.h"

#define kOne_Q0_31 QGT_INT32_MAX /* "1.0" with no integer bits */
#define kMaxDepth 511 /* TFLite's kernel fails once the Q12.19 sum of exps reaches 2^28 (512 ones) */

/* Rounding doubling high multiply, saturating the one overflow (INT32_MIN * INT32_MIN). */
QGT_COLD static int32_t high_mul(int32_t a, int32_t b) {
  if (a == QGT_INT32_MIN && b == QGT_INT32_MIN) return QGT_INT32_MAX;
  return (int32_t)(((int64_t)a * b + ((int64_t)1 << 30)) >> 31);
}

/* Division by 2^exponent rounding half away from zero. */
QGT_COLD static int32_t divide_pot(int32_t x, int32_t exponent) {
  const int32_t mask = (int32_t)((1u << exponent) - 1u);
  const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> exponent) + ((x & mask) > threshold ? 1 : 0);
}

/* Multiplication by 2^exponent, exponent > 0, saturating. */
QGT_COLD static int32_t multiply_pot(int32_t x, int32_t exponent) {
  const int32_t threshold = (int32_t)((1u << (31 - exponent)) - 1u);
  if (x > threshold) return QGT_INT32_MAX;
  if (x < -threshold) return QGT_INT32_MIN;
  return (int32_t)((uint32_t)x << exponent);
}

/* exp(a) for a in [-1/4, 0), Q0.31: Taylor series around -1/8. */
QGT_COLD static int32_t exp_quarter(int32_t a) {
  const int32_t exp_minus_one_eighth = 1895147668, one_third = 715827883;
  const int32_t x = a + (1 << 28); /* a + 1/8 */
  const int32_t x2 = high_mul(x, x), x3 = high_mul(x2, x), x4 = high_mul(x2, x2);
  const int32_t x4_over_4 = divide_pot(x4, 2);
  const int32_t tail = divide_pot(high_mul(x4_over_4 + x3, one_third) + x2, 1); /* x^4/24 + x^3/6 + x^2/2 */
  return exp_minus_one_eighth + high_mul(exp_minus_one_eighth, x + tail);
}

/* exp(a) for a <= 0 in Q5.26, result in Q0.31. */
QGT_COLD static int32_t exp_negative(int32_t a) {
  /* exp(-2^k) in Q0.31 for k = -2 .. 4 */
  static const int32_t kFactors[7] = {1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242};
  const int32_t quarter = 1 << 24, mask = quarter - 1;
  const int32_t a_mod_quarter_minus_quarter = (a & mask) - quarter;
  int32_t result = exp_quarter(multiply_pot(a_mod_quarter_minus_quarter, 5)); /* Q5.26 -> Q0.31 */
  const int32_t remainder = a_mod_quarter_minus_quarter - a;
  for (int32_t k = 0; k < 7; ++k) {
    if (remainder & (1 << (24 + k))) result = high_mul(result, kFactors[k]);
  }
  return a == 0 ? kOne_Q0_31 : result;
}

/* 1 / (1 + x) for x in [0, 1), Q0.31 in and out: three Newton-Raphson steps in Q2.29. */
QGT_COLD static int32_t one_over_one_plus(int32_t x) {
  const int32_t c48_over_17 = 1515870810, c_minus32_over_17 = -1010580540, one_q2_29 = 1 << 29;
  const int64_t sum = (int64_t)x + kOne_Q0_31;
  const int32_t half_denominator = (int32_t)((sum + (sum >= 0 ? 1 : -1)) / 2);
  int32_t estimate = c48_over_17 + high_mul(half_denominator, c_minus32_over_17);
  for (int i = 0; i < 3; ++i) {
    const int32_t error = one_q2_29 - high_mul(half_denominator, estimate);
    estimate += multiply_pot(high_mul(estimate, error), 2);
  }
  return multiply_pot(estimate, 1);
}

QGT_COLD static int32_t leading_zeros(uint32_t x) {
  int32_t n = 0;
  if (x == 0) return 32;
  while (!(x & 0x80000000u)) {
    x <<= 1;
    ++n;
  }
  return n;
}

QGT_COLD
qgt_status qgt_softmax_params_init(uint32_t input_scale_bits, uint32_t beta_bits, qgt_tensor_quant output,
                                   qgt_softmax_params *params) {
  uint32_t beta_m, input_m;
  int32_t beta_e, input_e;
  if (params == NULL) return QGT_ERR_ARGUMENT;
  if (output.scale_bits != 0x3B800000u || output.zero_point != -128) return QGT_ERR_SCALE; /* 1/256, -128 */
  if (qgt__float_parts(beta_bits, &beta_m, &beta_e) != QGT_OK ||
      qgt__float_parts(input_scale_bits, &input_m, &input_e) != QGT_OK) {
    return QGT_ERR_SCALE;
  }
  /* real = beta * input_scale * 2^(31 - 5), exact in double: p * 2^e */
  const uint64_t p = (uint64_t)beta_m * input_m;
  const int32_t e = beta_e + input_e + 26;
  const int32_t length = p >> 47 ? 48 : 47;
  int64_t multiplier;
  int32_t shift;
  if (length + e > 31 || (length + e == 31 && p > ((uint64_t)1 << length) - ((uint64_t)1 << (length - 31)))) {
    multiplier = QGT_INT32_MAX; /* min(real, 2^31 - 1): frexp(2^31 - 1) rounds back to 2^31 - 1, shift 31 */
    shift = 31;
  } else {
    multiplier = (int64_t)((p + ((uint64_t)1 << (length - 32))) >> (length - 31));
    shift = length + e;
    if (multiplier == (int64_t)1 << 31) {
      multiplier >>= 1;
      ++shift;
    }
  }
  if (length + e < 1 || (length + e == 1 && p == (uint64_t)1 << (length - 1))) return QGT_ERR_SCALE; /* real > 1 */
  params->input_multiplier = (int32_t)multiplier;
  params->input_left_shift = shift;
  params->diff_min = -(int32_t)((31u << 26) >> shift); /* -floor(31 * 2^26 / 2^shift) */
  return QGT_OK;
}

qgt_status qgt_softmax(const qgt_softmax_params *params, int32_t rows, int32_t depth, const int8_t *input,
                       int8_t *output) {
  if (params == NULL || input == NULL || output == NULL) return QGT_ERR_ARGUMENT;
  if (rows <= 0 || depth <= 0 || depth > kMaxDepth || (int64_t)rows * depth > QGT_INT32_MAX) return QGT_ERR_SHAPE;
  if (params->input_left_shift < 0 || params->input_left_shift > 31 || params->input_multiplier < 0 ||
      params->diff_min > 0) {
    return QGT_ERR_ARGUMENT;
  }
  for (int32_t r = 0; r < rows; ++r) {
    const int8_t *in = input + (size_t)r * depth;
    int8_t *out = output + (size_t)r * depth;
    int32_t max = -128, sum = 0; /* sum of exps in Q12.19 */
    for (int32_t i = 0; i < depth; ++i) max = qgt__max(max, in[i]);
    for (int32_t i = 0; i < depth; ++i) {
      const int32_t diff = in[i] - max;
      if (diff >= params->diff_min) {
        const int32_t scaled = high_mul((int32_t)((uint32_t)diff << params->input_left_shift), params->input_multiplier);
        sum += divide_pot(exp_negative(scaled), 12);
      }
    }
    const int32_t headroom = leading_zeros((uint32_t)sum); /* sum >= 1.0 in Q12.19: headroom <= 12 */
    const int32_t bits_over_unit = 12 - headroom;
    const int32_t reciprocal = one_over_one_plus((int32_t)(((uint32_t)sum << headroom) - (1u << 31)));
    const int32_t exponent = bits_over_unit + 31 - 8;
    for (int32_t i = 0; i < depth; ++i) {
      const int32_t diff = in[i] - max;
      int32_t value = -128;
      if (diff >= params->diff_min) {
        const int32_t scaled = high_mul((int32_t)((uint32_t)diff << params->input_left_shift), params->input_multiplier);
        value = divide_pot(high_mul(reciprocal, exp_negative(scaled)), exponent) - 128;
        value = qgt__min(qgt__max(value, -128), 127);
      }
      out[i] = (int8_t)value;
    }
  }
  return QGT_OK;
}

/* Person score and decision (qgt_person.h). */
#include "qgt_person.h"

#include <stddef.h>

/* A positive finite float32 bit pattern as mantissa * 2^exponent (mantissa < 2^24), else 0. */
static int float_parts(uint32_t bits, uint64_t *mantissa, int32_t *exponent) {
  const uint32_t field = (bits >> 23) & 0xFFu, fraction = bits & 0x7FFFFFu;
  if ((bits >> 31) != 0 || field == 0xFFu || (field == 0 && fraction == 0)) return 0;
  *mantissa = field != 0 ? (fraction | 0x800000u) : fraction;
  *exponent = field != 0 ? (int32_t)field - 150 : -149;
  return 1;
}

qgt_status qgt_person_init(qgt_person_detector *detector, int32_t classes, int32_t person_index,
                           uint32_t output_scale_bits, int32_t output_zero_point, int32_t on_permille,
                           int32_t off_permille) {
  uint64_t mantissa;
  int32_t exponent;
  if (detector == NULL) return QGT_ERR_ARGUMENT;
  if (classes <= 0 || person_index < 0 || person_index >= classes) return QGT_ERR_SHAPE;
  if (!float_parts(output_scale_bits, &mantissa, &exponent)) return QGT_ERR_SCALE;
  if (output_zero_point < -128 || output_zero_point > 127 || off_permille < 0 || off_permille > on_permille ||
      on_permille > 1000) {
    return QGT_ERR_ARGUMENT;
  }
  detector->classes = classes;
  detector->person_index = person_index;
  detector->scale_bits = output_scale_bits;
  detector->zero_point = output_zero_point;
  detector->on_permille = on_permille;
  detector->off_permille = off_permille;
  detector->present = 0;
  return QGT_OK;
}

qgt_status qgt_person_score(const qgt_person_detector *detector, const int8_t *output, int32_t *permille) {
  uint64_t mantissa;
  int32_t exponent;
  if (detector == NULL || output == NULL || permille == NULL) return QGT_ERR_ARGUMENT;
  if (!float_parts(detector->scale_bits, &mantissa, &exponent)) return QGT_ERR_SCALE;
  const int32_t steps = (int32_t)output[detector->person_index] - detector->zero_point; /* -255 .. 255 */
  if (steps <= 0) {
    *permille = 0;
    return QGT_OK;
  }
  const uint64_t scaled = 1000u * (uint64_t)steps * mantissa; /* < 2^42 */
  uint64_t value;
  if (exponent >= 0) {
    value = 1000u; /* at least 1000 * 2^exponent > 1000 before the clamp */
  } else if (exponent < -43) {
    value = 0u; /* scaled < 2^42 <= half of 2^-exponent */
  } else {
    const int32_t shift = -exponent;
    value = (scaled + ((uint64_t)1 << (shift - 1))) >> shift;
  }
  *permille = value > 1000u ? 1000 : (int32_t)value;
  return QGT_OK;
}

qgt_status qgt_person_update(qgt_person_detector *detector, const int8_t *output, int32_t *permille) {
  int32_t score;
  const qgt_status status = qgt_person_score(detector, output, &score);
  if (status != QGT_OK) return status;
  if (score >= detector->on_permille) {
    detector->present = 1;
  } else if (score < detector->off_permille) {
    detector->present = 0;
  }
  if (permille != NULL) *permille = score;
  return QGT_OK;
}

/* Person score and decision from a classifier's int8 output: the dequantized probability of the person
 * class in thousandths, computed with integers from the output's float32 scale bits, and a decision with
 * hysteresis (on at or above one threshold, off below a lower one, so that a score near the threshold does
 * not make the LED flicker). tflm_export/camera.py holds the same arithmetic for the tests.
 *
 * C99, no allocation, no global state, no floating point; statuses are the kernel library's qgt_status. */
#ifndef QGT_PERSON_H
#define QGT_PERSON_H

#include <stdint.h>

#include "qgt_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int32_t classes;      /* output values per inference */
  int32_t person_index; /* the person class */
  uint32_t scale_bits;  /* output scale, float32 bit pattern */
  int32_t zero_point;   /* output zero point */
  int32_t on_permille;  /* the decision turns on at a score >= on_permille ... */
  int32_t off_permille; /* ... and off at a score < off_permille */
  int32_t present;      /* the current decision: 1 person, 0 none */
} qgt_person_detector;

/* Checks and stores the parameters (0 <= off_permille <= on_permille <= 1000, a positive finite scale,
 * 0 <= person_index < classes, zero point in int8); the decision starts at 0. */
qgt_status qgt_person_init(qgt_person_detector *detector, int32_t classes, int32_t person_index,
                           uint32_t output_scale_bits, int32_t output_zero_point, int32_t on_permille,
                           int32_t off_permille);

/* round(1000 * scale * (output[person_index] - zero_point)), halves up, clamped to 0 .. 1000. */
qgt_status qgt_person_score(const qgt_person_detector *detector, const int8_t *output, int32_t *permille);

/* Scores output and updates the decision; *permille (may be NULL) receives the score. */
qgt_status qgt_person_update(qgt_person_detector *detector, const int8_t *output, int32_t *permille);

#ifdef __cplusplus
}
#endif

#endif /* QGT_PERSON_H */

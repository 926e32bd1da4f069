/* ARG_MAX over the last axis: the first index of the largest value, as TFLite's reference kernel. */
#include "qgt_internal.h"

qgt_status qgt_argmax(int32_t rows, int32_t depth, const int8_t *input, int32_t *output) {
  if (input == NULL || output == NULL) return QGT_ERR_ARGUMENT;
  if (rows <= 0 || depth <= 0 || (int64_t)rows * depth > QGT_INT32_MAX) return QGT_ERR_SHAPE;
  for (int32_t r = 0; r < rows; ++r) {
    const int8_t *row = input + (size_t)r * depth;
    int32_t best = 0;
    for (int32_t i = 1; i < depth; ++i) {
      if (row[i] > row[best]) best = i;
    }
    output[r] = best;
  }
  return QGT_OK;
}

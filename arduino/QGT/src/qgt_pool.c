/* AVERAGE_POOL_2D: TFLite's reference int8 average pooling (the rounded mean of the window's valid values). */
#include "qgt_internal.h"

QGT_COLD
qgt_status qgt_pool_params_init(uint8_t padding, qgt_tile stride, qgt_tile filter, uint8_t activation,
                                const qgt_dims *input_dims, qgt_tensor_quant output, qgt_pool_params *params,
                                qgt_dims *output_dims) {
  qgt_pool_params p;
  qgt_dims out;
  if (params == NULL || output_dims == NULL) return QGT_ERR_ARGUMENT;
  qgt_status status = qgt__check_dims(input_dims);
  if (status != QGT_OK) return status;
  status = qgt__output_size(input_dims->h, filter.h, stride.h, 1, padding, &out.h, &p.padding.h);
  if (status == QGT_OK) status = qgt__output_size(input_dims->w, filter.w, stride.w, 1, padding, &out.w, &p.padding.w);
  if (status == QGT_OK) status = qgt_activation_range(activation, output, &p.activation);
  if (status != QGT_OK) return status;
  out.n = input_dims->n;
  out.c = input_dims->c;
  p.stride = stride;
  p.filter = filter;
  *params = p;
  *output_dims = out;
  return QGT_OK;
}

qgt_status qgt_average_pool2d(const qgt_pool_params *params, const qgt_dims *input_dims, const int8_t *input,
                              const qgt_dims *output_dims, int8_t *output) {
  if (params == NULL || input == NULL || output == NULL) return QGT_ERR_ARGUMENT;
  qgt_status status = qgt__check_dims(input_dims);
  if (status == QGT_OK) status = qgt__check_dims(output_dims);
  if (status != QGT_OK) return status;
  if (output_dims->n != input_dims->n || output_dims->c != input_dims->c) return QGT_ERR_SHAPE;
  if (params->stride.h <= 0 || params->stride.w <= 0 || params->filter.h <= 0 || params->filter.w <= 0 ||
      params->padding.h < 0 || params->padding.w < 0 || params->activation.min < -128 ||
      params->activation.max > 127 || params->activation.min > params->activation.max ||
      (int64_t)params->filter.h * params->filter.w > (1 << 23)) {
    return QGT_ERR_ARGUMENT;
  }
  if (qgt__overlap(input, (size_t)qgt__dims_count(input_dims), output, (size_t)qgt__dims_count(output_dims))) {
    return QGT_ERR_ARGUMENT;
  }
  /* every window must hold a valid input value (TFLite's kernel fails otherwise): check before writing */
  for (int32_t axis = 0; axis < 2; ++axis) {
    const int32_t size = axis ? input_dims->w : input_dims->h, out = axis ? output_dims->w : output_dims->h;
    const int32_t stride = axis ? params->stride.w : params->stride.h, pad = axis ? params->padding.w : params->padding.h;
    const int32_t kernel = axis ? params->filter.w : params->filter.h;
    const int64_t last = (int64_t)(out - 1) * stride - pad;
    if (kernel - pad <= 0 || last >= size) return QGT_ERR_SHAPE;
  }
  const int32_t c = input_dims->c;
  for (int32_t b = 0; b < output_dims->n; ++b) {
    const int8_t *image = input + (size_t)b * input_dims->h * input_dims->w * c;
    for (int32_t oy = 0; oy < output_dims->h; ++oy) {
      const int32_t y0 = oy * params->stride.h - params->padding.h;
      const int32_t ky0 = qgt__max(0, -y0), ky1 = qgt__min(params->filter.h, input_dims->h - y0);
      for (int32_t ox = 0; ox < output_dims->w; ++ox) {
        const int32_t x0 = ox * params->stride.w - params->padding.w;
        const int32_t kx0 = qgt__max(0, -x0), kx1 = qgt__min(params->filter.w, input_dims->w - x0);
        const int32_t count = (ky1 - ky0) * (kx1 - kx0);
        int8_t *pixel = output + (((size_t)b * output_dims->h + oy) * output_dims->w + ox) * c;
        for (int32_t ch = 0; ch < c; ++ch) {
          int32_t acc = 0;
          for (int32_t ky = ky0; ky < ky1; ++ky) {
            const int8_t *row = image + ((size_t)(y0 + ky) * input_dims->w + x0) * c + ch;
            for (int32_t kx = kx0; kx < kx1; ++kx) acc += row[(size_t)kx * c];
          }
          acc = acc > 0 ? (acc + count / 2) / count : (acc - count / 2) / count; /* C division truncates */
          pixel[ch] = (int8_t)qgt__min(qgt__max(acc, params->activation.min), params->activation.max);
        }
      }
    }
  }
  return QGT_OK;
}

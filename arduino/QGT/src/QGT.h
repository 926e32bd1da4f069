/* The QGT library for Arduino: int8 inference with 1/2/4/8-bit packed weights (qgt_kernels.h), camera
 * frames to model inputs (qgt_camera.h), the person score and decision (qgt_person.h) and, in Arduino
 * builds, the board helpers of the person_detection example (qgt_arduino.h). The TensorFlow Lite Micro ops
 * are in qgt_tflm.h, which a sketch includes only with a TFLM library (model_data.h includes it). */
#ifndef QGT_H
#define QGT_H

#include "qgt_camera.h"
#include "qgt_kernels.h"
#include "qgt_person.h"

#if defined(ARDUINO) && defined(__cplusplus)
#include "qgt_arduino.h"
#endif

#endif /* QGT_H */

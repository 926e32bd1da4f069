/* TensorFlow Lite Micro registrations of the QGT custom ops (QGT_CONV_2D, QGT_DEPTHWISE_CONV_2D,
 * QGT_FULLY_CONNECTED; docs/FORMAT.md), for models exported by qgt-export in their packed variant. The
 * model_data.h that qgt-export writes includes this header, and its <NAME>_ADD_OPS(resolver) macro calls
 *
 *   resolver.AddCustom("QGT_CONV_2D", Register_QGT_CONV_2D());
 *
 * Compiled only where TFLM's headers can be found (C++, __has_include) and QGT_NO_TFLM is not defined, so
 * that a sketch using the generated C model builds with no TFLM library installed: then this header and
 * qgt_tflm.cpp declare and define nothing, and QGT_TFLM is 0.
 *
 * Two TFLM APIs, told apart at compile time by the type tflite::micro::RegisterOp returns:
 * TfLiteRegistration with AddCustom(const char*, TfLiteRegistration*) (the Arduino libraries users install:
 * Arduino_TensorFlowLite 2.4.0-ALPHA, Chirale_TensorFlowLite 2.0.0) and TFLMRegistration with
 * AddCustom(const char*, const TFLMRegistration*) (current tflite-micro). Both have MicroContext, which the
 * ops use; the older TFLM of Harvard_TinyMLx lacks it and is not supported (QGT_TFLM stays 0 there). */
#ifndef QGT_TFLM_H
#define QGT_TFLM_H

#if defined(__cplusplus) && defined(__has_include) && !defined(QGT_NO_TFLM)
#if __has_include("tensorflow/lite/micro/micro_context.h") && __has_include("tensorflow/lite/micro/micro_op_resolver.h")
#define QGT_TFLM 1
#endif
#endif
#ifndef QGT_TFLM
#define QGT_TFLM 0
#endif

#if QGT_TFLM
#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/micro/kernels/kernel_util.h"
#include "tensorflow/lite/micro/micro_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

/* TfLiteRegistration or TFLMRegistration: what RegisterOp(init, prepare, invoke) gives in this TFLM. */
using QgtTflmRegistration = decltype(tflite::micro::RegisterOp(
    static_cast<void* (*)(TfLiteContext*, const char*, size_t)>(nullptr),
    static_cast<TfLiteStatus (*)(TfLiteContext*, TfLiteNode*)>(nullptr),
    static_cast<TfLiteStatus (*)(TfLiteContext*, TfLiteNode*)>(nullptr)));

/* Each returns the same static registration on every call. */
QgtTflmRegistration* Register_QGT_CONV_2D();
QgtTflmRegistration* Register_QGT_DEPTHWISE_CONV_2D();
QgtTflmRegistration* Register_QGT_FULLY_CONNECTED();

namespace qgt_tflm {

/* The name of the first op of the model ("QGT_CONV_2D", "AVERAGE_POOL_2D", ...) that the resolver lacks,
 * or nullptr when it has them all: a check before AllocateTensors, whose own message is easy to miss. */
const char* MissingOp(const tflite::Model* model, const tflite::MicroOpResolver& resolver);

/* The message of the last QGT op that failed in Prepare or Eval (also printed with MicroPrintf), "" if
 * none failed: which op, which check, and what to do. */
const char* LastError();

}  // namespace qgt_tflm

#endif /* QGT_TFLM */

#endif /* QGT_TFLM_H */

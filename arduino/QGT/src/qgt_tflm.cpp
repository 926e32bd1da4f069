/* TFLite-Micro glue of the QGT custom ops (qgt_tflm.h): TFLM's kernel pattern, translating into the kernel
 * library and nothing else. Init reserves an OpData in the persistent arena; Prepare checks the tensors,
 * parses the options and blob once (qgt_layer_parse), computes the layer's 32-entry multiplier table from
 * the float32 bit patterns of the tensors' scales (qgt_quant_params_init) and requests the kernel's scratch
 * from the arena; Eval only calls the kernel. */
#include "qgt_tflm.h"

#if QGT_TFLM

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "qgt_kernels.h"
#include "tensorflow/lite/micro/micro_context.h"
#include "tensorflow/lite/micro/micro_log.h"
#include "tensorflow/lite/schema/schema_utils.h"

namespace {

/* What Eval needs, kept small: it lives in the persistent arena for the model's lifetime. */
struct OpData {
  qgt_filter filter; /* views into the blob, a constant tensor of the model */
  qgt_quant_params quant;
  union {
    qgt_conv_params conv; /* conv and depthwise */
    qgt_fc_params fc;     /* fully connected */
  } params;
  qgt_dims input_dims, output_dims;
  uint32_t scratch_bytes;
  int32_t scratch_index; /* -1: the kernel needs no scratch */
};

char last_error[160];

const char* OpName(qgt_op op) {
  switch (op) {
    case QGT_OP_CONV_2D: return "QGT_CONV_2D";
    case QGT_OP_DEPTHWISE_CONV_2D: return "QGT_DEPTHWISE_CONV_2D";
    case QGT_OP_FULLY_CONNECTED: return "QGT_FULLY_CONNECTED";
  }
  return "QGT_?";
}

/* Records and prints "<op>: <what>" and fails the op. */
TfLiteStatus Fail(qgt_op op, const char* what, const char* detail = "") {
  snprintf(last_error, sizeof last_error, "%s: %s%s", OpName(op), what, detail);
  MicroPrintf("%s", last_error);
  return kTfLiteError;
}

/* Fails with the status name, or for a version mismatch the version found (options: the op's custom
 * options, options_bytes of them). */
TfLiteStatus FailStatus(qgt_op op, const char* call, qgt_status status, const uint8_t* options = nullptr,
                        size_t options_bytes = 0) {
  char what[112];
  if (status == QGT_ERR_VERSION && options != nullptr && options_bytes > 0) {
    snprintf(what, sizeof what, "%s: packed format version %u, this library reads %d: re-export the model with "
             "qgt-export", call, static_cast<unsigned>(options[0]), QGT_FORMAT_VERSION);
  } else {
    snprintf(what, sizeof what, "%s: %s", call, qgt_status_name(status));
  }
  return Fail(op, what);
}

uint32_t FloatBits(float value) {
  uint32_t bits;
  memcpy(&bits, &value, sizeof bits);
  return bits;
}

qgt_tensor_quant Quantization(const TfLiteTensor* tensor) {
  return qgt_tensor_quant{FloatBits(tensor->params.scale), tensor->params.zero_point};
}

int32_t ElementCount(const TfLiteIntArray* dims) {
  int64_t count = 1;
  for (int i = 0; i < dims->size; ++i) {
    count *= dims->data[i];
    if (dims->data[i] < 0 || count > INT32_MAX) return -1;
  }
  return static_cast<int32_t>(count);
}

void* Init(TfLiteContext* context, const char* buffer, size_t length) {
  (void)buffer; /* the options are parsed in Prepare, together with the blob */
  (void)length;
  return context->AllocatePersistentBuffer(context, sizeof(OpData));
}

/* Output dims and kernel parameters of the layer for the node's tensors; checks the output shape. */
TfLiteStatus PrepareShapes(qgt_op op, const qgt_layer& layer, OpData* data, const TfLiteTensor* input,
                           const TfLiteTensor* output) {
  const qgt_tensor_quant in_quant = Quantization(input), out_quant = Quantization(output);
  qgt_status status;
  int32_t expected_elements;
  if (op == QGT_OP_FULLY_CONNECTED) {
    status = qgt_fc_params_init(&layer, ElementCount(input->dims), in_quant, out_quant, &data->params.fc,
                                &data->input_dims, &data->output_dims);
    if (status != QGT_OK) return FailStatus(op, "qgt_fc_params_init", status);
    expected_elements = data->output_dims.n * data->output_dims.c;
    const TfLiteIntArray* dims = output->dims;
    if (ElementCount(dims) != expected_elements || dims->size < 1 || dims->data[dims->size - 1] != data->output_dims.c) {
      return Fail(op, "output tensor shape does not match the filter's output channels");
    }
    return kTfLiteOk;
  }
  if (input->dims->size != 4 || output->dims->size != 4) return Fail(op, "input and output must be 4-D (NHWC)");
  const qgt_dims in_dims = {input->dims->data[0], input->dims->data[1], input->dims->data[2], input->dims->data[3]};
  data->input_dims = in_dims;
  status = qgt_conv_params_init(&layer, &data->input_dims, in_quant, out_quant, &data->params.conv,
                                &data->output_dims);
  if (status != QGT_OK) return FailStatus(op, "qgt_conv_params_init", status);
  const qgt_dims& o = data->output_dims;
  if (output->dims->data[0] != o.n || output->dims->data[1] != o.h || output->dims->data[2] != o.w ||
      output->dims->data[3] != o.c) {
    return Fail(op, "output tensor shape differs from the one the filter, strides and padding give");
  }
  return kTfLiteOk;
}

TfLiteStatus PrepareTensors(qgt_op op, TfLiteNode* node, OpData* data, const TfLiteTensor* input,
                            const TfLiteTensor* blob, const TfLiteTensor* output) {
  if (input == nullptr || blob == nullptr || output == nullptr) return Fail(op, "missing input, blob or output tensor");
  if (input->type != kTfLiteInt8 || output->type != kTfLiteInt8) return Fail(op, "input and output must be int8");
  if (blob->type != kTfLiteUInt8 || blob->data.raw == nullptr || blob->allocation_type != kTfLiteMmapRo) {
    return Fail(op, "input 1 must be the constant uint8 blob of a packed model");
  }
  if (!(input->params.scale > 0.0f) || !(output->params.scale > 0.0f)) {
    return Fail(op, "input and output need per-tensor int8 quantization");
  }
  const uint8_t* options = static_cast<const uint8_t*>(node->custom_initial_data);
  qgt_layer layer;
  const qgt_status parsed = qgt_layer_parse(op, options, node->custom_initial_data_size, blob->data.uint8,
                                            blob->bytes, &layer);
  if (parsed != QGT_OK) return FailStatus(op, "qgt_layer_parse", parsed, options, node->custom_initial_data_size);
  data->filter = layer.filter;
  if (PrepareShapes(op, layer, data, input, output) != kTfLiteOk) return kTfLiteError;
  const qgt_status quant = qgt_quant_params_init(&data->filter, FloatBits(input->params.scale),
                                                 FloatBits(output->params.scale), &data->quant);
  if (quant != QGT_OK) return FailStatus(op, "qgt_quant_params_init", quant);
  size_t scratch = 0;
  switch (op) {
    case QGT_OP_CONV_2D:
      scratch = qgt_conv2d_scratch_size(&data->params.conv, &data->input_dims, &data->filter, &data->output_dims);
      break;
    case QGT_OP_DEPTHWISE_CONV_2D:
      scratch = qgt_depthwise_conv2d_scratch_size(&data->params.conv, &data->input_dims, &data->filter,
                                                  &data->output_dims);
      break;
    case QGT_OP_FULLY_CONNECTED:
      scratch = qgt_fully_connected_scratch_size(&data->params.fc, &data->input_dims, &data->filter,
                                                 &data->output_dims);
      break;
  }
  if (scratch > UINT32_MAX) return Fail(op, "scratch buffer over 4 GB");
  data->scratch_bytes = static_cast<uint32_t>(scratch);
  return kTfLiteOk;
}

TfLiteStatus Prepare(TfLiteContext* context, TfLiteNode* node, qgt_op op) {
  OpData* data = static_cast<OpData*>(node->user_data);
  if (data == nullptr) return Fail(op, "no op data (the persistent arena is full)");
  if (node->inputs->size != 2 || node->outputs->size != 1) return Fail(op, "expects inputs [input, blob], 1 output");
  tflite::MicroContext* micro_context = tflite::GetMicroContext(context);
  TfLiteTensor* input = micro_context->AllocateTempInputTensor(node, 0);
  TfLiteTensor* blob = micro_context->AllocateTempInputTensor(node, 1);
  TfLiteTensor* output = micro_context->AllocateTempOutputTensor(node, 0);
  TfLiteStatus status = PrepareTensors(op, node, data, input, blob, output);
  if (input != nullptr) micro_context->DeallocateTempTfLiteTensor(input);
  if (blob != nullptr) micro_context->DeallocateTempTfLiteTensor(blob);
  if (output != nullptr) micro_context->DeallocateTempTfLiteTensor(output);
  if (status != kTfLiteOk) return status;
  int scratch_index = -1;
  if (data->scratch_bytes > 0 &&
      context->RequestScratchBufferInArena(context, data->scratch_bytes, &scratch_index) != kTfLiteOk) {
    return Fail(op, "no room in the arena for the scratch buffer: enlarge the tensor arena");
  }
  data->scratch_index = scratch_index;
  return kTfLiteOk;
}

TfLiteStatus Eval(TfLiteContext* context, TfLiteNode* node, qgt_op op) {
  const OpData* data = static_cast<const OpData*>(node->user_data);
  const int8_t* input = tflite::micro::GetTensorData<int8_t>(tflite::micro::GetEvalInput(context, node, 0));
  int8_t* output = tflite::micro::GetTensorData<int8_t>(tflite::micro::GetEvalOutput(context, node, 0));
  void* scratch = data->scratch_index >= 0 ? context->GetScratchBuffer(context, data->scratch_index) : nullptr;
  qgt_status status = QGT_ERR_ARGUMENT;
  switch (op) {
    case QGT_OP_CONV_2D:
      status = qgt_conv2d(&data->params.conv, &data->quant, &data->input_dims, input, &data->filter,
                          &data->output_dims, output, scratch, data->scratch_bytes);
      break;
    case QGT_OP_DEPTHWISE_CONV_2D:
      status = qgt_depthwise_conv2d(&data->params.conv, &data->quant, &data->input_dims, input, &data->filter,
                                    &data->output_dims, output, scratch, data->scratch_bytes);
      break;
    case QGT_OP_FULLY_CONNECTED:
      status = qgt_fully_connected(&data->params.fc, &data->quant, &data->input_dims, input, &data->filter,
                                   &data->output_dims, output, scratch, data->scratch_bytes);
      break;
  }
  return status == QGT_OK ? kTfLiteOk : FailStatus(op, "kernel", status);
}

template <qgt_op kOp>
TfLiteStatus PrepareOp(TfLiteContext* context, TfLiteNode* node) {
  return Prepare(context, node, kOp);
}

template <qgt_op kOp>
TfLiteStatus EvalOp(TfLiteContext* context, TfLiteNode* node) {
  return Eval(context, node, kOp);
}

template <qgt_op kOp>
QgtTflmRegistration* Registration() {
  static QgtTflmRegistration registration = tflite::micro::RegisterOp(Init, PrepareOp<kOp>, EvalOp<kOp>);
  return &registration;
}

}  // namespace

QgtTflmRegistration* Register_QGT_CONV_2D() { return Registration<QGT_OP_CONV_2D>(); }
QgtTflmRegistration* Register_QGT_DEPTHWISE_CONV_2D() { return Registration<QGT_OP_DEPTHWISE_CONV_2D>(); }
QgtTflmRegistration* Register_QGT_FULLY_CONNECTED() { return Registration<QGT_OP_FULLY_CONNECTED>(); }

namespace qgt_tflm {

const char* MissingOp(const tflite::Model* model, const tflite::MicroOpResolver& resolver) {
  if (model == nullptr || model->operator_codes() == nullptr) return "(no operator codes: not a TFLite model)";
  for (const tflite::OperatorCode* code : *model->operator_codes()) {
    const tflite::BuiltinOperator builtin = tflite::GetBuiltinCode(code);
    if (builtin == tflite::BuiltinOperator_CUSTOM) {
      const char* name = code->custom_code() != nullptr ? code->custom_code()->c_str() : "(unnamed custom op)";
      if (resolver.FindOp(name) == nullptr) return name;
    } else if (resolver.FindOp(builtin) == nullptr) {
      return tflite::EnumNameBuiltinOperator(builtin);
    }
  }
  return nullptr;
}

const char* LastError() { return last_error; }

}  // namespace qgt_tflm

#endif /* QGT_TFLM */

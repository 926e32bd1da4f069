/* Person detection on the Arduino Nano 33 BLE Sense (Rev1 or Rev2) with the OV7675 camera of the Tiny
 * Machine Learning Kit: the project's 2-bit MobileNetV1-0.25 (96x96 RGB) on every camera frame, the person
 * score on the serial monitor (115200 baud) and on the RGB LED (green: person, red: none), with the
 * inference time. Steps, expectations and troubleshooting: the library's README.md. */

/* The runtime, chosen here:
 *   0  the generated C model beside this sketch (qgt_model.c): no other library needed (the default)
 *   1  TensorFlow Lite Micro from the Arduino_TensorFlowLite library, with the QGT custom ops (model_data.cc)
 *   2  the same from the Chirale_TensorFlowLite library */
#define RUNTIME 0

#include <Arduino_OV767X.h>
#include <QGT.h>

#include "qgt_model.h" /* the model's shapes, quantization and pixel table; RUNTIME 0 also runs it */

#if RUNTIME == 1
#include <TensorFlowLite.h>
#elif RUNTIME == 2
#include <Chirale_TensorFlowLite.h>
#endif
#if RUNTIME != 0
#include "model_data.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"
#endif

/* RGB565 (2 bytes per pixel) or GRAYSCALE (1 byte: half the frame memory; an RGB model then sees gray). */
constexpr int kFrameFormat = RGB565;
constexpr int kFramesPerSecond = 1; /* Arduino_OV767X runs the Nano 33 BLE at 1 or 5 */
constexpr int32_t kPersonOn = 600, kPersonOff = 400; /* score thresholds in thousandths (hysteresis) */

constexpr int kFrameWidth = 176, kFrameHeight = 144; /* QCIF */
static uint8_t frame[kFrameWidth * kFrameHeight * (kFrameFormat == RGB565 ? 2 : 1)];
static qgt_person_detector detector;
static int8_t output[PERSON_MODEL_OUTPUT_BYTES];

#if RUNTIME == 0

static void beginModel() {}

static int8_t* modelInput() { return person_model_input(); }

static void invokeModel() {
  const int status = person_model_invoke(person_model_input(), output);
  if (status != QGT_OK) qgt::halt("person_model_invoke failed: ", person_model_status_name(status));
}

#else

static tflite::MicroMutableOpResolver<person_packed_model::kOpCount> resolver;
alignas(16) static uint8_t arena[person_packed_model::kArenaSize];
static tflite::MicroInterpreter* interpreter = nullptr;

static void beginModel() {
  const tflite::Model* model = tflite::GetModel(person_packed_model::kData);
  if (model->version() != TFLITE_SCHEMA_VERSION) qgt::halt("model_data.cc: not a TFLite schema 3 model");
  PERSON_PACKED_MODEL_ADD_OPS(resolver);
  if (const char* op = qgt_tflm::MissingOp(model, resolver)) qgt::halt("the op resolver lacks the model's op ", op);
  static tflite::MicroInterpreter tflm(model, resolver, arena, sizeof arena);
  if (tflm.AllocateTensors() != kTfLiteOk) {
    qgt::halt("AllocateTensors failed: ", *qgt_tflm::LastError() ? qgt_tflm::LastError()
              : "the tensor arena (kArenaSize in model_data.h) is too small; TFLM's message above says by how much");
  }
  interpreter = &tflm;
}

static int8_t* modelInput() { return interpreter->input(0)->data.int8; }

static void invokeModel() {
  if (interpreter->Invoke() != kTfLiteOk) qgt::halt("Invoke failed: ", qgt_tflm::LastError());
  memcpy(output, interpreter->output(0)->data.int8, sizeof output);
}

#endif

void setup() {
  qgt::beginSerial(115200, 5000);
  qgt::showPerson(false);
  const float output_scale = PERSON_MODEL_OUTPUT_SCALE;
  uint32_t output_scale_bits; /* the library takes scales as float32 bit patterns */
  memcpy(&output_scale_bits, &output_scale, sizeof output_scale_bits);
  const qgt_status status = qgt_person_init(&detector, PERSON_MODEL_OUTPUT_BYTES, PERSON_MODEL_PERSON_INDEX,
                                            output_scale_bits, PERSON_MODEL_OUTPUT_ZERO_POINT, kPersonOn, kPersonOff);
  if (status != QGT_OK) qgt::halt("qgt_person_init: ", qgt_status_name(status));
  beginModel();
  if (!Camera.begin(QCIF, kFrameFormat, kFramesPerSecond, OV7675)) {
    qgt::halt("the OV7675 camera did not start: check that the camera module and the board sit fully in the "
              "shield, then unplug and replug the USB cable (README, Troubleshooting)");
  }
  Serial.println("person_detection: camera and model ready");
}

void loop() {
  const uint32_t frame_start = micros();
  Camera.readFrame(frame);
  const qgt_frame image = {frame, kFrameWidth, kFrameHeight, kFrameFormat == RGB565 ? QGT_FRAME_RGB565 : QGT_FRAME_GRAY8};
  const qgt_dims input_dims = {1, PERSON_MODEL_INPUT_H, PERSON_MODEL_INPUT_W, PERSON_MODEL_INPUT_C};
  const qgt_status converted = qgt_camera_to_input(&image, person_model_pixel_to_input, &input_dims, modelInput());
  if (converted != QGT_OK) qgt::halt("qgt_camera_to_input: ", qgt_status_name(converted));

  const uint32_t inference_start = micros();
  invokeModel();
  const uint32_t inference_us = micros() - inference_start;

  int32_t score;
  qgt_person_update(&detector, output, &score);
  qgt::showPerson(detector.present);
  qgt::report(score, detector.present, inference_us, micros() - frame_start);
}

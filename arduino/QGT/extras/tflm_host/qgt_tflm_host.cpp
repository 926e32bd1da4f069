/* A host program that runs a .tflite in TensorFlow Lite Micro with the QGT custom ops registered
 * (src/qgt_tflm.h) next to the builtin ops a MobileNet needs: the check of the TFLM glue against a real
 * TFLM (issue 8). Not part of the Arduino library build (extras/ is not compiled); it is linked with a TFLM
 * host library (libtensorflow-microlite.a) and the QGT sources, compiled with the TFLM library's flags.
 *
 *   qgt_tflm_host MODEL.tflite INPUTS.bin OUTPUTS.bin
 *
 * INPUTS.bin holds int8 inputs back to back (a whole number of the model's input size); OUTPUTS.bin gets
 * the int8 outputs back to back. Prints the recording allocator's arena report (the figure the tflite_micro
 * Python runtime prints as "Arena allocation total"), arena_used_bytes() and the smallest arena size
 * (multiple of 16 B) with which AllocateTensors succeeds. Exit status 0 when every invoke succeeded.
 * Arduino_TensorFlowLite 2.4.0-ALPHA crashes during that search (its AllocateTensors does not check one
 * allocation when the arena is a few bytes short); everything before it is written and flushed first. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

#include "qgt_tflm.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_log.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/micro/recording_micro_interpreter.h"
#include "tensorflow/lite/schema/schema_generated.h"

#if !QGT_TFLM
#error "TFLM headers not found: compile with the TFLM include paths"
#endif

namespace {

constexpr size_t kMaxArena = 4 << 20;

using Resolver = tflite::MicroMutableOpResolver<9>;

void AddOps(Resolver& resolver) {
  resolver.AddCustom("QGT_CONV_2D", Register_QGT_CONV_2D());
  resolver.AddCustom("QGT_DEPTHWISE_CONV_2D", Register_QGT_DEPTHWISE_CONV_2D());
  resolver.AddCustom("QGT_FULLY_CONNECTED", Register_QGT_FULLY_CONNECTED());
  resolver.AddConv2D();
  resolver.AddDepthwiseConv2D();
  resolver.AddFullyConnected();
  resolver.AddAveragePool2D();
  resolver.AddReshape();
  resolver.AddSoftmax();
}

std::vector<unsigned char> ReadFile(const char* path) {
  std::vector<unsigned char> data;
  FILE* f = fopen(path, "rb");
  if (f == nullptr) {
    fprintf(stderr, "cannot open %s\n", path);
    exit(2);
  }
  unsigned char buffer[65536];
  size_t n;
  while ((n = fread(buffer, 1, sizeof buffer, f)) > 0) data.insert(data.end(), buffer, buffer + n);
  fclose(f);
  return data;
}

bool Allocates(const tflite::Model* model, const Resolver& resolver, uint8_t* arena, size_t bytes) {
  tflite::MicroInterpreter interpreter(model, resolver, arena, bytes);
  return interpreter.AllocateTensors() == kTfLiteOk;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s MODEL.tflite INPUTS.bin OUTPUTS.bin\n", argv[0]);
    return 2;
  }
  // 16-byte aligned copy: TFLM reads tensor data in place from the flatbuffer.
  const std::vector<unsigned char> file = ReadFile(argv[1]);
  std::vector<uint64_t> aligned((file.size() + 15) / 8 + 2);
  unsigned char* model_data = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(aligned.data()) + 15) & ~static_cast<uintptr_t>(15));
  memcpy(model_data, file.data(), file.size());
  const tflite::Model* model = tflite::GetModel(model_data);

  Resolver resolver;
  AddOps(resolver);
  if (const char* missing = qgt_tflm::MissingOp(model, resolver)) {
    fprintf(stderr, "the resolver lacks op %s\n", missing);
    return 3;
  }
  std::vector<uint8_t> arena_buffer(kMaxArena + 16);
  uint8_t* arena = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(arena_buffer.data()) + 15) & ~static_cast<uintptr_t>(15));

  tflite::RecordingMicroInterpreter interpreter(model, resolver, arena, kMaxArena);
  if (interpreter.AllocateTensors() != kTfLiteOk) {
    fprintf(stderr, "AllocateTensors failed: %s\n", qgt_tflm::LastError());
    return 4;
  }
  interpreter.GetMicroAllocator().PrintAllocations();
  printf("arena_used_bytes %zu\n", interpreter.arena_used_bytes());

  TfLiteTensor* input = interpreter.input(0);
  TfLiteTensor* output = interpreter.output(0);
  const std::vector<unsigned char> inputs = ReadFile(argv[2]);
  if (inputs.size() % input->bytes != 0) {
    fprintf(stderr, "%s: %zu bytes, not a multiple of the input's %zu\n", argv[2], inputs.size(), input->bytes);
    return 2;
  }
  FILE* out = fopen(argv[3], "wb");
  if (out == nullptr) return 2;
  const size_t count = inputs.size() / input->bytes;
  for (size_t i = 0; i < count; ++i) {
    memcpy(input->data.int8, inputs.data() + i * input->bytes, input->bytes);
    if (interpreter.Invoke() != kTfLiteOk) {
      fprintf(stderr, "Invoke %zu failed: %s\n", i, qgt_tflm::LastError());
      return 5;
    }
    fwrite(output->data.int8, 1, output->bytes, out);
  }
  fclose(out);
  printf("invokes %zu\n", count);
  fflush(stdout);

  // The smallest arena that works, by bisection on multiples of 16 B (interpreter above left as it was).
  std::vector<uint8_t> probe_buffer(kMaxArena + 16);
  uint8_t* probe = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(probe_buffer.data()) + 15) & ~static_cast<uintptr_t>(15));
  size_t low = 0, high = kMaxArena / 16;  // allocation fails with 16 * low bytes, succeeds with 16 * high
  while (high - low > 1) {
    const size_t middle = (low + high) / 2;
    (Allocates(model, resolver, probe, 16 * middle) ? high : low) = middle;
  }
  printf("smallest_arena_bytes %zu\n", 16 * high);
  return 0;
}

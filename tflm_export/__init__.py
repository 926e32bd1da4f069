"""tflm_export: QGT tf_keras models to TFLite-Micro firmware.

tflite_model (reading, checking and writing .tflite flatbuffers; weight ops and their tensors), snap (int8
weights on b-bit grids), keras_convert (Keras -> int8 .tflite with exact b-bit grid codes), pack (bit-packed
QGT custom ops, docs/FORMAT.md), lut (TFLM's own LUT compression), reference (numpy arithmetic of the
packed ops), verify (TFLite vs TFLite-Micro, arena, size breakdown), c_source (model_data.h/.cc), export
(the whole export, qgt-export's work) and layout (its output folder), files (whole-or-nothing output),
termination (SIGTERM as an exception; the one way to start a child process). The qgt-export command line
is qgt.export.
"""

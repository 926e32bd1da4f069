"""What each method of accuracy_vs_size.py deploys: the file a TFLite-Micro firmware would hold, its size, and
the deployed int8 model's predictions.

* float: the float .tflite;
* ptq, qat_ste, qgt, qgt_mixed: the export's int8 model (tflm_export.keras_convert, parameters rounded to
  the packed format's grids) and its bit-packed model, whose size counts (the packed model computes exactly
  what the int8 model computes: tflm_export verifies it bit for bit);
* tfmot_qat: tf.lite's conversion of the fake-quantized model (INT4 weights below 8 bits: tfmot stores
  2-bit weights in 4);
* tfmot_cluster: the int8 conversion of the clustered model with TFLite-Micro's LUT compression, the one
  way stock TFLM stores few distinct values per kernel (depthwise kernels, which tfmot 0.8 leaves
  unclustered, keep their int8 codes, as many index bits as they need).
"""

import numpy as np
import tensorflow as tf

from tflm_export import keras_convert, lut, pack, tflite_model, verify

OURS = ("ptq", "qat_ste", "qgt", "qgt_mixed")


def packed_int8(result, calibration):
    """The export's int8 model of one of our results (parameters on the packed format's grids)."""
    conversion = keras_convert.convert_keras(result.model, calibration, result.layer_bits)
    return pack.round_parameters(conversion.tflite)


def deployed_bytes(method, result, calibration):
    """File bytes of what ``method``'s ``result`` deploys (module docstring); ``calibration``: input samples."""
    if method == "float":
        return len(keras_convert.to_float_tflite(result.model))
    if method in OURS:
        return len(pack.pack_model(packed_int8(result, calibration)))
    if method == "tfmot_qat":
        converter = tf.lite.TFLiteConverter.from_keras_model(result.model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return len(converter.convert())
    if method == "tfmot_cluster":
        return len(lut.compress_model(keras_convert.to_int8_tflite(result.model, calibration)))
    raise ValueError(f"no deployed form known for method {method!r}")


def output_values(model_tflite, codes):
    """The int8 output ``codes`` (one row per input) of a quantized model as the real values they stand for:
    class probabilities for a model that ends in a softmax."""
    output = tflite_model.io_details(tflite_model.read(model_tflite))["outputs"][0]
    return (np.asarray(codes).reshape(len(codes), -1).astype(np.float64) - output["zero_point"]) * output["scale"]


def tflm_probabilities(int8_tflite, images):
    """Class probabilities of an int8 model run in the TFLite-Micro runtime (what the firmware computes)."""
    codes, _, _ = verify.run_tflm(int8_tflite, verify.quantize_inputs(int8_tflite, images))
    return output_values(int8_tflite, codes.reshape(len(images), -1))

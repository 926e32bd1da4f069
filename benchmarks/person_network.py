"""The network the size and Cortex-M4 benchmarks measure: MobileNetV1-0.25 96x96x1 (TFLM's person detection
architecture) with the MLPerf Tiny VWW float weights copied in (their RGB stem summed to one channel), or
untrained weights, with a note, where ../shared lacks them."""

import os
import sys

from qgt_keras import models

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE_MODELS = os.path.join(HERE, "..", "..", "shared", "reference_models")  # ../shared from the repo root
# The MLPerf Tiny VWW float model (96x96x3): these weights, and the teacher the person benchmarks measure against.
MLPERF_WEIGHTS = os.path.join(REFERENCE_MODELS, "mlperf_tiny_vww_96.h5")


def mobilenet_v1_96x96x1():
    model = models.mobilenet_v1((96, 96, 1), alpha=0.25)
    if os.path.exists(MLPERF_WEIGHTS):
        models.init_from(model, MLPERF_WEIGHTS)
    else:
        print(f"note: {MLPERF_WEIGHTS} not found, using untrained weights", file=sys.stderr)
    return model

"""qgt_keras: Quantization-Guided Training for tf_keras models (see docs/ARCHITECTURE.md).

Importing it registers its layers, quantizer and regularizer with tf_keras, so saved QGT models load
without custom objects.
"""

from qgt_keras import (augmentation, callbacks, conversion, datasets, idx, layer_kinds, layers, models, quantizers,
                       regularizers, report, serialization)
from qgt_keras.callbacks import QGTMonitor, QGTScheduler
from qgt_keras.conversion import QuantizationPolicy, quantize_model, strip_quantization
from qgt_keras.layers import QConv2D, QDense, QDepthwiseConv2D
from qgt_keras.quantizers import WeightQuantizer
from qgt_keras.regularizers import QGTRegularizer
from qgt_keras.report import allocate_bits, summary
from qgt_keras.serialization import load_model

__all__ = [
    "augmentation", "callbacks", "conversion", "datasets", "idx", "layer_kinds", "layers", "models", "quantizers",
    "regularizers", "report", "serialization", "QGTMonitor", "QGTScheduler", "QuantizationPolicy", "quantize_model",
    "strip_quantization", "QConv2D", "QDense", "QDepthwiseConv2D", "WeightQuantizer", "QGTRegularizer",
    "allocate_bits", "summary", "load_model",
]

"""qgt_keras: Quantization-Guided Training for tf_keras models (see docs/ARCHITECTURE.md)."""

from qgt_keras import callbacks, conversion, datasets, layers, models, quantizers, regularizers, report
from qgt_keras.callbacks import QGTMonitor, QGTScheduler
from qgt_keras.conversion import QuantizationPolicy, quantize_model, strip_quantization
from qgt_keras.layers import QConv2D, QDense, QDepthwiseConv2D
from qgt_keras.quantizers import ActivationQuantizer, WeightQuantizer
from qgt_keras.regularizers import QGTRegularizer
from qgt_keras.report import allocate_bits, summary

__all__ = [
    "callbacks", "conversion", "datasets", "layers", "models", "quantizers", "regularizers", "report",
    "QGTMonitor", "QGTScheduler", "QuantizationPolicy", "quantize_model", "strip_quantization", "QConv2D",
    "QDense", "QDepthwiseConv2D", "ActivationQuantizer", "WeightQuantizer", "QGTRegularizer", "allocate_bits",
    "summary",
]

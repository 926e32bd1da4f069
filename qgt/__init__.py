"""qgt: the end-to-end apps on top of both packages (qgt_keras for training, tflm_export for firmware)."""

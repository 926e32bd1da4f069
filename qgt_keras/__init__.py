"""qgt_keras: Quantization-Guided Training for tf_keras models (see docs/ARCHITECTURE.md)."""

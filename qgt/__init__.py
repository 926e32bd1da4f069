"""qgt: the commands on top of both packages (qgt_keras for training, tflm_export for firmware):
qgt-train, qgt-export and qgt-quickstart, with the flag vocabulary they share (qgt.cli)."""

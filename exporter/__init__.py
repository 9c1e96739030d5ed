"""Trained checkpoint -> one self-describing ONNX file (fp32, fp16, calibrated int8), checked against PyTorch."""

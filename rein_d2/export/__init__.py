"""Export of the inference network to ONNX, and inference through an onnxruntime session."""

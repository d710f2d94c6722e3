"""Deployment: ONNX export, OpenVINO / INT8 / TensorRT engines, hardware widths, what is deployed, the matrix, the choice."""

"""vib-deploy: VIB training, structural pruning, ONNX export and measured speedups."""

__version__ = "0.1.0"

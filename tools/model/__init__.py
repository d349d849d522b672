"""Model pipeline: MNIST fetch, training, ONNX export, int8 quantization, validation (issue #3)."""

__all__: list[str] = []

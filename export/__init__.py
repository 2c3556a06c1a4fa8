"""ONNX export of the trained models into the model repository (``python -m export``)."""

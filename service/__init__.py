"""Serving: ONNX Runtime sessions, decoding engine, Ray Serve deployments, HTTP/gRPC ingress, metrics."""

"""Receivers: OTLP/HTTP (``http``) and OTLP/gRPC (``grpc``)."""

"""The OTLP/gRPC receiver: ``opentelemetry.proto.collector.logs.v1.LogsService/Export``.

The request is decoded here, not by grpcio, so that an undecodable body gets
INVALID_ARGUMENT. Back-pressure is UNAVAILABLE with a ``RetryInfo`` detail.
"""

from __future__ import annotations

import errno
from concurrent import futures

import grpc
from google.rpc import error_details_pb2, status_pb2

from .. import otlp
from ..pipeline import ExportFailed, QueueFull

SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
RETRY_AFTER_S = 1


def _retry_trailers(code: grpc.StatusCode, message: str):
    info = error_details_pb2.RetryInfo()
    info.retry_delay.seconds = RETRY_AFTER_S
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.add().Pack(info)
    return (("grpc-status-details-bin", status.SerializeToString()),
            ("google.rpc.retryinfo-bin", info.SerializeToString()))


class GrpcReceiver:
    def __init__(self, collector, host: str, port: int, workers: int = 8):
        self.collector = collector
        max_bytes = collector.settings.max_body_bytes
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="otlp-grpc"),
            options=[("grpc.max_receive_message_length", max_bytes),
                     ("grpc.max_send_message_length", 4 * 1024 * 1024),
                     # grpcio sets SO_REUSEPORT by default: a second process could
                     # then bind the same port and take part of the traffic.
                     ("grpc.so_reuseport", 0)],
        )
        handler = grpc.method_handlers_generic_handler(SERVICE, {
            "Export": grpc.unary_unary_rpc_method_handler(self._export),
        })
        self.server.add_generic_rpc_handlers((handler,))
        try:
            self.port = self.server.add_insecure_port(f"{host}:{port}")
        except RuntimeError:  # grpcio ≥ 1.x raises where older ones returned 0
            self.port = 0
        if not self.port:
            raise OSError(errno.EADDRINUSE, f"cannot listen for OTLP/gRPC on {host}:{port} "
                                            "(is the port in use?)")

    def _fail(self, context, code: grpc.StatusCode, message: str, retry: bool = False):
        self.collector.metrics.requests.labels("grpc", code.name).inc()
        if retry:
            context.set_trailing_metadata(_retry_trailers(code, message))
        context.abort(code, message)

    def _export(self, body: bytes, context) -> bytes:
        auth = dict(context.invocation_metadata()).get("authorization")
        if not self.collector.authorized(auth):
            self._fail(context, grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
        try:
            request = otlp.decode_request(body, otlp.PROTOBUF)
        except otlp.DecodeFailed as exc:
            self._fail(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            batch = self.collector.ingest(request)
        except otlp.DecodeFailed as exc:
            self._fail(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except (QueueFull, ExportFailed) as exc:
            self._fail(context, grpc.StatusCode.UNAVAILABLE, f"not committed, retry later: {exc}",
                       retry=True)
        self.collector.metrics.requests.labels("grpc", "OK").inc()
        return otlp.encode_response(otlp.PROTOBUF, batch.rejected_total, batch.rejection_message())

    def start(self) -> None:
        self.server.start()

    def shutdown(self, grace_s: float = 5.0) -> None:
        self.server.stop(grace_s).wait(grace_s + 1)

"""Sending OTLP log export requests, with the shipper's own reading of the answer.

The stock OTLP exporters retry inside a short window (about 10 s) and never
look at ``partial_success``; for audit events those must not decide what
happens. A sender here makes one attempt and classifies the answer, and the
worker (``durable.py``) decides: commit, retry with backoff, or dead-letter.
The request body is built by the OTel SDK's own encoder, not by hand.
"""

from __future__ import annotations

import email.utils
import gzip
import os
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import grpc
import requests
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

OK, PARTIAL, RETRY, PERMANENT, TOO_LARGE = "ok", "partial", "retry", "permanent", "too large"
_GRPC_EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
_RETRYABLE_HTTP = {429, 502, 503, 504}
#: Not retryable per OTLP, but a wrong or expired token is a configuration
#: error: audit events wait in the spool (with an error log) until it is fixed.
_AUTH_HTTP = {401, 403}
_RETRYABLE_GRPC = {grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED,
                   grpc.StatusCode.ABORTED, grpc.StatusCode.OUT_OF_RANGE,
                   grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
                   grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


@dataclass(frozen=True)
class SendResult:
    outcome: str
    message: str = ""
    rejected: int = 0
    retry_after_s: float | None = None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as delta-seconds or an HTTP-date → seconds to wait."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (now or time.time()))


def parse_headers(text: str | None) -> dict[str, str]:
    """``OTEL_EXPORTER_OTLP_HEADERS`` format: ``k1=v1,k2=v2``, URL-encoded values."""
    out = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"invalid OTLP header {item.strip()!r}: use key=value")
        out[unquote(key.strip()).lower()] = unquote(value.strip())
    return out


def _partial(body: bytes, protobuf: bool = True) -> SendResult:
    """Read a 200's body. One that is not an OTLP response (a proxy's page, a
    wrong port) did not commit anything: retried, unless it says protobuf."""
    try:
        response = ExportLogsServiceResponse.FromString(body)
    except Exception:  # noqa: BLE001 - not an ExportLogsServiceResponse
        if protobuf:  # the collector's own answer: committed, only unreadable
            return SendResult(OK)
        return SendResult(RETRY, f"a 200 response that is not OTLP: {body[:200]!r}")
    ps = response.partial_success
    if ps.rejected_log_records:
        return SendResult(PARTIAL, ps.error_message, ps.rejected_log_records)
    return SendResult(OK, ps.error_message)


class HttpSender:
    """OTLP/HTTP protobuf over one keep-alive session."""

    def __init__(self, endpoint: str, headers: dict[str, str] | None = None,
                 compression: str | None = None, timeout_s: float = 10.0):
        if compression not in (None, "none", "gzip"):
            raise ValueError(f"unsupported OTLP compression {compression!r}: use gzip or none")
        self.endpoint = endpoint
        self.gzip = compression == "gzip"
        self.timeout_s = timeout_s
        self.session = requests.Session()
        self.session.headers.update({"Content-Type": "application/x-protobuf", **(headers or {})})
        if self.gzip:
            self.session.headers["Content-Encoding"] = "gzip"

    def send(self, body: bytes) -> SendResult:
        data = gzip.compress(body, compresslevel=5) if self.gzip else body
        try:
            resp = self.session.post(self.endpoint, data=data, timeout=self.timeout_s)
        except requests.RequestException as exc:
            return SendResult(RETRY, f"cannot reach {self.endpoint}: {exc}")
        if resp.status_code == 200:
            return _partial(resp.content, resp.headers.get("Content-Type", "").startswith(
                "application/x-protobuf"))
        message = self._message(resp)
        if resp.status_code in _RETRYABLE_HTTP or resp.status_code in _AUTH_HTTP:
            return SendResult(RETRY, message, retry_after_s=parse_retry_after(
                resp.headers.get("Retry-After")))
        if resp.status_code == 413:
            return SendResult(TOO_LARGE, message)
        return SendResult(PERMANENT, message)

    @staticmethod
    def _message(resp) -> str:
        try:
            text = status_pb2.Status.FromString(resp.content).message
        except Exception:  # noqa: BLE001 - not a google.rpc.Status body
            text = resp.text[:500]
        return f"HTTP {resp.status_code}: {text}".strip()

    def close(self) -> None:
        self.session.close()


class GrpcSender:
    """OTLP/gRPC, one unary call per request on one channel."""

    def __init__(self, target: str, headers: dict[str, str] | None = None, insecure: bool = True,
                 compression: str | None = None, timeout_s: float = 10.0):
        if compression not in (None, "none", "gzip"):
            raise ValueError(f"unsupported OTLP compression {compression!r}: use gzip or none")
        options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
        comp = grpc.Compression.Gzip if compression == "gzip" else grpc.Compression.NoCompression
        self.channel = (grpc.insecure_channel(target, options, compression=comp) if insecure else
                        grpc.secure_channel(target, grpc.ssl_channel_credentials(), options,
                                            compression=comp))
        self.call = self.channel.unary_unary(_GRPC_EXPORT)
        self.metadata = tuple((k.lower(), v) for k, v in (headers or {}).items())
        self.timeout_s = timeout_s
        self.target = target

    def send(self, body: bytes) -> SendResult:
        try:
            answer = self.call(body, metadata=self.metadata, timeout=self.timeout_s)
        except grpc.RpcError as err:
            code, message = err.code(), f"gRPC {err.code().name}: {err.details()}"
            retry_after = self._retry_delay(err)
            if code in _RETRYABLE_GRPC or (code == grpc.StatusCode.RESOURCE_EXHAUSTED
                                           and retry_after is not None):
                return SendResult(RETRY, message, retry_after_s=retry_after)
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                return SendResult(TOO_LARGE, message)
            return SendResult(PERMANENT, message)
        return _partial(answer)

    @staticmethod
    def _retry_delay(err) -> float | None:
        for key, value in err.trailing_metadata() or ():
            info = None
            if key == "google.rpc.retryinfo-bin":
                info = error_details_pb2.RetryInfo.FromString(value)
            elif key == "grpc-status-details-bin":
                for detail in status_pb2.Status.FromString(value).details:
                    if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                        info = error_details_pb2.RetryInfo()
                        detail.Unpack(info)
            if info is not None:
                return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
        return None

    def close(self) -> None:
        self.channel.close()


def sender_from_env(endpoint: str | None = None, protocol: str | None = None,
                    headers: dict[str, str] | None = None, compression: str | None = None,
                    timeout_s: float = 10.0, environ=os.environ):
    """A sender from arguments, falling back to the standard OTEL_EXPORTER_OTLP_* variables."""
    def env(name):
        return environ.get(f"OTEL_EXPORTER_OTLP_LOGS_{name}") or environ.get(f"OTEL_EXPORTER_OTLP_{name}")

    protocol = protocol or env("PROTOCOL") or "http/protobuf"
    if protocol not in ("http/protobuf", "grpc"):
        raise ValueError(f"unsupported OTLP protocol {protocol!r}: use http/protobuf or grpc")
    if headers is None:
        headers = parse_headers(env("HEADERS"))
    compression = compression or env("COMPRESSION") or None
    if protocol == "grpc":
        url = endpoint or env("ENDPOINT") or "http://localhost:4317"
        parts = urlsplit(url if "://" in url else "http://" + url)
        insecure = parts.scheme != "https"
        if not parts.hostname or not parts.port:
            raise ValueError(f"invalid OTLP/gRPC endpoint {url!r}: use http://host:port")
        return GrpcSender(f"{parts.hostname}:{parts.port}", headers, insecure, compression, timeout_s)
    if endpoint:
        url = endpoint
    elif environ.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"):
        url = environ["OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"]
    else:
        url = (environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318").rstrip("/") \
            + "/v1/logs"
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"invalid OTLP/HTTP endpoint {url!r}: use http(s)://host:port/v1/logs")
    return HttpSender(url, headers, compression, timeout_s)

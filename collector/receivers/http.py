"""The OTLP/HTTP receiver: a small WSGI app served by waitress.

Routes: ``POST /v1/logs`` (protobuf or JSON, optionally gzip- or
deflate-compressed), ``GET /metrics``, ``/healthz`` and ``/readyz``.
"""

from __future__ import annotations

import logging
import zlib

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import otlp
from ..pipeline import ExportFailed, QueueFull
from ..wsgi import ThreadedServer

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1
_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class PayloadTooLarge(Exception):
    pass


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """Decompress at most ``limit`` bytes; a bigger (or bomb) payload raises.

    A gzip body may hold several members one after another (RFC 1952, what
    ``cat a.gz b.gz`` makes): each is read, as Go's and Python's readers do.
    Anything else after the end of the data is an error, not ignored.
    """
    out = bytearray()
    rest = body
    while True:
        d = zlib.decompressobj(_DECODERS[encoding])
        try:
            out += d.decompress(rest, limit + 1 - len(out))
        except zlib.error as exc:
            raise otlp.DecodeFailed(f"invalid {encoding} body: {exc}") from None
        if len(out) > limit:
            raise PayloadTooLarge()
        if not d.eof:
            raise otlp.DecodeFailed(f"truncated {encoding} body")
        rest = d.unused_data
        if not rest:
            return bytes(out)
        if encoding != "gzip":
            raise otlp.DecodeFailed(f"data after the end of the {encoding} body")


class OTLPHttpApp:
    """WSGI application of the receiver; ``collector`` is the running
    :class:`upmetr_audit.collector.app.Collector`."""

    def __init__(self, collector):
        self.collector = collector
        self.max_body = collector.settings.max_body_bytes

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/v1/logs":
            if method != "POST":
                return self._plain(start_response, "405 Method Not Allowed", "use POST\n",
                                   [("Allow", "POST")])
            return self._export(environ, start_response)
        if method not in ("GET", "HEAD"):
            return self._plain(start_response, "405 Method Not Allowed", "use GET\n",
                               [("Allow", "GET, HEAD")])
        if path == "/metrics":
            body = generate_latest(self.collector.metrics.registry)
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST),
                                      ("Content-Length", str(len(body)))])
            return [body]
        if path == "/healthz":
            return self._plain(start_response, "200 OK", "ok\n")
        if path == "/readyz":
            if self.collector.ready:
                return self._plain(start_response, "200 OK", "ready\n")
            return self._plain(start_response, "503 Service Unavailable", "not ready\n")
        return self._plain(start_response, "404 Not Found", "not found\n")

    @staticmethod
    def _plain(start_response, status, text, headers=()):
        body = text.encode()
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                                ("Content-Length", str(len(body))), *headers])
        return [body]

    def _reply(self, start_response, status, ctype, body, headers=()):
        outcome = status.split(" ", 1)[0]
        self.collector.metrics.requests.labels("http", outcome).inc()
        start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body))),
                                *headers])
        return [body]

    def _error(self, start_response, status, ctype, message, headers=(), retry=False):
        body = otlp.encode_status(ctype, message, RETRY_AFTER_S if retry else None)
        if retry:
            headers = (*headers, ("Retry-After", str(RETRY_AFTER_S)))
        return self._reply(start_response, status, ctype, body, headers)

    def _export(self, environ, start_response):
        ctype = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
        if ctype not in (otlp.PROTOBUF, otlp.JSON):
            body = f"unsupported content type {ctype!r}; use {otlp.PROTOBUF} or {otlp.JSON}\n"
            self.collector.metrics.requests.labels("http", "415").inc()
            return self._plain(start_response, "415 Unsupported Media Type", body)
        if not self.collector.authorized(environ.get("HTTP_AUTHORIZATION")):
            return self._error(start_response, "401 Unauthorized", ctype,
                               "missing or invalid bearer token",
                               [("WWW-Authenticate", 'Bearer realm="upmetr-audit"')])
        encoding = environ.get("HTTP_CONTENT_ENCODING", "identity").strip().lower()
        if encoding not in ("identity", "", *_DECODERS):
            return self._error(start_response, "415 Unsupported Media Type", ctype,
                               f"unsupported content encoding {encoding!r}; use gzip or deflate")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return self._error(start_response, "400 Bad Request", ctype, "invalid Content-Length")
        if length > self.max_body:
            return self._too_large(start_response, ctype)
        raw = environ["wsgi.input"].read(length) if length else environ["wsgi.input"].read()
        try:
            if encoding in _DECODERS:
                raw = _inflate(raw, encoding, self.max_body)
            elif len(raw) > self.max_body:
                raise PayloadTooLarge()
            request = otlp.decode_request(raw, ctype)
        except PayloadTooLarge:
            return self._too_large(start_response, ctype)
        except otlp.DecodeFailed as exc:
            return self._error(start_response, "400 Bad Request", ctype, str(exc))
        try:
            batch = self.collector.ingest(request)
        except otlp.DecodeFailed as exc:
            return self._error(start_response, "400 Bad Request", ctype, str(exc))
        except (QueueFull, ExportFailed) as exc:
            return self._error(start_response, "503 Service Unavailable", ctype,
                               f"not committed, retry later: {exc}", retry=True)
        body = otlp.encode_response(ctype, batch.rejected_total, batch.rejection_message())
        return self._reply(start_response, "200 OK", ctype, body)

    def _too_large(self, start_response, ctype):
        return self._error(start_response, "413 Content Too Large", ctype,
                           f"request body exceeds {self.max_body} bytes after decompression")


class HttpReceiver(ThreadedServer):
    """Serves :class:`OTLPHttpApp` on ``host:port`` with waitress, in a thread."""

    def __init__(self, collector, host: str, port: int, threads: int = 8):
        max_body = collector.settings.max_body_bytes
        super().__init__(
            OTLPHttpApp(collector), host, port, name="otlp-http", threads=threads,
            max_request_body_size=max_body + 1, clear_untrusted_proxy_headers=True,
            # Read big OTLP bodies in large chunks and keep them in memory:
            # waitress's defaults (8 KiB reads, spill to a temp file past
            # 512 KiB) cost more CPU than decoding the body.
            recv_bytes=256 * 1024, inbuf_overflow=max_body + 1,
        )


__all__ = ["HttpReceiver", "OTLPHttpApp"]

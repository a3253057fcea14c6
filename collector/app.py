"""The collector: receivers → processors → sending queue → ClickHouse exporter.

:class:`Collector` wires the stages together around an open store and runs
them in threads of the current process, so that ``serve`` can host it next
to the other parts that need the same embedded chDB folder.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass, field

from . import store as store_mod
from .exporters import ClickHouseExporter
from .metrics import Metrics
from .pipeline import Pipeline, QueueFull
from .processors import Batch, to_batch
from .receivers.grpc import GrpcReceiver
from .receivers.http import HttpReceiver

log = logging.getLogger(__name__)


def parse_addr(addr: str) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:4318``) → ``(host, port)``; raises ValueError."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid address {addr!r}: use host:port, e.g. 127.0.0.1:4318")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass
class CollectorSettings:
    otlp_http_addr: str = "127.0.0.1:4318"
    otlp_grpc_addr: str = "127.0.0.1:4317"
    #: Accepted bearer tokens; empty means no authentication (needs ``insecure_no_auth``).
    ingest_tokens: tuple[str, ...] = field(default_factory=tuple)
    insecure_no_auth: bool = False
    #: Largest request body, measured after decompression.
    max_body_bytes: int = 16 * 1024 * 1024
    queue_size_records: int = 200_000
    max_batch_records: int = 50_000
    #: Longest the writer waits for more requests to commit in one INSERT (pipeline.py).
    group_wait_s: float = 0.02
    export_timeout_s: float = 30.0

    def __post_init__(self):
        if not self.ingest_tokens and not self.insecure_no_auth:
            raise ValueError("no ingest tokens: set UPMETR_AUDIT_INGEST_TOKENS, or pass "
                             "--insecure-no-auth to accept unauthenticated writes")
        if any(not t or t != t.strip() for t in self.ingest_tokens):
            raise ValueError("ingest tokens must be non-empty and have no surrounding spaces")
        if self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes must be at least 1024")
        parse_addr(self.otlp_http_addr)
        parse_addr(self.otlp_grpc_addr)


class Collector:
    def __init__(self, store: store_mod.Store, settings: CollectorSettings,
                 exporter_factory=ClickHouseExporter):
        self.store = store
        self.settings = settings
        self.metrics = Metrics()
        store_mod.require_current_schema(store.client)
        store_mod.check_retention(store.client)
        self.exporter = exporter_factory(store.client, self.metrics)
        self.pipeline = Pipeline(self.exporter, self.metrics,
                                 queue_size_records=settings.queue_size_records,
                                 max_batch_records=settings.max_batch_records,
                                 group_wait_s=settings.group_wait_s)
        self._tokens = [t.encode() for t in settings.ingest_tokens]
        self.http: HttpReceiver | None = None
        self.grpc: GrpcReceiver | None = None
        self.ready = False
        self._stopped = False

    # -- used by the receivers -----------------------------------------------

    def authorized(self, header: str | None) -> bool:
        """Constant-time check of an ``Authorization: Bearer <token>`` header."""
        if not self._tokens:
            return self.settings.insecure_no_auth
        scheme, _, token = (header or "").partition(" ")
        presented = token.strip().encode() if scheme.lower() == "bearer" else b""
        ok = False
        for expected in self._tokens:  # no early exit: compare against every token
            ok |= hmac.compare_digest(presented, expected)
        return ok

    def ingest(self, request) -> Batch:
        """Route, convert and commit one export request; returns its batch
        (for the partial-success answer). Raises DecodeFailed (a request
        that decoded but is invalid: an id of the wrong length), QueueFull or
        ExportFailed."""
        if not self.ready:
            raise QueueFull("the collector is not accepting writes (starting or shutting down)")
        batch = to_batch(request)
        self.metrics.received.inc(len(batch.rows))
        self.metrics.ignored.inc(batch.ignored)
        self.pipeline.export(batch, self.settings.export_timeout_s)
        return batch

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Start the writer and both receivers; if one cannot start (a busy
        port), what did start is stopped again before the error is raised."""
        self.pipeline.start()
        try:
            self.http = HttpReceiver(self, *parse_addr(self.settings.otlp_http_addr))
            self.http.start()
            self.grpc = GrpcReceiver(self, *parse_addr(self.settings.otlp_grpc_addr))
            self.grpc.start()
        except BaseException:
            self.shutdown()
            raise
        self.ready = True
        log.info("collector started", extra={"otlp_http_port": self.http.port,
                                              "otlp_grpc_port": self.grpc.port})

    def shutdown(self, timeout_s: float = 30.0) -> bool:
        """Stop accepting, commit in-flight batches, close the receivers. Idempotent."""
        if self._stopped:
            return True
        self._stopped = True
        self.ready = False
        drained = self.pipeline.shutdown(timeout_s)
        if self.grpc:
            self.grpc.shutdown()
        if self.http:
            self.http.shutdown()
        log.info("collector stopped", extra={"drained": drained})
        return drained

    def summary(self) -> dict[str, int]:
        m = self.metrics
        return {
            "received": int(m.value("upmetr_audit_records_received_total")),
            "accepted": int(m.value("upmetr_audit_records_accepted_total")),
            "rejected": int(m.rejected_total()),
            "duplicates": int(m.value("upmetr_audit_records_duplicate_total")),
            "ignored": int(m.value("upmetr_audit_records_ignored_total")),
            "queued": self.pipeline.queued_records,
        }

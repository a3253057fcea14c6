"""The durable log record processor: the OTel SDK's processor slot, with a
spool instead of a drop-oldest queue, and a worker that never gives up.

``on_emit`` encodes the record with the SDK's OTLP encoder (the resource and
scope envelope encoded once, see :class:`RecordEncoder`) and appends it to
the spool; in durable mode it returns once the record is fsynced. A worker
thread reads records in order, sends them, and:

* on success, acknowledges them (the spool reclaims the disk);
* on 429/502/503/504, a connection failure, or a gRPC retryable status,
  waits (``Retry-After`` / ``RetryInfo``, else exponential backoff with
  jitter) and sends the same records again, with no deadline;
* on 400 / INVALID_ARGUMENT, writes them to the dead-letter file with the
  server's message and moves on;
* on a partial success, writes the records the server refused to the
  dead-letter file (the rest are stored; resending them would be harmless,
  the collector de-duplicates by event id).

Each spool payload is a serialized ``ExportLogsServiceRequest`` of one
record. Protobuf merges concatenated messages by appending repeated fields,
so a batch on the wire is simply the payloads joined.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import os
import random
import threading
import time
import weakref
from collections import deque
from dataclasses import asdict, dataclass

from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common._internal import (
    _encode_instrumentation_scope,
    _encode_resource,
)
from opentelemetry.exporter.otlp.proto.common._internal._log_encoder import _encode_log
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.sdk._logs import LogRecordProcessor

from . import contract
from .spool import Position, SpoolError, SpoolFullError, append_whole
from .transport import PARTIAL, PERMANENT, RETRY, TOO_LARGE
from .values import attrs_to_dict

log = logging.getLogger(__name__)


class MemoryQueue:
    """Fast mode: the spool's interface, in memory. Events are lost if the
    process dies before they are sent; ``emit`` is faster and needs no disk."""

    def __init__(self, max_records: int = 100_000):
        self.max_records = max_records
        self._items: deque[bytes] = deque()
        self._base = 0          # absolute index of _items[0]
        self._read = 0          # absolute index of the next unread item
        self._cond = threading.Condition()
        self._closed = False

    def append(self, payload: bytes, timeout_s: float | None = 5.0) -> None:
        # Without the lock when there is room: every emitting thread passes
        # here, and a lock they contend makes CPython threads queue behind
        # the GIL (P5: fast mode at 4 threads fell to half its 1-thread rate).
        # deque.append is atomic, and read and ack index from the left; the
        # bound may be passed by a few records when threads race for the last
        # places.
        if len(self._items) < self.max_records and not self._closed:
            self._items.append(payload)
            if self._closed:  # closed meanwhile: nothing will send it
                raise SpoolError(0, "the queue is closed")
            return
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._items) < self.max_records or self._closed,
                                       timeout_s):
                raise SpoolFullError(f"in-memory queue is full ({self.max_records} events) "
                                     f"and did not drain within {timeout_s:g}s")
            if self._closed:
                raise SpoolError(0, "the queue is closed")
            self._items.append(payload)

    def read(self, max_records: int) -> tuple[list[bytes], Position]:
        with self._cond:
            start = self._read - self._base
            out = list(itertools.islice(self._items, start, start + max_records))
            self._read += len(out)
            return out, Position(0, self._read)

    def rewind(self) -> None:
        with self._cond:
            self._read = self._base

    def ack(self, pos: Position) -> None:
        with self._cond:
            while self._base < pos.offset:
                self._items.popleft()
                self._base += 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass
class Stats:
    pending: int = 0
    sent: int = 0
    retried: int = 0
    dead_lettered: int = 0
    partial_successes: int = 0
    oldest_pending_age_s: float = 0.0
    #: Why the sending thread cannot work (a disk error: the cursor or the
    #: dead-letter file cannot be written); "" while it works.
    sender_error: str = ""
    sender_alive: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


def otlp_json(request: ExportLogsServiceRequest) -> dict:
    """``request`` in OTLP/JSON form: camelCase keys, enums as integers, and
    trace and span ids as hex (protobuf's JSON mapping writes them as base64,
    which an OTLP/JSON receiver does not read)."""
    out = json_format.MessageToDict(request, use_integers_for_enums=True)
    for rl in out.get("resourceLogs", ()):
        for sl in rl.get("scopeLogs", ()):
            for rec in sl.get("logRecords", ()):
                for key in ("traceId", "spanId"):
                    if key in rec:
                        rec[key] = base64.b64decode(rec[key]).hex()
    return out


class DeadLetter:
    """Append-only JSON lines: the records the collector refused, with why."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()

    def write(self, payloads: list[bytes], reason: str, message: str) -> None:
        """Append one entry per payload, all of them or none (``OSError``)."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        text = "".join(json.dumps({"time": now, "reason": reason, "message": message,
                                   "request": otlp_json(ExportLogsServiceRequest.FromString(p))},
                                  ensure_ascii=False) + "\n" for p in payloads)
        with self._lock:
            append_whole(self.path, text)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _string_field(number: int, text: str | None) -> bytes:
    return _field(number, text.encode()) if text else b""  # proto3: "" is not written


class RecordEncoder:
    """One log record as a serialized ``ExportLogsServiceRequest``: the bytes
    the SDK's ``encode_logs([record]).SerializeToString()`` gives, without
    re-encoding the resource and the scope for every record.

    The record itself goes through the SDK's encoder (``_encode_log``); the
    resource and the scope, the same for every record of a logger, are
    encoded once by the SDK's encoders and kept as bytes. The envelope is
    written in field-number order, as protobuf serializes it:
    ``ResourceLogs{resource=1, scope_logs=2, schema_url=3}``,
    ``ScopeLogs{scope=1, log_records=2, schema_url=3}``.
    """

    def __init__(self):
        self._resource = self._scope = None
        # the resource's field and schema url; the scope's field and schema url
        self._head = self._tail = self._scope_head = self._scope_tail = b""

    def encode(self, record) -> bytes:
        resource, scope = record.resource, record.instrumentation_scope or None
        if resource is not self._resource or scope is not self._scope:  # a logger's are the same objects
            self._head = _field(1, _encode_resource(resource).SerializeToString())
            self._scope_head = b"" if scope is None else _field(
                1, _encode_instrumentation_scope(scope).SerializeToString())
            self._scope_tail = _string_field(3, scope.schema_url if scope else None)
            self._tail = _string_field(3, resource.schema_url)
            self._resource, self._scope = resource, scope
        scope_logs = self._scope_head + _field(2, _encode_log(record).SerializeToString()) + self._scope_tail
        return _field(1, self._head + _field(2, scope_logs) + self._tail)


def _record_time_ns(payload: bytes) -> int:
    req = ExportLogsServiceRequest.FromString(payload)
    for rl in req.resource_logs:
        for sl in rl.scope_logs:
            for rec in sl.log_records:
                return rec.time_unix_nano or rec.observed_time_unix_nano
    return 0


def locally_refused(payload: bytes, now_ns: int) -> bool:
    """Whether the contract's rules refuse this record now (to find which
    records of a partially successful batch the server refused)."""
    req = ExportLogsServiceRequest.FromString(payload)
    for rl in req.resource_logs:
        for sl in rl.scope_logs:
            for rec in sl.log_records:
                ts = rec.time_unix_nano or rec.observed_time_unix_nano or now_ns
                if contract.reject_reason(rec.event_name, attrs_to_dict(rec.attributes),
                                          ts, now_ns):
                    return True
    return False


class DurableLogRecordProcessor(LogRecordProcessor):
    """Spool in front of a sender, drained by a worker thread.

    :param queue: a :class:`Spool` (durable) or :class:`MemoryQueue` (fast).
    :param sender: an ``HttpSender`` or ``GrpcSender``.
    :param dead_letter: where refused records go.
    """

    def __init__(self, queue, sender, dead_letter: DeadLetter, *, max_batch: int = 512,
                 emit_timeout_s: float = 5.0, backoff_initial_s: float = 0.5,
                 backoff_max_s: float = 30.0, pending: int = 0,
                 shutdown_timeout_millis: int = 30_000, linger_s: float = 0.05):
        self.queue = queue
        self.sender = sender
        self.dead_letter = dead_letter
        self.max_batch = max_batch
        self.emit_timeout_s = emit_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stats = Stats(pending=pending)
        self.shutdown_timeout_millis = shutdown_timeout_millis
        #: How long the worker waits for a full batch before it sends a partial
        #: one: one request per few records would cost the emitting threads
        #: the GIL time of many small HTTP requests (P5 in docs/benchmarks.md).
        self.linger_s = linger_s
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._full = threading.Event()  # a batch is full, or a flush asks for everything now
        self._flushing = 0
        self._idle = threading.Condition()
        self._stopping = threading.Event()
        self._shutdown = False
        self._oldest_ns = 0
        #: (position, records, dead letters still to write, partial, dead-lettered)
        #: of a batch whose answer is in but whose dead letters or ack failed.
        self._unsettled: tuple | None = None
        self._encoder = RecordEncoder()
        self._pid, self._forked = os.getpid(), False
        self._worker = threading.Thread(target=self._run, name="upmetr-audit-shipper", daemon=True)
        self._worker.start()
        # A forked child inherits the spool's descriptors but not the worker:
        # its emits would go into the parent's spool (maybe an already
        # deleted segment) and upset the parent's counts. The child refuses.
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (p := ref()) and p._after_fork_in_child())

    def _after_fork_in_child(self) -> None:
        self._forked = True

    def _refuse_in_forked_child(self) -> None:
        raise RuntimeError(
            f"this audit logger was created in process {self._pid}, before os.fork(); a forked "
            f"child cannot use it (its spool and sending thread belong to the parent): create a "
            f"new AuditLogger in the child, with its own spool_dir")

    # -- the SDK's processor interface ----------------------------------------

    def on_emit(self, log_record) -> None:
        if self._forked:
            self._refuse_in_forked_child()
        if self._shutdown:
            raise SpoolError(0, "the audit shipper is shut down")
        payload = self._encoder.encode(log_record)
        self.queue.append(payload, timeout_s=self.emit_timeout_s)
        with self._lock:
            self.stats.pending += 1
            full = self.stats.pending >= self.max_batch
        # Setting an Event takes its lock and notifies; when it is already set
        # (the worker clears it before it reads again) that is only contention
        # between emitting threads.
        if not self._wake.is_set():
            self._wake.set()
        if full and not self._full.is_set():
            self._full.set()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Wait until every emitted event is delivered or dead-lettered."""
        if self._forked:
            self._refuse_in_forked_child()
        deadline = time.monotonic() + timeout_millis / 1000
        with self._lock:
            self._flushing += 1
        self._full.set()
        self._wake.set()
        try:
            with self._idle:
                return self._idle.wait_for(lambda: self.stats.pending == 0,
                                           max(0.0, deadline - time.monotonic()))
        finally:
            with self._lock:
                self._flushing -= 1

    def shutdown(self, timeout_millis: int | None = None) -> int:
        """Flush for up to the timeout, then stop. Returns the events left in
        the spool (sent by the next process that opens it). Idempotent."""
        if self._forked:  # at a forked child's exit: the spool is the parent's, leave it be
            return 0
        if timeout_millis is None:
            timeout_millis = self.shutdown_timeout_millis
        if not self._shutdown:
            deadline = time.monotonic() + timeout_millis / 1000
            self.force_flush(timeout_millis)
            self._shutdown = True
            self._stopping.set()
            self._wake.set()
            self._full.set()
            self._worker.join(max(0.0, deadline - time.monotonic()))
            if self._worker.is_alive():  # inside a send: what it has not acknowledged stays spooled
                log.warning("audit shipper: shutdown timed out while a batch was being sent")
            self.queue.close()
            self.sender.close()
        return self.stats.pending

    # -- the worker -----------------------------------------------------------

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; True if the worker should go on."""
        return not self._stopping.wait(seconds)

    def _run(self) -> None:
        """Deliver until shutdown. A disk error here (the cursor or the
        dead-letter file cannot be written: a full disk) must not end the
        thread: it is logged, shown in ``stats()``, and the batch is read
        again after a backoff (the collector de-duplicates a resend)."""
        attempt = failures = 0
        while not self._stopping.is_set():
            try:
                attempt = self._deliver_once(attempt)
            except Exception as exc:  # noqa: BLE001 - the thread must live on
                failures += 1
                delay = self._retry_delay(None, failures)
                with self._lock:
                    self.stats.sender_error = f"{type(exc).__name__}: {exc}"
                log.error("audit shipper: the sending thread failed; retrying",
                          exc_info=True, extra={"error": str(exc), "retry_in_s": delay})
                if self._unsettled is None:  # else its answer is in: only settling it is retried
                    self.queue.rewind()
                if not self._sleep(delay):
                    break
                continue
            if failures:
                failures = 0
                with self._lock:
                    self.stats.sender_error = ""
                log.warning("audit shipper: the sending thread works again")

    def _deliver_once(self, attempt: int) -> int:
        """Read, send and settle one batch; returns the retry attempt count."""
        if self._unsettled is not None:  # settling failed (a disk error): settle it, do not resend
            self._settle(*self._unsettled)
            return 0
        self._linger()
        payloads, pos = self.queue.read(self.max_batch)
        if not payloads:
            self._notify_idle()
            self._wake.wait(0.5)
            self._wake.clear()
            return attempt
        if not self._oldest_ns:
            self._oldest_ns = _record_time_ns(payloads[0])
        result = self.sender.send(b"".join(payloads))
        if result.outcome == RETRY:
            attempt += 1
            with self._lock:
                self.stats.retried += 1
            delay = self._retry_delay(result.retry_after_s, attempt)
            log.warning("audit events not delivered, retrying",
                        extra={"reason": result.message, "retry_in_s": round(delay, 2),
                               "attempt": attempt})
            self.queue.rewind()
            self._sleep(delay)
            return attempt
        if result.outcome == TOO_LARGE and len(payloads) > 1:
            self.queue.rewind()
            self.max_batch = max(1, len(payloads) // 2)
            return 0
        if self._shutdown:  # the answer came after shutdown gave up: the batch stays spooled
            return 0
        letters = None
        if result.outcome in (PERMANENT, TOO_LARGE):
            letters = (payloads, result.outcome, result.message)
            log.error("audit events refused by the collector; written to dead-letter",
                      extra={"events": len(payloads), "reason": result.message,
                             "dead_letter": self.dead_letter.path})
        elif result.outcome == PARTIAL:
            letters = (self._refused(payloads, result), "partial success", result.message)
        self._settle(pos, len(payloads), letters, result.outcome == PARTIAL)
        return 0

    def _settle(self, pos, n: int, letters: tuple | None, partial: bool, dead: int | None = None) -> None:
        """Dead-letter what the collector refused (``letters``: payloads, reason,
        message), acknowledge the batch, then count it. If the dead-letter
        file or the ack cannot be written (a disk error), the batch stays
        unsettled and only what is left of this is tried again, never the
        send: sending it again would write its dead letters twice."""
        if dead is None:
            dead = len(letters[0]) if letters else 0
        self._unsettled = (pos, n, letters, partial, dead)
        if letters:
            self.dead_letter.write(*letters)  # whole or not at all
            self._unsettled = (pos, n, None, partial, dead)
        if self.queue.ack(pos) is False:  # the spool was closed meanwhile: not this process's now
            return
        self._unsettled = None
        with self._lock:
            self.stats.sent += n - dead
            self.stats.dead_lettered += dead
            self.stats.partial_successes += partial
            self.stats.pending -= n
        self._oldest_ns = 0
        self._notify_idle()

    def _retry_delay(self, retry_after_s: float | None, attempt: int) -> float:
        """The server's ``Retry-After`` / ``RetryInfo`` kept within
        [``backoff_initial_s``, ``backoff_max_s``] (a day would park delivery,
        0 would hammer the server), else exponential backoff with jitter."""
        if retry_after_s is None:
            delay = min(self.backoff_max_s, self.backoff_initial_s * 2 ** min(attempt - 1, 16))
            return delay * random.uniform(0.8, 1.2)
        delay = min(max(retry_after_s, self.backoff_initial_s), self.backoff_max_s)
        if delay != retry_after_s:
            log.warning("the server's retry delay is out of range; waiting %.2f s instead of %g s",
                        delay, retry_after_s)
        return delay

    def _linger(self) -> None:
        """Wait up to ``linger_s`` for a full batch (or a flush, or shutdown)."""
        deadline = time.monotonic() + self.linger_s
        while (not self._flushing and not self._stopping.is_set()
               and self.stats.pending < self.max_batch):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._full.wait(remaining)
            self._full.clear()

    def _refused(self, payloads: list[bytes], result) -> list[bytes]:
        """What the server refused of a batch (all of it, if it cannot be told)."""
        now = time.time_ns()
        refused = [p for p in payloads if locally_refused(p, now)]
        if len(refused) != result.rejected:
            refused = payloads  # cannot tell which: keep them all for inspection
        log.error("collector refused part of a batch; refused records written to dead-letter",
                  extra={"rejected": result.rejected, "reason": result.message})
        return refused

    def _notify_idle(self) -> None:
        """Wake ``force_flush`` waiters to look at ``stats.pending`` again."""
        with self._idle:
            self._idle.notify_all()

    def current_stats(self) -> dict:
        with self._lock:
            stats = self.stats.as_dict()
        stats["sender_alive"] = self._worker.is_alive()
        stats["oldest_pending_age_s"] = (
            round((time.time_ns() - self._oldest_ns) / 1e9, 3) if self._oldest_ns and
            stats["pending"] else 0.0)
        return stats

"""The sending queue: a bounded queue in front of the exporter, drained by
one writer thread that commits everything waiting in one INSERT (group commit).

A receiver submits a batch and waits for it: an acknowledgement means the
rows are committed. When the queue is full, or the exporter fails, the
receiver tells its client to retry; the queue never accepts and then drops.

Every INSERT costs ClickHouse ~25 ms on top of its rows (the views' queries
are planned for each block, a part is written; docs/benchmarks.md, P1), so
the writer makes few, large ones. Clients wait for their answer, so a group
can only hold the requests that arrive while the previous one commits; with
a few clients they alternate and the groups stay small. So before it
commits, the writer may wait up to ``group_wait_s`` for more requests, and it
does so only while waiting pays: when it found more than one request
queued, or when its last wait brought one in. A lone client therefore waits
once, then never (Kafka's ``linger.ms`` and the OTel Collector's batch
timeout wait always; PostgreSQL's ``commit_delay`` waits only when other
transactions are active).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from .exporters import is_unreachable
from .metrics import Metrics
from .processors import Batch

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """No room for the batch now; the client should retry later."""


class ExportFailed(Exception):
    """The batch was not committed; the client should retry later."""


class _Pending:
    __slots__ = ("batch", "done", "error")

    def __init__(self, batch: Batch):
        self.batch = batch
        self.done = threading.Event()
        self.error: BaseException | None = None


class Pipeline:
    def __init__(self, exporter, metrics: Metrics, *, queue_size_records: int = 200_000,
                 max_batch_records: int = 50_000, group_wait_s: float = 0.02):
        if queue_size_records < 1 or max_batch_records < 1:
            raise ValueError("queue_size_records and max_batch_records must be positive")
        if group_wait_s < 0:
            raise ValueError("group_wait_s must not be negative")
        self.exporter = exporter
        self.metrics = metrics
        self.queue_size_records = queue_size_records
        self.max_batch_records = max_batch_records
        self.group_wait_s = group_wait_s
        self._queue: deque[_Pending] = deque()
        self._queued_records = 0
        self._waiting_pays = False  # did the last wait for more requests bring one in?
        #: True while the writer waits for more requests before it commits.
        self.waiting_for_more = False
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="upmetr-audit-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def queued_records(self) -> int:
        return self._queued_records

    def submit(self, batch: Batch) -> _Pending:
        """Queue ``batch``. Raises :class:`QueueFull` when there is no room
        (a batch larger than the whole queue is admitted only into an empty queue)."""
        n = len(batch.rows)
        with self._cond:
            if self._closed:
                raise QueueFull("the collector is shutting down")
            if self._queued_records and self._queued_records + n > self.queue_size_records:
                raise QueueFull(f"sending queue full ({self._queued_records} records waiting)")
            pending = _Pending(batch)
            self._queue.append(pending)
            self._queued_records += n
            self.metrics.queue_records.set(self._queued_records)
            self._cond.notify()
        return pending

    def export(self, batch: Batch, timeout_s: float = 30.0) -> None:
        """Submit ``batch`` and wait until it is committed. Raises
        :class:`QueueFull` or :class:`ExportFailed`."""
        if batch.rows:
            self.wait(self.submit(batch), timeout_s)

    def wait(self, pending: _Pending, timeout_s: float = 30.0) -> None:
        """Wait until a submitted batch is committed. Raises :class:`ExportFailed`."""
        if not pending.done.wait(timeout_s):
            # Still queued or being written: the client will retry, and the
            # retry is de-duplicated if this write commits after all.
            raise ExportFailed(f"not committed within {timeout_s:g}s")
        if pending.error is not None:
            raise ExportFailed(str(pending.error)) from pending.error

    def _take(self) -> list[_Pending] | None:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            if self.group_wait_s and (self._waiting_pays or len(self._queue) > 1):
                self._wait_for_more()
            group, n = [], 0
            while self._queue and (not group or n + len(self._queue[0].batch.rows)
                                   <= self.max_batch_records):
                p = self._queue.popleft()
                group.append(p)
                n += len(p.batch.rows)
            return group

    def _wait_for_more(self) -> None:
        """(Holding the lock.) Let more requests join, until ``group_wait_s``
        has passed or the group is full."""
        found = len(self._queue)
        deadline = time.monotonic() + self.group_wait_s
        self.waiting_for_more = True
        while not self._closed and self._queued_records < self.max_batch_records:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._cond.wait(remaining)
        self.waiting_for_more = False
        self._waiting_pays = len(self._queue) > found

    def _run(self) -> None:
        while (group := self._take()) is not None:
            errors = self._commit(group)
            with self._cond:
                for p in group:
                    self._queued_records -= len(p.batch.rows)
                self.metrics.queue_records.set(self._queued_records)
            for p, error in zip(group, errors, strict=True):
                p.error = error
                p.done.set()

    def _commit(self, group: list[_Pending]) -> list[BaseException | None]:
        """Commit the group in one INSERT; each request's error, or None.

        One request's rows can fail the INSERT of the whole group (a value
        ClickHouse refuses). Its neighbours must not pay for it, so after a
        failed group each request is committed on its own, and fails or
        succeeds by itself; not when ClickHouse could not be reached, which
        would fail each of them again. The exporter's de-dup skips whatever
        part of the failed INSERT was committed after all.
        """
        try:
            self.exporter.export([p.batch for p in group])
            return [None] * len(group)
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the clients
            log.warning("commit to ClickHouse failed", extra={"error": str(exc)})
            if len(group) == 1 or is_unreachable(exc):
                return [exc] * len(group)
        errors: list[BaseException | None] = []
        for p in group:
            try:
                self.exporter.export([p.batch])
                errors.append(None)
            except Exception as exc:  # noqa: BLE001
                log.warning("commit of one request to ClickHouse failed", extra={"error": str(exc)})
                errors.append(exc)
        return errors

    def shutdown(self, timeout_s: float = 30.0) -> bool:
        """Stop accepting, commit what is queued, stop the writer. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

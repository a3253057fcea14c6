"""Exporters: the ClickHouse exporter commits rows to ``audit.audit_ingest``.

It de-duplicates first. The idempotency key is the event id
(``log.record.uid``), whatever the org: a record whose id is already stored
(with a timestamp in the group's time range: a retry carries the same record
and time; at any time for a record sent without a time, which is stored with
the time it was received), or that appears twice in one group, is
acknowledged without being written again.
The exporter is driven by one writer thread (see ``pipeline``), so the check
and the insert cannot race with each other inside one collector.
"""

from __future__ import annotations

import time

from clickhouse_connect.driver.exceptions import OperationalError

from . import schema
from .metrics import Metrics
from .processors import Batch

#: Event ids per de-duplication query (one parameter of 5000 numbers of up to 39 digits).
_IDS_PER_QUERY = 5000


def is_unreachable(exc: BaseException) -> bool:
    """True when ClickHouse could not be reached (or the connection broke),
    as opposed to ClickHouse or the client refusing what was sent."""
    return isinstance(exc, (OperationalError, ConnectionError, TimeoutError))


class ClickHouseExporter:
    def __init__(self, client, metrics: Metrics):
        self.client = client
        self.metrics = metrics
        #: Type names of the ingest columns, read once: without them the client
        #: runs a DESCRIBE TABLE before every INSERT. Dropped after a failed insert.
        self._column_types: list[str] | None = None

    def _ingest_column_types(self) -> list[str]:
        if self._column_types is None:
            described = {row[0]: row[1] for row in self.client.query(
                f"DESCRIBE TABLE {schema.INGEST_TABLE}").result_rows}
            self._column_types = [described[name] for name in schema.INGEST_COLUMNS]
        return self._column_types

    def _stored_ids(self, ids: list[str], first_ns: int | None = None,
                    last_ns: int | None = None) -> set[str]:
        """The ids among ``ids`` already stored with a timestamp in [first, last]
        (with any timestamp when no range is given).

        A retry carries the same record, hence the same timestamp: bounding the
        lookup by the group's time range lets ClickHouse read only the
        granules of that range instead of every ``event_id`` ever stored. The
        ids travel as one ``Array(UInt128)`` parameter, each UUID's 128 bits
        as a number: the client formats numbers without escaping them
        character by character, which costs ~40% of the same ids as text
        (docs/benchmarks.md, P1). ClickHouse turns a number back into its UUID
        from its 16 bytes, reversed because they are little-endian and
        ``UUIDNumToString`` reads big-endian. Chunks keep each query small.
        """
        found: set[str] = set()
        when, bounds = "", {}
        if first_ns is not None and last_ns is not None:
            when = ("timestamp BETWEEN fromUnixTimestamp64Micro({first:Int64}, 'UTC') "
                    "AND fromUnixTimestamp64Micro({last:Int64}, 'UTC') AND ")
            bounds = {"first": first_ns // 1000, "last": last_ns // 1000}
        for i in range(0, len(ids), _IDS_PER_QUERY):
            result = self.client.query(
                f"SELECT toString(event_id) FROM {schema.EVENTS_TABLE} WHERE {when}"
                "event_id IN (SELECT toUUID(UUIDNumToString(reverse(reinterpretAsFixedString("
                "arrayJoin({ids:Array(UInt128)}))))))",
                parameters={"ids": [int(key.replace("-", ""), 16)
                                    for key in ids[i:i + _IDS_PER_QUERY]], **bounds},
            )
            found.update(row[0] for row in result.result_rows)
        return found

    def export(self, batches: list[Batch]) -> None:
        """Commit every row of ``batches`` in one INSERT, minus duplicates.

        Raises whatever the ClickHouse client raises; nothing is then counted
        as accepted, and the caller answers its clients with a retryable error.
        """
        rows, valid = [], []
        now_ns = time.time_ns()
        for batch in batches:
            if batch.future:
                batch.judge_future_again(now_ns)
            for row, key in zip(batch.rows, batch.keys, strict=True):
                if key is None:
                    rows.append(row)  # refused: ClickHouse routes it to audit_rejects
                else:
                    valid.append((row, key))
        seen: set[str] = set()
        undated = set().union(*(batch.undated for batch in batches))
        dated = [(row, key) for row, key in valid if key not in undated]
        if dated:
            times = [row[0] for row, _ in dated]
            seen = self._stored_ids(list({key for _, key in dated}), min(times), max(times))
        if undated:
            # A record sent without a time is stored with the time it was
            # received, so its resend has another: look its id up at any time.
            seen |= self._stored_ids(list(undated))
        accepted = 0
        for row, event_id in valid:
            if event_id not in seen:
                seen.add(event_id)
                rows.append(row)
                accepted += 1
        if rows:
            start = time.perf_counter()
            try:
                # column-oriented: the client then skips its own row→column pivot
                self.client.insert(schema.INGEST_TABLE, list(zip(*rows, strict=True)),
                                   column_names=schema.INGEST_COLUMNS,
                                   column_type_names=self._ingest_column_types(),
                                   column_oriented=True)
            except Exception:
                self.metrics.insert_failures.inc()
                self._column_types = None  # the table may have changed: describe it again
                raise
            self.metrics.insert_seconds.observe(time.perf_counter() - start)
        self.metrics.accepted.inc(accepted)
        self.metrics.duplicates.inc(len(valid) - accepted)
        for batch in batches:
            for reason, n in batch.rejected.items():
                self.metrics.rejected.labels(reason).inc(n)

"""Exporters: the ClickHouse exporter commits rows to ``audit.audit_ingest``.

It de-duplicates first. The idempotency key is the event id
(``log.record.uid``): a record whose id is already stored for its org, or
that appears twice in one group, is acknowledged without being written again.
The exporter is driven by one writer thread (see ``pipeline``), so the check
and the insert cannot race with each other inside one collector.
"""

from __future__ import annotations

import time

from . import schema
from .metrics import Metrics
from .processors import Batch

#: Event ids per de-duplication query: 5000 × 37 bytes make a query of about 185 KB.
_IDS_PER_QUERY = 5000


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

    def _stored_ids(self, keys: list[tuple[str, str]]) -> set[str]:
        if not keys:
            return set()
        orgs = sorted({org for org, _ in keys})
        # The ids are canonical UUID text (hex digits and dashes, see
        # processors.to_batch), so they travel as one inlined string literal
        # split by ClickHouse. Cheaper than the alternatives: a bound array
        # parameter is escaped character by character in Python, and a literal
        # list of thousands of UUIDs costs ClickHouse's analyzer ~6 µs per item.
        # Chunks keep each query under max_query_size (256 KiB).
        found: set[str] = set()
        for i in range(0, len(keys), _IDS_PER_QUERY):
            ids = ",".join(eid for _, eid in keys[i:i + _IDS_PER_QUERY])
            result = self.client.query(
                f"SELECT toString(event_id) FROM {schema.EVENTS_TABLE} "
                "WHERE org_id IN {orgs:Array(String)} "
                f"AND event_id IN CAST(splitByChar(',', '{ids}'), 'Array(UUID)')",
                parameters={"orgs": orgs},
            )
            found.update(row[0] for row in result.result_rows)
        return found

    def export(self, batches: list[Batch]) -> None:
        """Commit every row of ``batches`` in one INSERT, minus duplicates.

        Raises whatever the ClickHouse client raises; nothing is then counted
        as accepted, and the caller answers its clients with a retryable error.
        """
        rows, valid = [], []
        for batch in batches:
            for row, key in zip(batch.rows, batch.keys, strict=False):
                if key is None:
                    rows.append(row)  # refused: ClickHouse routes it to audit_rejects
                else:
                    valid.append((row, key))
        seen = self._stored_ids(list({key[1]: key for _, key in valid}.values()))
        accepted = 0
        for row, (_, event_id) in valid:
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

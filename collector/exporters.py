"""Exporters: the ClickHouse exporter commits rows to ``audit.audit_ingest``.

It de-duplicates first. The idempotency key is the event id
(``log.record.uid``): a record whose id is already stored for its org, or
that appears twice in one group, is acknowledged without being written again.
The exporter is driven by one writer thread (see ``pipeline``), so the check
and the insert cannot race with each other inside one collector.
"""

from __future__ import annotations

import time
import uuid

from . import schema
from .metrics import Metrics
from .processors import Batch


class ClickHouseExporter:
    def __init__(self, client, metrics: Metrics):
        self.client = client
        self.metrics = metrics

    def _stored_ids(self, keys: list[tuple[str, uuid.UUID]]) -> set[uuid.UUID]:
        if not keys:
            return set()
        orgs = sorted({org for org, _ in keys})
        ids = [str(eid) for _, eid in keys]
        result = self.client.query(
            f"SELECT event_id FROM {schema.EVENTS_TABLE} "
            "WHERE org_id IN {orgs:Array(String)} AND event_id IN {ids:Array(UUID)}",
            parameters={"orgs": orgs, "ids": ids},
        )
        return {row[0] for row in result.result_rows}

    def export(self, batches: list[Batch]) -> None:
        """Commit every row of ``batches`` in one INSERT, minus duplicates.

        Raises whatever the ClickHouse client raises; nothing is then counted
        as accepted, and the caller answers its clients with a retryable error.
        """
        rows, valid = [], []
        for batch in batches:
            for row, key in zip(batch.rows, batch.keys):
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
                self.client.insert(schema.INGEST_TABLE, rows, column_names=schema.INGEST_COLUMNS)
            except Exception:
                self.metrics.insert_failures.inc()
                raise
            self.metrics.insert_seconds.observe(time.perf_counter() - start)
        self.metrics.accepted.inc(accepted)
        self.metrics.duplicates.inc(len(valid) - accepted)
        for batch in batches:
            for reason, n in batch.rejected.items():
                self.metrics.rejected.labels(reason).inc(n)

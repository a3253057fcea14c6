"""Processors: from a decoded OTLP request to rows of the ingest table.

Routing: a record whose ``event_name`` starts with ``upmetr.audit.`` is an
audit record; any other log record is counted and ignored. Every audit
record becomes one row in the exporter's column shape (``schema.INGEST_COLUMNS``)
with the contrib exporter's value rules, plus the verdict of
:func:`contract.reject_reason`, used for the client's partial-success answer
and for de-duplication. ClickHouse re-applies the same rules when it routes
the row to ``audit_events`` or ``audit_rejects``.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from upmetr_audit.shipper import contract
from upmetr_audit.shipper.catalog import EVENT_NAME_PREFIX
from upmetr_audit.shipper.values import any_to_str, attrs_to_dict

from . import schema
from .otlp import hex_id

_INT64_MAX = 2**63 - 1
_ATTRS = schema.INGEST_COLUMNS.index("LogAttributes")
_EVENT_NAME = schema.INGEST_COLUMNS.index("EventName")


@dataclass
class Batch:
    """The audit rows of one request, ready for the exporter."""

    rows: list[list] = field(default_factory=list)
    #: Per row: the event id of a valid record, as canonical (lowercase
    #: 8-4-4-4-12) UUID text so that two spellings of one UUID are one key;
    #: ``None`` for a refused record.
    keys: list[str | None] = field(default_factory=list)
    #: The keys of the valid records that carried no time at all: their
    #: timestamp is the time they were received, so a resend has another.
    undated: set[str] = field(default_factory=set)
    rejected: Counter = field(default_factory=Counter)
    ignored: int = 0
    #: The rows refused only for a time too far in the future: see
    #: :meth:`judge_future_again`.
    future: list[int] = field(default_factory=list)

    def judge_future_again(self, now_ns: int) -> None:
        """Judge the rows refused for a time too far in the future again, as of
        ``now_ns``. ClickHouse judges every row again when it writes it, as of
        the INSERT, and a request may wait in the queue for seconds; the
        exporter calls this just before its INSERT, so that the answer agrees
        with where the row is stored (but for the INSERT's own milliseconds)."""
        still = []
        for i in self.future:
            row = self.rows[i]
            attrs = row[_ATTRS]
            reason = contract.reject_reason(row[_EVENT_NAME], attrs, row[0], now_ns)
            if reason == contract.Reason.ABSURD_TIMESTAMP:
                still.append(i)
                continue
            self.rejected[contract.Reason.ABSURD_TIMESTAMP] -= 1
            if not self.rejected[contract.Reason.ABSURD_TIMESTAMP]:
                del self.rejected[contract.Reason.ABSURD_TIMESTAMP]
            if reason is None:
                self.keys[i] = attrs[contract.EVENT_ID].lower()
            else:
                self.rejected[reason] += 1
        self.future = still

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def rejection_message(self) -> str:
        if not self.rejected:
            return ""
        parts = ", ".join(f"{reason} ({n})" for reason, n in self.rejected.most_common())
        return f"{self.rejected_total} audit log records rejected: {parts}"


def to_batch(request, now_ns: int | None = None) -> Batch:
    """Route and convert every log record of an ``ExportLogsServiceRequest``.

    This runs once per record on the ingest path, so it keeps lookups in
    locals; the values are those of the plain form (see the column list in
    ``schema.INGEST_COLUMNS``).
    """
    now_ns = now_ns or time.time_ns()
    batch = Batch()
    rows_append, keys_append, rejected = batch.rows.append, batch.keys.append, batch.rejected
    reject_reason, prefix = contract.reject_reason, EVENT_NAME_PREFIX
    id_key, absurd = contract.EVENT_ID, contract.Reason.ABSURD_TIMESTAMP
    ignored = 0
    for rl in request.resource_logs:
        resource_attrs = attrs_to_dict(rl.resource.attributes)
        service = resource_attrs.get("service.name", "")
        resource_schema = rl.schema_url
        for sl in rl.scope_logs:
            scope = sl.scope
            scope_attrs = attrs_to_dict(scope.attributes)
            scope_schema, scope_name, scope_version = sl.schema_url, scope.name, scope.version
            for rec in sl.log_records:
                event_name = rec.event_name
                if not event_name.startswith(prefix):
                    ignored += 1
                    continue
                attrs = attrs_to_dict(rec.attributes)
                ts = rec.time_unix_nano or rec.observed_time_unix_nano
                if not ts:
                    ts = now_ns
                    undated = True
                else:
                    undated = False
                if ts > _INT64_MAX:  # beyond DateTime64(9): keep it, as an absurd time
                    ts = 1
                reason = reject_reason(event_name, attrs, ts, now_ns)
                severity = rec.severity_number  # an open enum: any int32; the column is UInt8
                if not 0 <= severity <= 255:
                    severity = 0 if severity < 0 else 255
                body = rec.body
                rows_append([
                    ts, hex_id(rec.trace_id, 16), hex_id(rec.span_id, 8), rec.flags & 0xFF,
                    rec.severity_text, severity, service,
                    body.string_value or any_to_str(body), resource_schema, resource_attrs,
                    scope_schema, scope_name, scope_version, scope_attrs, attrs, event_name,
                ])
                if reason is None:
                    key = attrs[id_key].lower()  # the contract admits only 8-4-4-4-12 hex
                    keys_append(key)
                    if undated:
                        batch.undated.add(key)
                else:
                    if reason == absurd and ts > now_ns:
                        batch.future.append(len(batch.rows) - 1)
                    keys_append(None)
                    rejected[reason] += 1
    batch.ignored = ignored
    return batch

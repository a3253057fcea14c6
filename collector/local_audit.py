"""Audit events about this program's own administrative commands.

A command such as ``erase`` holds the store itself (an embedded chDB folder
admits one process), so it cannot send to a collector. It records its event
through the collector's own path instead: the shipper's attribute rules, an
OTLP record, the processors, and the ClickHouse exporter (de-duplication,
the ingest table and its views).
"""

from __future__ import annotations

import time

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from upmetr_audit.shipper import contract as c
from upmetr_audit.shipper.catalog import EVENT_NAME_PREFIX
from upmetr_audit.shipper.logger import build_attributes

from .exporters import ClickHouseExporter
from .metrics import Metrics
from .processors import to_batch

SERVICE_NAME = "upmetr-audit-cli"


def prepare(action: str, *, org: str, user: str, status: str = "success", **kwargs):
    """One audit event, checked but not committed yet: ``(event id, batch)``.
    ``ValueError`` if it is invalid. A command prepares its event before it
    changes anything, so that a value the event cannot carry stops it early."""
    attrs = build_attributes(action, org=org, user=user, status=status, **kwargs)
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.add(key="service.name", value=AnyValue(string_value=SERVICE_NAME))
    sl = rl.scope_logs.add()
    sl.scope.name = c.SCOPE_NAME
    rec = sl.log_records.add()
    rec.event_name = EVENT_NAME_PREFIX + action
    rec.time_unix_nano = time.time_ns()
    rec.severity_number, rec.severity_text = 9, "INFO"
    for key, value in attrs.items():
        rec.attributes.add(key=key, value=AnyValue(string_value=str(value)))
    batch = to_batch(req)
    if batch.rejected:
        raise ValueError(batch.rejection_message())
    return attrs[c.EVENT_ID], batch


def commit(client, batch) -> None:
    """Commit an event made by :func:`prepare`."""
    ClickHouseExporter(client, Metrics()).export([batch])


def record(client, action: str, *, org: str, user: str, status: str = "success", **kwargs) -> str:
    """Commit one audit event; returns its id. ``ValueError`` if it is invalid."""
    event_id, batch = prepare(action, org=org, user=user, status=status, **kwargs)
    commit(client, batch)
    return event_id

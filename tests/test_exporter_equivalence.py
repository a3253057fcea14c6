"""The official Collector's clickhouse exporter and our collector store the same rows.

The exporter's INSERT is emulated from its source (research notes §4,
internal/sqltemplates/logs_insert.sql and exporter_logs.go): its column list,
ServiceName from the resource's service.name, ids as lowercase hex ('' when
absent), Timestamp falling back to ObservedTimestamp, Body and every attribute
value through pcommon AsString(). This emulation is written here, apart from
the collector's processors, and sent into the same chDB store as a real
collector's rows for the same batch, with fresh event ids and another org so
that neither writer de-duplicates the other.
"""

import copy
import time
import uuid

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from upmetr_audit.collector import schema
from upmetr_audit.shipper import contract as c
from upmetr_audit.shipper.values import any_to_str

from helpers import _any, post, wait_for

#: internal/sqltemplates/logs_insert.sql; EventName only when DESC TABLE shows it.
EXPORTER_COLUMNS = (
    "Timestamp", "TraceId", "SpanId", "TraceFlags", "SeverityText", "SeverityNumber",
    "ServiceName", "Body", "ResourceSchemaUrl", "ResourceAttributes", "ScopeSchemaUrl",
    "ScopeName", "ScopeVersion", "ScopeAttributes", "LogAttributes")
EXPORTER_EVENT_NAME = "EventName"


def exporter_rows(request, with_event_name=True):
    """Rows exactly as the contrib exporter INSERTs them, one per log record:
    it has no notion of audit events (the filter processor ran before it)."""
    rows = []
    for rl in request.resource_logs:
        res = {kv.key: any_to_str(kv.value) for kv in rl.resource.attributes}
        for sl in rl.scope_logs:
            scope_attrs = {kv.key: any_to_str(kv.value) for kv in sl.scope.attributes}
            for r in sl.log_records:
                row = [r.time_unix_nano or r.observed_time_unix_nano, r.trace_id.hex(), r.span_id.hex(),
                       r.flags & 0xFF, r.severity_text, r.severity_number, res.get("service.name", ""),
                       any_to_str(r.body), rl.schema_url, res, sl.schema_url, sl.scope.name,
                       sl.scope.version, scope_attrs,
                       {kv.key: any_to_str(kv.value) for kv in r.attributes}]
                if with_event_name:
                    row.append(r.event_name)
                rows.append(row)
    return rows


def exporter_insert(client, request, with_event_name=True):
    cols = EXPORTER_COLUMNS + ((EXPORTER_EVENT_NAME,) if with_event_name else ())
    client.insert(schema.INGEST_TABLE, exporter_rows(request, with_event_name), column_names=cols)


def _kv(rec, key, value):
    rec.attributes.add(key=key, value=_any(value))


def rich_request(org: str) -> tuple[ExportLogsServiceRequest, list[str]]:
    """Two resources, scopes with versions, schema URLs and attributes, every
    AnyValue kind, bodies, ids, severities, flags, a time-less record, a
    refused record and a non-audit log line."""
    now = time.time_ns()
    req, ids = ExportLogsServiceRequest(), []

    def record(sl, action, attrs, **fields):
        rec = sl.log_records.add()
        rec.event_name = fields.pop("event_name", f"upmetr.audit.{action}")
        eid = attrs.pop(c.EVENT_ID, None) or str(uuid.uuid4())
        ids.append(eid)
        for k, v in {c.EVENT_ID: eid, c.ORG_ID: org, c.USER_EMAIL: "ana@example.com",
                     c.STATUS: "success", **attrs}.items():
            _kv(rec, k, v)
        rec.time_unix_nano = fields.pop("time", now)
        for k, v in fields.items():
            if k == "body":
                rec.body.CopyFrom(_any(v))
            else:
                setattr(rec, k, v)
        return rec

    rl = req.resource_logs.add(schema_url="https://opentelemetry.io/schemas/1.37.0")
    for k, v in {"service.name": "billing-api", "service.version": "2.1.0", "host.cpus": 8,
                 "deployment.environment.name": "prod"}.items():
        rl.resource.attributes.add(key=k, value=_any(v))
    sl = rl.scope_logs.add(schema_url="https://opentelemetry.io/schemas/1.36.0")
    sl.scope.name, sl.scope.version = c.SCOPE_NAME, "1.4.2"
    sl.scope.attributes.add(key="lib.flag", value=_any(True))
    record(sl, "auth.login", {c.CLIENT_ADDRESS: "203.0.113.9", c.USER_AGENT: "Mozilla/5.0 (X11)",
                              c.SESSION_ID: "s-1", c.USER_ID: "u-42", c.ACTOR_TYPE: "user",
                              "user.roles": ["admin", "billing"], "http.response.status_code": 200,
                              "ratio": 0.1, "tiny": 1e-7, "blob": b"\x00\xffhi",
                              "nested": {"b": 1, "a": {"z": [1.0, None], "y": "<&>"}},
                              "empty": None},
           trace_id=bytes(range(16)), span_id=bytes(range(8, 16)), flags=0x101,
           severity_number=9, severity_text="INFO", body="signed in")
    record(sl, "monitor.update", {c.RESOURCE_TYPE: "monitor", c.RESOURCE_ID: "m-7",
                                  c.CHANGES: '{"interval":{"from":60,"to":30}}',
                                  c.CLIENT_ADDRESS: "2001:db8::1"},
           body={"note": "kv body", "n": 3}, severity_number=13, severity_text="WARN")
    record(sl, "auth.login", {c.STATUS: "failure", c.REASON: "bad password",
                              c.CLIENT_ADDRESS: "198.51.100.4"},
           time=0, observed_time_unix_nano=now - 5_000_000_000, body=42)
    record(sl, "auth.login", {c.STATUS: "maybe"})  # refused: invalid status
    rl2 = req.resource_logs.add()  # no schema URL, a second service
    rl2.resource.attributes.add(key="service.name", value=_any("web-app"))
    sl2 = rl2.scope_logs.add()
    sl2.scope.name = "upmetr.audit"
    record(sl2, "team.user_delete", {c.RESOURCE_TYPE: "user", c.RESOURCE_ID: "u-9",
                                     c.ACTOR_TYPE: "api_token"}, body=True, severity_number=255)
    plain = sl2.log_records.add(time_unix_nano=now, body=_any("GET /healthz"))
    plain.event_name = "http.access"  # not audit: the filter processor would drop it
    return req, ids


def _events(client, org):
    rows = client.query("SELECT * EXCEPT (received_at, pii_salt) FROM audit.audit_events "
                        "WHERE org_id = {o:String} ORDER BY timestamp, action",
                        parameters={"o": org}).named_results()
    return [dict(r) for r in rows]


def _rejects(client, org):
    return client.query("SELECT reason, event_name FROM audit.audit_rejects WHERE org_id = {o:String}",
                        parameters={"o": org}).result_rows


def _retarget(req, org, ids):
    """The same batch for the exporter: another org and fresh event ids."""
    other = copy.deepcopy(req)
    fresh = {}
    for rl in other.resource_logs:
        for sl in rl.scope_logs:
            for rec in sl.log_records:
                for kv in rec.attributes:
                    if kv.key == c.ORG_ID:
                        kv.value.string_value = org
                    elif kv.key == c.EVENT_ID and kv.value.string_value in ids:
                        fresh[kv.value.string_value] = kv.value.string_value = str(uuid.uuid4())
    return other, fresh


def test_exporter_rows_equal_our_collectors_rows_field_by_field(make_collector, store):
    collector = make_collector()
    req, ids = rich_request("org-ours")
    status, _, _ = post(collector.logs_url, req.SerializeToString())
    assert status == 200
    wait_for(lambda: len(_events(store.client, "org-ours")) == 4)

    theirs, fresh = _retarget(req, "org-otel", ids)
    exporter_insert(store.client, theirs)

    ours, exported = _events(store.client, "org-ours"), _events(store.client, "org-otel")
    assert len(ours) == len(exported) == 4
    by_id = {str(r["event_id"]): r for r in exported}
    for row in ours:
        other = by_id[fresh[str(row["event_id"])]]
        for column in row:
            if column in ("event_id", "org_id"):
                continue
            assert row[column] == other[column], column
    # the rich values arrived as the exporter stringifies them
    login = next(r for r in ours if r["user_id"] == "u-42")
    assert login["details"]["user.roles"] == '["admin","billing"]'
    assert login["details"]["nested"] == '{"a":{"y":"\\u003c\\u0026\\u003e","z":[1,null]},"b":1}'
    assert login["details"]["blob"] == "AP9oaQ==" and login["details"]["tiny"] == "1e-7"
    assert login["trace_id"] == bytes(range(16)).hex() and login["span_id"] == bytes(range(8, 16)).hex()
    # the refused record goes to audit_rejects the same way for both writers
    assert _rejects(store.client, "org-ours") == _rejects(store.client, "org-otel") == [
        ("invalid status", "upmetr.audit.auth.login")]


def test_documented_difference_a_record_with_no_time_at_all(make_collector, store):
    """Ours falls back to the receive time; the exporter writes 0, refused as absurd."""
    collector = make_collector()
    req, _ = rich_request("org-t0")
    for rl in req.resource_logs:
        for sl in rl.scope_logs:
            del sl.log_records[1:]
            sl.log_records[0].time_unix_nano = 0
    del req.resource_logs[1:]
    assert post(collector.logs_url, req.SerializeToString())[0] == 200
    wait_for(lambda: len(_events(store.client, "org-t0")) == 1)
    theirs, _ = _retarget(req, "org-t0-otel", [])
    exporter_insert(store.client, theirs)
    assert _events(store.client, "org-t0-otel") == []
    assert _rejects(store.client, "org-t0-otel") == [("absurd timestamp", "upmetr.audit.auth.login")]


def test_an_exporter_without_event_name_is_refused_not_silently_dropped(store):
    """An exporter older than EventName support INSERTs 15 columns: without the
    guard every row would reach the views with EventName '' and vanish."""
    req, _ = rich_request("org-old")
    with pytest.raises(Exception, match="sent no EventName column") as err:
        exporter_insert(store.client, req, with_event_name=False)
    assert schema.NO_EVENT_NAME_ERROR in str(err.value)
    assert _events(store.client, "org-old") == [] and _rejects(store.client, "org-old") == []
    exporter_insert(store.client, req)  # the same batch from an upgraded exporter
    assert len(_events(store.client, "org-old")) == 4

"""OTLP/HTTP: encodings, JSON quirks, status codes, and that bad input writes nothing."""

import gzip
import json
import time
import uuid
import zlib

import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

from helpers import audit_attrs, count, otlp_request, post, rows, to_json

PB = "application/x-protobuf"


def json_body(records):
    return {"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "api"}}]},
        "scopeLogs": [{"scope": {"name": "upmetr.audit"}, "logRecords": records}],
    }]}


def json_attrs(attrs):
    return [{"key": k, "value": {"stringValue": v}} for k, v in attrs.items()]


def test_json_body_with_every_otlp_quirk_is_stored(collector, store):
    eid = str(uuid.uuid4())
    ts = time.time_ns()
    record = {
        "timeUnixNano": str(ts),                       # 64-bit integer as a string
        "observedTimeUnixNano": ts,                    # ... or as a number
        "severityNumber": 9,                           # enum as an integer
        "severityText": "INFO",
        "eventName": "upmetr.audit.monitor.create",
        "traceId": "5B8EFFF798038103D269B633813FC60C",  # hex, case-insensitive
        "spanId": "eee19b7ec3c1b174",
        "body": {"stringValue": "created"},
        "attributes": json_attrs(audit_attrs(**{
            "log.record.uid": eid, "upmetr.audit.status": "success",
            "upmetr.resource.type": "monitor", "upmetr.resource.id": "mon-1"}))
            + [{"key": "retries", "value": {"intValue": "3"}},
               {"key": "tags", "value": {"arrayValue": {"values": [{"stringValue": "prod"}]}}}],
        "someFutureField": {"nested": True},           # unknown fields are ignored
    }
    status, headers, body = post(collector.logs_url, to_json(json_body([record])),
                                 content_type="application/json")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {}  # no partial_success: everything accepted
    (row,) = rows(store)
    assert str(row["event_id"]) == eid
    assert row["trace_id"] == "5b8efff798038103d269b633813fc60c"
    assert row["span_id"] == "eee19b7ec3c1b174"
    assert row["details"] == {"retries": "3", "tags": '["prod"]', "body": "created"}
    assert row["service_name"] == "api"


def test_zero_time_falls_back_to_observed_time(collector, store):
    observed = time.time_ns() - 60 * 10**9
    req = otlp_request([{"attrs": audit_attrs(), "time_unix_nano": 0,
                         "observed_time_unix_nano": observed}])
    assert post(collector.logs_url, req.SerializeToString())[0] == 200
    (row,) = rows(store)
    assert int(row["timestamp"].timestamp() * 1e6) == observed // 1000


@pytest.mark.parametrize("severity", [-3, -(2**31), 256, 2**31 - 1])
def test_a_severity_number_outside_0_to_255_is_stored_not_a_failed_commit(collector, store, severity):
    # proto3 enums are open: any int32 decodes, and the ingest column is UInt8.
    req = otlp_request([{"attrs": audit_attrs()}])
    req.resource_logs[0].scope_logs[0].log_records[0].severity_number = severity
    assert post(collector.logs_url, req.SerializeToString())[0] == 200
    record = json_body([{"severityNumber": severity, "eventName": "upmetr.audit.auth.login",
                         "timeUnixNano": str(time.time_ns()), "attributes": json_attrs(audit_attrs())}])
    status, _, body = post(collector.logs_url, to_json(record), content_type="application/json")
    assert (status, json.loads(body)) == (200, {})
    assert count(store) == 2


def test_gzip_and_deflate_bodies_are_accepted(collector, store):
    for encoding, compress in (("gzip", gzip.compress), ("deflate", zlib.compress)):
        body = compress(otlp_request([{"attrs": audit_attrs()}]).SerializeToString())
        status, _, _ = post(collector.logs_url, body, headers={"Content-Encoding": encoding})
        assert status == 200
    assert count(store) == 2


def test_every_member_of_a_multi_member_gzip_body_is_read(collector, store):
    members = [gzip.compress(otlp_request([{"attrs": audit_attrs()} for _ in range(n)]).SerializeToString())
               for n in (1, 2)]  # two protobuf messages one after the other are one, merged
    status, _, body = post(collector.logs_url, b"".join(members),
                           headers={"Content-Encoding": "gzip"})
    assert (status, body) == (200, b"")
    assert count(store) == 3


@pytest.mark.parametrize("encoding, compress", [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_data_after_the_compressed_body_is_refused_not_ignored(collector, store, encoding, compress):
    body = compress(otlp_request([{"attrs": audit_attrs()}]).SerializeToString()) + b"trailing"
    status, _, reply = post(collector.logs_url, body, headers={"Content-Encoding": encoding})
    assert status == 400
    assert encoding.encode() in status_pb2.Status.FromString(reply).message.encode()
    assert count(store) == 0


def test_invalid_records_get_partial_success_and_are_quarantined(collector, store):
    good = audit_attrs()
    req = otlp_request([
        {"attrs": good},
        {"event_name": "upmetr.audit.auth.teleport", "attrs": audit_attrs()},
        {"attrs": audit_attrs(**{"upmetr.org.id": None})},
        {"attrs": audit_attrs(**{"client.address": "999.1.1.1"})},
        {"attrs": audit_attrs(), "time_unix_nano": 5},  # 1970: absurd
    ])
    status, headers, body = post(collector.logs_url, req.SerializeToString())
    assert status == 200 and headers["Content-Type"] == PB
    resp = ExportLogsServiceResponse.FromString(body)
    assert resp.partial_success.rejected_log_records == 4
    assert "unknown action (1)" in resp.partial_success.error_message
    assert count(store) == 1
    rejects = {r["reason"]: r for r in rows(store, "SELECT * FROM audit.audit_rejects")}
    assert set(rejects) == {"unknown action", "missing org", "malformed ip", "absurd timestamp"}
    raw = json.loads(rejects["malformed ip"]["raw"])
    assert raw["LogAttributes"]["client.address"] == "999.1.1.1"
    assert raw["ServiceName"] == "billing-api"
    assert collector.metrics.value("upmetr_audit_records_rejected_total",
                                   reason="malformed ip") == 1


BAD_REQUESTS = [
    # (id, content type, body, extra headers, expected status)
    ("protobuf garbage", PB, b"\xff\xff\xff\xff\x0f", {}, 400),
    ("truncated protobuf", PB, otlp_request([{"attrs": audit_attrs()}]).SerializeToString()[:-7],
     {}, 400),
    ("json syntax", "application/json", b'{"resourceLogs": [', {}, 400),
    ("json not an object", "application/json", b"[1, 2]", {}, 400),
    ("json wrong type", "application/json", b'{"resourceLogs": 5}', {}, 400),
    ("json bad hex trace id", "application/json",
     to_json(json_body([{"traceId": "zz" * 16, "eventName": "upmetr.audit.auth.login"}])), {}, 400),
    ("json short span id", "application/json",
     to_json(json_body([{"spanId": "abcd", "eventName": "upmetr.audit.auth.login"}])), {}, 400),
    ("json hex trace id with spaces", "application/json",
     to_json(json_body([{"traceId": "00112233 44556677 8899aabbccddee",
                         "eventName": "upmetr.audit.auth.login"}])), {}, 400),
    ("protobuf 15-byte trace id", PB, otlp_request([{"attrs": audit_attrs()}, {
        "attrs": audit_attrs(), "trace_id": b"\x01" * 15}]).SerializeToString(), {}, 400),
    ("protobuf 9-byte span id", PB, otlp_request([{"attrs": audit_attrs()}, {
        "attrs": audit_attrs(), "trace_id": b"\x01" * 16, "span_id": b"\x01" * 9}]).SerializeToString(),
     {}, 400),
    ("bad gzip", PB, b"not gzip at all", {"Content-Encoding": "gzip"}, 400),
    ("truncated gzip", PB, gzip.compress(b"x" * 1000)[:20], {"Content-Encoding": "gzip"}, 400),
    ("unknown encoding", PB, b"", {"Content-Encoding": "br"}, 415),
    ("unknown content type", "text/plain", b"hello", {}, 415),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_gets_clear_error_and_writes_nothing(collector, store, case):
    _, ctype, body, headers, expected = case
    status, resp_headers, resp_body = post(collector.logs_url, body, content_type=ctype,
                                           headers=headers)
    assert status == expected
    if expected == 400:
        msg = (json.loads(resp_body)["message"] if ctype == "application/json"
               else status_pb2.Status.FromString(resp_body).message)
        assert msg  # says what is wrong
    assert count(store) == 0 and count(store, "audit.audit_rejects") == 0


def test_wrong_method_is_405(collector):
    status, headers, _ = post(collector.logs_url, None, method="GET")
    assert status == 405 and headers["Allow"] == "POST"


@pytest.mark.parametrize("token", [None, "", "test-token-012345678", "test-token-0123456789x"])
def test_missing_or_wrong_token_is_401(collector, store, token):
    body = otlp_request([{"attrs": audit_attrs()}]).SerializeToString()
    status, headers, _ = post(collector.logs_url, body, token=token)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert count(store) == 0


def test_body_over_limit_is_413(make_collector, store):
    col = make_collector(max_body_bytes=64 * 1024)
    big = otlp_request([{"attrs": audit_attrs(), "body": "x" * 70_000}]).SerializeToString()
    assert post(col.logs_url, big)[0] == 413
    assert count(store) == 0


def test_gzip_bomb_is_413_without_inflating_it(make_collector, store):
    col = make_collector(max_body_bytes=1024 * 1024)
    bomb = gzip.compress(b"\0" * (200 * 1024 * 1024), compresslevel=9)  # 200 MiB -> ~200 KiB
    assert len(bomb) < 1024 * 1024
    status, _, body = post(col.logs_url, bomb, headers={"Content-Encoding": "gzip"})
    assert status == 413
    assert "after decompression" in status_pb2.Status.FromString(body).message
    assert count(store) == 0


def test_operational_endpoints(collector):
    status, _, body = post(collector.http_url + "/healthz", None, method="GET")
    assert (status, body) == (200, b"ok\n")
    assert post(collector.http_url + "/readyz", None, method="GET")[0] == 200
    status, _, body = post(collector.http_url + "/metrics", None, method="GET")
    assert status == 200 and b"upmetr_audit_records_accepted_total" in body
    assert b"upmetr_audit_queue_records" in body
    assert post(collector.http_url + "/nope", None, method="GET")[0] == 404

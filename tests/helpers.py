"""Builders for OTLP requests and audit attributes, shared by the tests."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from upmetr_audit.collector.exporters import ClickHouseExporter
from upmetr_audit.shipper import contract as c

TOKEN = "test-token-0123456789"


def audit_attrs(**overrides) -> dict:
    """Attributes of a valid ``auth.login`` failure; keyword names use _ for ."""
    attrs = {
        c.EVENT_ID: str(uuid.uuid4()),
        c.ORG_ID: "org-a",
        c.USER_EMAIL: "ana@example.com",
        c.STATUS: "failure",
        c.CLIENT_ADDRESS: "203.0.113.9",
    }
    attrs.update(overrides)
    return {k: v for k, v in attrs.items() if v is not None}


def _any(value) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if value is None:
        return AnyValue()
    if isinstance(value, list):
        out = AnyValue()
        out.array_value.values.extend(_any(v) for v in value)
        return out
    if isinstance(value, dict):
        out = AnyValue()
        out.kvlist_value.values.extend(KeyValue(key=k, value=_any(v)) for k, v in value.items())
        return out
    return AnyValue(string_value=str(value))


def otlp_request(records, service="billing-api") -> ExportLogsServiceRequest:
    """``records``: dicts with ``event_name``, ``attrs`` and optionally
    ``time_unix_nano``, ``observed_time_unix_nano``, ``body``, ``trace_id``, ``span_id``."""
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.add(key="service.name", value=_any(service))
    sl = rl.scope_logs.add()
    sl.scope.name = c.SCOPE_NAME
    for r in records:
        rec = sl.log_records.add()
        rec.event_name = r.get("event_name", "upmetr.audit.auth.login")
        rec.time_unix_nano = r.get("time_unix_nano", time.time_ns())
        rec.observed_time_unix_nano = r.get("observed_time_unix_nano", 0)
        if "body" in r:
            rec.body.CopyFrom(_any(r["body"]))
        rec.trace_id = r.get("trace_id", b"")
        rec.span_id = r.get("span_id", b"")
        for k, v in r.get("attrs", {}).items():
            rec.attributes.add(key=k, value=_any(v))
    return req


def post(url: str, body: bytes, content_type="application/x-protobuf", token=TOKEN,
         method="POST", headers=None):
    """POST with urllib; returns ``(status, headers, body)`` for any status."""
    h = {"Content-Type": content_type, **(headers or {})}
    if token:
        h["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, headers=h, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def rows(store, sql="SELECT * FROM audit.audit_events ORDER BY timestamp"):
    return list(store.client.query(sql).named_results())


def count(store, table="audit.audit_events") -> int:
    return int(store.client.command(f"SELECT count() FROM {table}"))


def to_json(obj) -> bytes:
    return json.dumps(obj).encode()


class GatedExporter:
    """The real ClickHouse exporter behind a gate that the test opens, so that
    the sending queue fills deterministically while a commit is held."""

    def __init__(self, client, metrics):
        self.inner = ClickHouseExporter(client, metrics)
        self.gate = threading.Event()
        self.holding = threading.Event()

    def export(self, batches):
        self.holding.set()
        assert self.gate.wait(30), "test never opened the gate"
        self.inner.export(batches)


#: Defined for the scripts of :func:`run_on_a_small_disk`.
_SMALL_DISK_PRELUDE = r"""
def fill(path):  # write ``path`` until the disk is full
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"b" * 4096)
        except OSError:
            pass
"""


def run_on_a_small_disk(tmp_path, script: str, *args: str, size: str = "512k"):
    """Run the Python ``script`` with a real disk of ``size`` of its own: a
    tmpfs mounted in a private mount namespace, given as ``sys.argv[1]``
    (``args`` follow), with ``fill(path)`` defined. Returns what the script
    prints, parsed as JSON. Skips without root and unshare(1), which CI here has."""
    import os
    import shutil
    import subprocess
    import sys

    import pytest

    if os.geteuid() != 0 or not shutil.which("unshare") or subprocess.run(
            ["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs root and unshare(1) to mount a small tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    out = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         f'mount -t tmpfs -o size={size} tmpfs "$1" && shift && exec "$@"', "sh",
         str(disk), sys.executable, "-c", _SMALL_DISK_PRELUDE + script, str(disk), *args],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_for(predicate, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def insert_events(client, events) -> list[str]:
    """Insert rows straight into ``audit.audit_events`` (scenario seeding for the
    detector and the page). Each event is a dict of columns; ``timestamp`` is a
    datetime, ``ip`` text; unset columns get their defaults. Returns the ids."""
    import datetime as _dt
    import ipaddress

    from upmetr_audit.collector import schema

    cols = ("event_id", "org_id", "timestamp", "received_at", "category", "action", "status",
            "user_email", "ip")
    rows, ids = [], []
    for e in events:
        ts = e["timestamp"]
        action = e.get("action", "auth.login")
        eid = e.get("event_id") or str(uuid.uuid4())
        ids.append(eid)
        ip = ipaddress.ip_address(e.get("ip", "198.51.100.1"))
        if ip.version == 4:
            ip = ipaddress.IPv6Address(int(ip) | 0xFFFF << 32)
        rows.append([uuid.UUID(eid), e.get("org_id", "org-a"), ts,
                     e.get("received_at", ts + _dt.timedelta(seconds=1)), action.split(".")[0],
                     action, e.get("status", "failure"), e.get("user_email", "ana@example.com"), ip])
    client.insert(schema.EVENTS_TABLE, rows, column_names=list(cols))
    return ids

"""The shipper against the real collector: validation, the wire contract,
retries, dead-letter, restarts."""

import ipaddress
import json
import logging
import time

import pytest
from opentelemetry.sdk.trace import TracerProvider

from upmetr_audit.shipper import AuditLogger, AuditLogHandler, SpoolFullError
from upmetr_audit.shipper.catalog import ACTIONS

from helpers import TOKEN, audit_attrs, count, otlp_request, rows, wait_for


@pytest.fixture
def make_shipper(tmp_path):
    made = []

    def make(endpoint, protocol="http/protobuf", **kwargs):
        kwargs.setdefault("spool_dir", str(tmp_path / "spool"))
        kwargs.setdefault("backoff_max_s", 0.5)
        shipper = AuditLogger(service_name="billing-api", endpoint=endpoint, protocol=protocol,
                              headers={"authorization": f"Bearer {TOKEN}"}, **kwargs)
        made.append(shipper)
        return shipper

    yield make
    for s in made:
        s.shutdown(timeout_s=1)


def http_endpoint(collector):
    return collector.logs_url


def grpc_endpoint(collector):
    return f"http://{collector.grpc_target}"


@pytest.mark.parametrize("protocol,endpoint", [("http/protobuf", http_endpoint),
                                               ("grpc", grpc_endpoint)])
def test_events_arrive_with_the_wire_contract(collector, store, make_shipper, protocol, endpoint):
    audit = make_shipper(endpoint(collector), protocol)
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("req") as span:
        login = audit.auth.login(org="acme", user="ana@acme.test", status="failure",
                                 ip="2001:db8::7", reason="invalid password", user_agent="curl/8")
    update = audit.monitor.update(org="acme", user="ana@acme.test", resource="mon-1",
                                  changes={"interval": {"before": 60, "after": 30}})
    assert audit.flush(30)
    by_id = {str(r["event_id"]): r for r in rows(store)}
    r = by_id[login]
    assert (r["action"], r["status"], r["reason"]) == ("auth.login", "failure", "invalid password")
    assert r["ip"] == ipaddress.IPv6Address("2001:db8::7") and r["user_agent"] == "curl/8"
    assert r["service_name"] == "billing-api"
    assert r["trace_id"] == format(span.get_span_context().trace_id, "032x")
    u = by_id[update]
    assert (u["resource_type"], u["resource_id"]) == ("monitor", "mon-1")
    assert json.loads(u["changes"]) == {"interval": {"before": 60, "after": 30}}
    assert login.count("-") == 4 and login[14] == "7"  # a UUIDv7
    stats = audit.stats()
    assert stats["sent"] == 2 and stats["pending"] == 0


@pytest.mark.parametrize("call,message", [
    (lambda a: a.emit("auth.logn", org="o", user="u@x", status="success"),
     "unknown audit action 'auth.logn'; did you mean 'auth.login'?"),
    (lambda a: a.emit("auth.login", org="", user="u@x", status="success"), "'org' is missing"),
    (lambda a: a.emit("auth.login", org="o", user=None, status="success"), "'user' is missing"),
    (lambda a: a.emit("auth.login", org="o", user="u@x", status="ok"), "status must be"),
    (lambda a: a.emit("monitor.delete", org="o", user="u@x", status="success"),
     "needs the monitor it acts on"),
    (lambda a: a.emit("monitor.delete", org="o", user="u@x", status="success",
                      resource=("incident", "i1")), "resource type must be 'monitor'"),
    (lambda a: a.auth.login(org="o", user="u@x", status="failure", ip="300.1.1.1"),
     "is not an IPv4 or IPv6 address"),
    (lambda a: a.settings.update(org="o", user="u@x", changes=[1, 2]), "changes must be a JSON object"),
])
def test_invalid_events_raise_and_write_nothing(make_shipper, tmp_path, call, message):
    audit = make_shipper("http://127.0.0.1:9/v1/logs")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("?", r"\?")):
        call(audit)
    assert audit.stats()["pending"] == 0


def test_typed_helpers_exist_for_every_action(make_shipper):
    audit = make_shipper("http://127.0.0.1:9/v1/logs")
    for action in ACTIONS.values():
        assert callable(getattr(getattr(audit, action.category), action.verb))
    with pytest.raises(AttributeError):
        audit.auht  # noqa: B018 - a typo fails at once


def test_events_wait_while_the_collector_is_down_then_arrive(make_collector, store, make_shipper):
    collector = make_collector()
    endpoint = collector.logs_url
    collector.shutdown()  # the collector is down
    audit = make_shipper(endpoint)
    ids = [audit.auth.logout(org="acme", user=f"u{i}@acme.test") for i in range(50)]
    deadline = time.monotonic() + 10
    while audit.stats()["retried"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert audit.stats()["pending"] == 50 and count(store) == 0
    port = int(endpoint.split(":")[2].split("/")[0])
    make_collector(otlp_http_addr=f"127.0.0.1:{port}")  # back on the same port
    assert audit.flush(30)
    assert {str(r[0]) for r in store.client.query(
        "SELECT event_id FROM audit.audit_events").result_rows} == set(ids)


def test_a_400_goes_to_dead_letter_and_later_events_still_flow(collector, store, make_shipper,
                                                                 tmp_path):
    class Corrupting:
        """Makes the next request undecodable, as a broken proxy would."""
        def __init__(self, inner):
            self.inner, self.corrupt = inner, 1

        def send(self, body):
            if self.corrupt:
                self.corrupt -= 1
                return self.inner.send(b"\xff\xff\xff" + body)
            return self.inner.send(body)

        def close(self):
            self.inner.close()

    audit = make_shipper(collector.logs_url)
    audit.processor.sender = Corrupting(audit.processor.sender)
    first = audit.auth.logout(org="acme", user="a@acme.test")
    assert audit.flush(30)
    second = audit.auth.logout(org="acme", user="b@acme.test")
    assert audit.flush(30)
    stored = {str(r[0]) for r in store.client.query("SELECT event_id FROM audit.audit_events").result_rows}
    assert stored == {second}
    (line,) = (tmp_path / "spool" / "dead-letter.jsonl").read_text().splitlines()
    dead = json.loads(line)
    assert dead["reason"] == "permanent" and "HTTP 400" in dead["message"]
    assert first in json.dumps(dead["request"])
    assert audit.stats()["dead_lettered"] == 1


def test_retry_after_is_honoured(make_gated_collector, store, make_shipper):
    col = make_gated_collector(export_timeout_s=0.2)
    audit = make_shipper(col.logs_url, backoff_max_s=2.0)
    audit.auth.logout(org="acme", user="a@acme.test")
    wait_for(lambda: audit.stats()["retried"] >= 1)
    refused_at = time.monotonic()
    retries = audit.stats()["retried"]
    time.sleep(0.6)
    # Retry-After is 1 s (within the bounds, 0.5 to 2 s): no second attempt within it,
    # although the backoff would retry after 0.5 s (a Retry-After out of the bounds
    # is clamped: test_shipper_hardening.py)
    assert audit.stats()["retried"] == retries
    col.gate.gate.set()
    assert audit.flush(30)
    assert time.monotonic() - refused_at >= 1.0
    assert count(store) >= 1


def test_full_spool_raises(make_shipper):
    audit = make_shipper("http://127.0.0.1:9/v1/logs", spool_max_bytes=64 * 1024,
                         emit_timeout_s=0.2)
    with pytest.raises(SpoolFullError):
        for i in range(10_000):
            audit.auth.logout(org="acme", user=f"user{i}@acme.test", note="x" * 200)


def test_logging_handler_emits_through_the_same_path(collector, store, make_shipper):
    audit = make_shipper(collector.logs_url)
    log = logging.getLogger("test.audit.handler")
    log.addHandler(AuditLogHandler(audit))
    log.propagate = False
    log.warning("bad password for ana", extra={"audit": {
        "action": "auth.login", "org": "acme", "user": "ana@acme.test", "status": "failure",
        "ip": "198.51.100.1"}})
    log.warning("an ordinary log line")  # no audit mapping: ignored
    with pytest.raises(ValueError, match="unknown audit action"):
        log.warning("typo", extra={"audit": {"action": "auth.lgin", "org": "a", "user": "u",
                                             "status": "success"}})
    assert audit.flush(30)
    (row,) = rows(store)
    assert row["reason"] == "bad password for ana" and row["action"] == "auth.login"


def test_committed_helpers_equal_a_fresh_rendering_of_the_catalog():
    import pathlib

    from upmetr_audit.shipper import codegen
    committed = (pathlib.Path(__file__).parent.parent / "shipper" / "helpers.py").read_text()
    assert committed == codegen.render(), "regenerate it: see shipper/codegen.py"


@pytest.mark.parametrize("action", list(ACTIONS))
def test_every_catalog_action_validates_and_enforces_its_resource(action):
    from upmetr_audit.shipper import contract
    from upmetr_audit.shipper.logger import build_attributes
    spec = ACTIONS[action]
    kwargs = {"org": "o", "user": "u@x.test", "status": "success"}
    if spec.resource_type:
        with pytest.raises(ValueError, match=f"needs the {spec.resource_type}"):
            build_attributes(action, **kwargs)
        kwargs["resource"] = "r-1"
    attrs = build_attributes(action, **kwargs)
    strings = {k: str(v) for k, v in attrs.items()}
    assert contract.reject_reason("upmetr.audit." + action, strings, time.time_ns(),
                                  time.time_ns()) is None


def test_shutdown_respects_its_timeout_and_reports_what_is_left(make_shipper):
    audit = make_shipper("http://127.0.0.1:9/v1/logs")  # nothing listens there
    for i in range(5):
        audit.auth.logout(org="acme", user=f"u{i}@acme.test")
    time.sleep(0.05)
    stats = audit.stats()
    assert stats["pending"] == 5 and stats["oldest_pending_age_s"] > 0
    start = time.monotonic()
    assert audit.flush(timeout_s=0.3) is False
    assert audit.shutdown(timeout_s=0.5) == 5
    assert time.monotonic() - start < 5


def test_grpc_sender_reads_retry_info(make_gated_collector):
    from upmetr_audit.shipper.transport import RETRY, GrpcSender

    col = make_gated_collector(export_timeout_s=0.1)
    sender = GrpcSender(col.grpc_target, {"authorization": f"Bearer {TOKEN}"})
    result = sender.send(otlp_request([{"attrs": audit_attrs()}]).SerializeToString())
    col.gate.gate.set()
    sender.close()
    assert result.outcome == RETRY and result.retry_after_s == 1.0
    assert "UNAVAILABLE" in result.message


@pytest.mark.parametrize("value,expected", [("3", 3.0), ("0", 0.0), ("", None), ("soon", None)])
def test_retry_after_forms(value, expected):
    from upmetr_audit.shipper.transport import parse_retry_after
    assert parse_retry_after(value) == expected


def test_retry_after_http_date():
    import email.utils

    from upmetr_audit.shipper.transport import parse_retry_after
    now = time.time()
    assert 9 <= parse_retry_after(email.utils.formatdate(now + 10, usegmt=True), now=now) <= 10


@pytest.mark.parametrize("env,expected", [
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, "http://c:4318/v1/logs"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://l:1/x"},
     "http://l:1/x"),
    ({}, "http://localhost:4318/v1/logs"),
])
def test_sender_endpoint_from_the_standard_variables(env, expected):
    from upmetr_audit.shipper.transport import sender_from_env
    sender = sender_from_env(environ=env)
    assert sender.endpoint == expected
    sender.close()


def test_headers_protocol_and_compression_from_the_standard_variables():
    from upmetr_audit.shipper.transport import GrpcSender, sender_from_env
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
           "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20abc,x-team=core",
           "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}
    sender = sender_from_env(environ=env)
    assert isinstance(sender, GrpcSender) and sender.target == "c:4317"
    assert dict(sender.metadata) == {"authorization": "Bearer abc", "x-team": "core"}
    sender.close()
    with pytest.raises(ValueError, match="unsupported OTLP protocol"):
        sender_from_env(environ={"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    with pytest.raises(ValueError, match="invalid OTLP header"):
        sender_from_env(environ={"OTEL_EXPORTER_OTLP_HEADERS": "novalue"})


def test_records_go_in_full_batches_and_a_flush_sends_the_rest_at_once(collector, store,
                                                                        make_shipper):
    def requests():
        return collector.metrics.value("upmetr_audit_requests_total", transport="http",
                                       outcome="200")

    # A linger far longer than the test: only full batches and the flush send.
    audit = make_shipper(collector.logs_url, max_batch=50, linger_s=600)
    ids = [audit.auth.logout(org="acme", user=f"u{i}@x.test") for i in range(120)]
    # two full batches go without waiting; the other 20 wait for a full batch
    wait_for(lambda: count(store) == 100 and requests() == 2 and audit.stats()["pending"] == 20)
    assert audit.flush(30)                 # ... or a flush, which sends it at once
    assert requests() == 3
    stored = {str(r[0]) for r in store.client.query(
        "SELECT event_id FROM audit.audit_events").result_rows}
    assert stored == set(ids)

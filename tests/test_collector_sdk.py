"""The real OTel Python SDK exporters (HTTP and gRPC) as clients of the collector."""

import ipaddress
import json
import time
import uuid

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from helpers import TOKEN, count, rows


def sdk_logger(collector, transport, token=TOKEN):
    if transport == "http":
        exporter = HttpExporter(endpoint=collector.logs_url,
                                headers={"authorization": f"Bearer {token}"})
    else:
        exporter = GrpcExporter(endpoint=collector.grpc_target, insecure=True,
                                headers=(("authorization", f"Bearer {token}"),))
    provider = LoggerProvider(resource=Resource.create({"service.name": "team-service"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    return provider, provider.get_logger("upmetr.audit")


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_sdk_exporter_events_are_stored_with_every_field(collector, store, transport):
    provider, logger = sdk_logger(collector, transport)
    tracer = TracerProvider().get_tracer("t")
    login_id, update_id = str(uuid.uuid4()), str(uuid.uuid4())
    changes = {"role": {"before": "viewer", "after": "admin"}}
    ts = time.time_ns() - 5_000_000_000
    with tracer.start_as_current_span("request") as span:
        logger.emit(
            event_name="upmetr.audit.auth.login", timestamp=ts, body="login attempt",
            context=trace.set_span_in_context(span),
            attributes={
                "log.record.uid": login_id, "upmetr.org.id": "org-7",
                "user.email": "eve@example.com", "upmetr.audit.status": "failure",
                "client.address": "2001:db8:85a3::8a2e:370:7334",
                "upmetr.audit.reason": "invalid password", "user_agent.original": "curl/8.5",
                "session.id": "sess-1", "upmetr.actor.type": "user", "user.id": "u-42",
                "http.route": "/login", "attempt": 3, "mfa.required": True,
            })
        span_ctx = span.get_span_context()
    logger.emit(
        event_name="upmetr.audit.team.user_update", timestamp=ts + 1000,
        attributes={
            "log.record.uid": update_id, "upmetr.org.id": "org-7",
            "user.email": "admin@example.com", "upmetr.audit.status": "success",
            "upmetr.resource.type": "user", "upmetr.resource.id": "u-42",
            "client.address": "198.51.100.4", "upmetr.audit.changes": json.dumps(changes),
        })
    provider.shutdown()

    login, update = rows(store)
    assert login["event_id"] == uuid.UUID(login_id)
    assert login["org_id"] == "org-7"
    assert login["category"] == "auth" and login["action"] == "auth.login"
    assert login["status"] == "failure"
    assert login["user_email"] == "eve@example.com" and login["user_id"] == "u-42"
    assert login["ip"] == ipaddress.IPv6Address("2001:db8:85a3::8a2e:370:7334")
    assert login["reason"] == "invalid password"
    assert login["user_agent"] == "curl/8.5" and login["session_id"] == "sess-1"
    assert login["actor_type"] == "user"
    assert login["service_name"] == "team-service"
    assert login["trace_id"] == format(span_ctx.trace_id, "032x")
    assert login["span_id"] == format(span_ctx.span_id, "016x")
    assert login["details"] == {"http.route": "/login", "attempt": "3", "mfa.required": "true",
                                "body": "login attempt"}
    assert int(login["timestamp"].timestamp() * 1e6) == ts // 1000
    assert login["received_at"] >= login["timestamp"]

    assert update["action"] == "team.user_update" and update["status"] == "success"
    assert (update["resource_type"], update["resource_id"]) == ("user", "u-42")
    assert json.loads(update["changes"]) == changes
    # IPv4 is stored IPv4-mapped in the IPv6 column
    assert update["ip"] == ipaddress.IPv6Address("::ffff:198.51.100.4")
    assert update["details"] == {}
    assert count(store, "audit.audit_rejects") == 0
    assert collector.summary()["accepted"] == 2


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_sdk_exporter_with_wrong_token_stores_nothing(collector, store, transport):
    provider, logger = sdk_logger(collector, transport, token="wrong")
    logger.emit(event_name="upmetr.audit.auth.logout", timestamp=time.time_ns(),
                attributes={"log.record.uid": str(uuid.uuid4()), "upmetr.org.id": "o",
                            "user.email": "a@b.c", "upmetr.audit.status": "success"})
    provider.shutdown()
    assert count(store) == 0
    outcome = "401" if transport == "http" else "UNAUTHENTICATED"
    assert collector.metrics.value("upmetr_audit_requests_total",
                                   transport=transport, outcome=outcome) == 1


def test_non_audit_log_records_are_counted_and_ignored(collector, store):
    provider, logger = sdk_logger(collector, "http")
    logger.emit(event_name="checkout.completed", timestamp=time.time_ns(), body="not audit")
    logger.emit(body="plain log line", timestamp=time.time_ns())
    provider.shutdown()
    assert count(store) == 0 and count(store, "audit.audit_rejects") == 0
    assert collector.summary()["ignored"] == 2

"""Back-pressure: a full queue or a failing ClickHouse makes clients retry;
nothing is accepted and then dropped, and the OTel SDK's retry gets through."""

import threading
import time
import uuid

import grpc
import pytest
from google.rpc import error_details_pb2

from helpers import TOKEN, audit_attrs, count, otlp_request, post, wait_for
from test_collector_sdk import sdk_logger

EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


@pytest.fixture
def gated(make_gated_collector):
    col = make_gated_collector(queue_size_records=2)
    # Fill the queue: a 2-record request is held inside the exporter.
    body = otlp_request([{"attrs": audit_attrs()}, {"attrs": audit_attrs()}]).SerializeToString()
    col.first = threading.Thread(target=post, args=(col.logs_url, body))
    col.first.start()
    assert col.gate.holding.wait(10)
    yield col
    col.gate.gate.set()
    col.first.join(10)


def test_full_queue_answers_503_with_retry_after(gated, store):
    body = otlp_request([{"attrs": audit_attrs()}]).SerializeToString()
    status, headers, _ = post(gated.logs_url, body)
    assert status == 503 and headers["Retry-After"] == "1"
    gated.gate.gate.set()
    gated.first.join(10)
    assert count(store) == 2  # the held request committed; the refused one was not written


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_sdk_client_retries_through_a_full_queue(gated, store, transport):
    provider, logger = sdk_logger(gated, transport)
    eid = str(uuid.uuid4())
    sender = threading.Thread(target=logger.emit, kwargs=dict(
        event_name="upmetr.audit.auth.login", timestamp=time.time_ns(),
        attributes=audit_attrs(**{"log.record.uid": eid})))
    sender.start()
    refused = "503" if transport == "http" else "UNAVAILABLE"
    wait_for(lambda: gated.metrics.value("upmetr_audit_requests_total",
                                         transport=transport, outcome=refused) >= 1)
    gated.gate.gate.set()  # ClickHouse is writable again; the SDK's retry must land
    sender.join(30)
    provider.shutdown()
    ids = {str(r[0]) for r in store.client.query("SELECT event_id FROM audit.audit_events").result_rows}
    assert eid in ids and count(store) == 3


def test_grpc_backpressure_is_unavailable_with_retry_info(gated):
    with grpc.insecure_channel(gated.grpc_target) as channel:
        call = channel.unary_unary(EXPORT)
        with pytest.raises(grpc.RpcError) as err:
            call(otlp_request([{"attrs": audit_attrs()}]).SerializeToString(),
                 metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    trailers = dict(err.value.trailing_metadata())
    info = error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"])
    assert info.retry_delay.seconds == 1


def test_clickhouse_refusing_inserts_makes_clients_retry(collector, store):
    body = lambda: otlp_request([{"attrs": audit_attrs()}]).SerializeToString()  # noqa: E731
    assert post(collector.logs_url, body())[0] == 200
    # Real ClickHouse back-pressure: TOO_MANY_PARTS once a partition has a part.
    store.client.command("ALTER TABLE audit.audit_events MODIFY SETTING parts_to_throw_insert = 1")
    status, headers, _ = post(collector.logs_url, body())
    assert status == 503 and headers["Retry-After"] == "1"
    assert collector.metrics.value("upmetr_audit_insert_failures_total") == 1
    assert count(store) == 1

    provider, logger = sdk_logger(collector, "http")
    sender = threading.Thread(target=logger.emit, kwargs=dict(
        event_name="upmetr.audit.auth.login", timestamp=time.time_ns(), attributes=audit_attrs()))
    sender.start()
    wait_for(lambda: collector.metrics.value("upmetr_audit_insert_failures_total") >= 2)
    store.client.command("ALTER TABLE audit.audit_events MODIFY SETTING parts_to_throw_insert = 3000")
    sender.join(30)
    provider.shutdown()
    assert count(store) == 2

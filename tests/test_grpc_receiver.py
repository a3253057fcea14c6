"""OTLP/gRPC status codes for bad input; nothing is written."""

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

from upmetr_audit.collector.receivers.grpc import GrpcReceiver
from upmetr_audit.collector.receivers.http import HttpReceiver

from helpers import TOKEN, audit_attrs, count, otlp_request

EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


def call(collector, body: bytes, token=TOKEN):
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(collector.grpc_target) as channel:
        return channel.unary_unary(EXPORT)(body, metadata=metadata, timeout=10)


def test_undecodable_body_is_invalid_argument(collector, store):
    with pytest.raises(grpc.RpcError) as err:
        call(collector, b"\xff\xff\xff\xff\x0f")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid protobuf" in err.value.details()
    assert count(store) == 0


def test_a_trace_id_of_the_wrong_length_is_invalid_argument(collector, store):
    req = otlp_request([{"attrs": audit_attrs()}, {"attrs": audit_attrs(), "trace_id": b"\x01" * 17}])
    with pytest.raises(grpc.RpcError) as err:
        call(collector, req.SerializeToString())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "trace id must be 16 bytes, not 17" in err.value.details()
    assert count(store) == 0


@pytest.mark.parametrize("token", [None, "nope"])
def test_missing_or_wrong_token_is_unauthenticated(collector, store, token):
    with pytest.raises(grpc.RpcError) as err:
        call(collector, otlp_request([{"attrs": audit_attrs()}]).SerializeToString(), token=token)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert count(store) == 0


def test_invalid_records_get_partial_success(collector, store):
    req = otlp_request([{"attrs": audit_attrs()},
                        {"attrs": audit_attrs(**{"upmetr.audit.status": "maybe"})}])
    resp = ExportLogsServiceResponse.FromString(call(collector, req.SerializeToString()))
    assert resp.partial_success.rejected_log_records == 1
    assert "invalid status" in resp.partial_success.error_message
    assert count(store) == 1 and count(store, "audit.audit_rejects") == 1


def test_message_over_limit_is_resource_exhausted(make_collector, store):
    col = make_collector(max_body_bytes=64 * 1024)
    big = otlp_request([{"attrs": audit_attrs(), "body": "x" * 70_000}]).SerializeToString()
    with pytest.raises(grpc.RpcError) as err:
        call(col, big)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert count(store) == 0


def test_a_second_receiver_cannot_share_the_port_of_a_running_one(collector):
    # grpcio's default SO_REUSEPORT would let it bind, and split the traffic.
    port = int(collector.grpc_target.rsplit(":", 1)[1])
    with pytest.raises(OSError, match=f"cannot listen for OTLP/gRPC on 127.0.0.1:{port}"):
        GrpcReceiver(collector, "127.0.0.1", port)
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{collector.http.port} for otlp-http"):
        HttpReceiver(collector, "127.0.0.1", collector.http.port)


def test_a_collector_that_cannot_take_its_grpc_port_stops_what_it_started(collector, store):
    from upmetr_audit.collector.app import Collector, CollectorSettings

    port = int(collector.grpc_target.rsplit(":", 1)[1])
    second = Collector(store, CollectorSettings(otlp_http_addr="127.0.0.1:0",
                                                otlp_grpc_addr=f"127.0.0.1:{port}",
                                                ingest_tokens=(TOKEN,)))
    with pytest.raises(OSError, match=f"cannot listen for OTLP/gRPC on 127.0.0.1:{port}"):
        second.start()
    # Its HTTP port is let go and its writer thread stopped: nothing half-running.
    HttpReceiver(collector, "127.0.0.1", second.http.port).shutdown()
    assert not second.pipeline._thread.is_alive() and not second.ready

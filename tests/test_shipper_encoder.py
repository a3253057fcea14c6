"""The shipper's record encoder writes exactly the bytes of the SDK's
``encode_logs([record])``: the spool and the wire must not change."""

import time

from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.sdk._logs import LoggerProvider, LogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from upmetr_audit.shipper.durable import RecordEncoder


class _Keep(LogRecordProcessor):
    def __init__(self):
        self.records = []

    def on_emit(self, log_record):
        self.records.append(log_record)

    def shutdown(self):
        pass

    def force_flush(self, timeout_millis=0):
        return True


def _records():
    keep = _Keep()
    tracer = TracerProvider().get_tracer("t")
    for resource in (Resource.create({"service.name": "api", "service.version": "1"}),
                     Resource({}, schema_url="https://example.test/schema")):
        provider = LoggerProvider(resource=resource)
        provider.add_log_record_processor(keep)
        for logger in (provider.get_logger("upmetr.audit"),
                       provider.get_logger("upmetr.audit", "1.2", "https://example.test/s", {"a": "b"}),
                       provider.get_logger("")):
            logger.emit(event_name="upmetr.audit.auth.login", timestamp=time.time_ns(),
                        attributes={"user.email": "é" * 200, "n": 3, "ok": True, "l": ["x", "y"]})
            with tracer.start_as_current_span("request"):
                logger.emit(event_name="upmetr.audit.monitor.update", body={"k": 1.5})
            logger.emit(body="no event name, no attributes")
    return keep.records


def test_bytes_equal_the_sdk_encoder_for_every_resource_scope_and_record_kind():
    encoder = RecordEncoder()
    records = _records()
    assert len(records) == 18
    for record in records:
        assert encoder.encode(record) == encode_logs([record]).SerializeToString()
    for record in reversed(records):  # switching back and forth between resources and scopes
        assert encoder.encode(record) == encode_logs([record]).SerializeToString()

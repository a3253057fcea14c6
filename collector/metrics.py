"""The collector's Prometheus metrics, in a registry of its own per collector."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "upmetr_audit_requests_total", "OTLP export requests, by transport and outcome.",
            ["transport", "outcome"], registry=r)
        self.received = Counter(
            "upmetr_audit_records_received_total", "Audit log records received.", registry=r)
        self.accepted = Counter(
            "upmetr_audit_records_accepted_total", "Audit records committed to audit_events.",
            registry=r)
        self.rejected = Counter(
            "upmetr_audit_records_rejected_total", "Audit records refused and quarantined, by reason.",
            ["reason"], registry=r)
        self.duplicates = Counter(
            "upmetr_audit_records_duplicate_total",
            "Audit records already stored (a retry), acknowledged and not written again.",
            registry=r)
        self.ignored = Counter(
            "upmetr_audit_records_ignored_total", "Log records that are not audit events.",
            registry=r)
        self.insert_seconds = Histogram(
            "upmetr_audit_insert_duration_seconds", "Time to commit one group of rows to ClickHouse.",
            registry=r, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.insert_failures = Counter(
            "upmetr_audit_insert_failures_total", "Failed commits to ClickHouse.", registry=r)
        self.queue_records = Gauge(
            "upmetr_audit_queue_records", "Records waiting to be committed.", registry=r)

    def value(self, name: str, **labels) -> float:
        """Read one sample back, e.g. ``value("upmetr_audit_records_accepted_total")``."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def rejected_total(self) -> float:
        return sum(s.value for m in self.rejected.collect() for s in m.samples
                   if s.name.endswith("_total"))

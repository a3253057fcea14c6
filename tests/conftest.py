import os

import pytest

from upmetr_audit.collector import store as store_mod
from upmetr_audit.collector.app import Collector, CollectorSettings

from helpers import TOKEN, GatedExporter


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """No UPMETR_AUDIT_* or OTEL_* setting leaks into a test from the outside."""
    for key in list(os.environ):
        if key.startswith(("UPMETR_AUDIT_", "OTEL_")):
            monkeypatch.delenv(key)


@pytest.fixture
def store(tmp_path):
    """A fresh, migrated embedded store in a temp dir (one per test)."""
    s = store_mod.open_store(f"chdb://{tmp_path}/clickhouse")
    store_mod.migrate(s.client)
    yield s
    s.close()


@pytest.fixture
def make_collector(store):
    """Start collectors on free ports; all are shut down after the test."""
    started = []

    def make(exporter_factory=None, **overrides):
        settings = CollectorSettings(**{
            "otlp_http_addr": "127.0.0.1:0", "otlp_grpc_addr": "127.0.0.1:0",
            "ingest_tokens": (TOKEN,), **overrides})
        col = (Collector(store, settings, exporter_factory) if exporter_factory
               else Collector(store, settings))
        col.start()
        started.append(col)
        col.http_url = f"http://127.0.0.1:{col.http.port}"
        col.logs_url = col.http_url + "/v1/logs"
        col.grpc_target = f"127.0.0.1:{col.grpc.port}"
        return col

    yield make
    for col in started:
        col.shutdown()


@pytest.fixture
def collector(make_collector):
    return make_collector()


@pytest.fixture
def make_gated_collector(make_collector):
    """A collector whose ClickHouse exporter waits behind ``collector.gate``
    (a :class:`helpers.GatedExporter`) until the test opens it."""

    def make(**overrides):
        holder = {}

        def factory(client, metrics):
            holder["exporter"] = GatedExporter(client, metrics)
            return holder["exporter"]

        col = make_collector(exporter_factory=factory, **overrides)
        col.gate = holder["exporter"]
        return col

    return make

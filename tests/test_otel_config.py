"""otel-config.yaml (the official Collector path) keeps the audit invariants.

No otelcol binary runs here: the file is parsed and checked structurally, and
the filter's OTTL condition is evaluated for sample event names."""

import re
from pathlib import Path

import pytest
import yaml

from upmetr_audit.collector import schema
from upmetr_audit.shipper.catalog import EVENT_NAME_PREFIX

CONFIG = Path(__file__).resolve().parent.parent / "otel-config.yaml"
ENV_REF = re.compile(r"\$\{env:([A-Z_][A-Z0-9_]*)(?::-[^}]*)?\}")


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load(CONFIG.read_text())


@pytest.fixture(scope="module")
def exporter(config):
    return config["exporters"]["clickhouse"]


def test_exporter_writes_our_ingest_table_without_ttl_or_schema(exporter):
    assert exporter["database"] == schema.DATABASE
    assert f"{exporter['database']}.{exporter['logs_table_name']}" == schema.INGEST_TABLE
    assert exporter["create_schema"] is False
    assert exporter["ttl"] == 0 and str(exporter["ttl"]) == "0"
    assert exporter["async_insert"] is False


def test_endpoint_and_credentials_come_from_the_environment(exporter):
    for key in ("endpoint", "username", "password"):
        assert ENV_REF.fullmatch(str(exporter[key])), key
    assert "${env:CLICKHOUSE_PASSWORD}" == exporter["password"]  # no default password


def test_retries_never_give_up(exporter):
    retry = exporter["retry_on_failure"]
    assert retry["enabled"] is True
    assert retry["max_elapsed_time"] == 0  # exporterhelper: 0 = retries never stop


def test_persistent_queue_is_wired(config, exporter):
    queue = exporter["sending_queue"]
    assert queue["enabled"] is True and queue["block_on_overflow"] is True
    storage = queue["storage"]
    assert storage.split("/")[0] == "file_storage"
    ext = config["extensions"][storage]
    assert ext["fsync"] is True and ext["create_directory"] is True
    assert storage in config["service"]["extensions"]
    # batching the way the exporter README recommends: in the queue, >= 5000 rows
    assert queue["batch"]["min_size"] >= 5000 and "batch" not in config.get("processors", {})


def test_receivers_share_bearer_token_auth_on_configurable_addresses(config):
    protocols = config["receivers"]["otlp"]["protocols"]
    assert set(protocols) == {"grpc", "http"}
    for name, proto in protocols.items():
        assert proto["auth"]["authenticator"] == "bearertokenauth"
        var = ENV_REF.fullmatch(proto["endpoint"])[1]
        assert var == f"UPMETR_AUDIT_OTLP_{name.upper()}_ADDR"  # our collector's setting names
    assert config["extensions"]["bearertokenauth"]["token"] == "${env:UPMETR_AUDIT_INGEST_TOKEN}"


def test_every_component_is_defined_and_used(config):
    service = config["service"]
    used = {"extensions": set(service["extensions"])}
    for pipeline in service["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            used.setdefault(kind, set()).update(pipeline.get(kind, []))
    for kind in ("receivers", "processors", "exporters", "extensions"):
        assert used.get(kind, set()) == set(config.get(kind, {})), kind
    # components referenced from inside other components are defined and listed too
    for proto in config["receivers"]["otlp"]["protocols"].values():
        assert proto["auth"]["authenticator"] in used["extensions"]
    assert set(config["extensions"]) == {"health_check", "bearertokenauth", "file_storage/queue"}
    (pipeline,) = service["pipelines"].values()
    assert pipeline["processors"][0] == "memory_limiter"  # must come first
    assert pipeline["exporters"] == ["clickhouse"]


def _ottl_string(literal: str) -> str:
    """An OTTL string literal's value (\\\\ and \\" are its escapes)."""
    return re.sub(r'\\(["\\])', r"\1", literal)


def _filter_drops(condition: str, event_name: str) -> bool:
    """The filter processor drops a record when its condition is true.
    ``IsMatch`` is Go's regexp MatchString (unanchored search); RE2 and Python
    agree on this pattern (anchors, escaped dots)."""
    m = re.fullmatch(r'not IsMatch\(log\.event_name, "((?:[^"\\]|\\.)*)"\)', condition)
    assert m, condition
    return not re.search(_ottl_string(m[1]), event_name)


NAMES = ["upmetr.audit.auth.login", "upmetr.audit.", "upmetr.audit.x.y.z", "upmetr.audi",
         "upmetr.auditX.auth.login", "upmetrXaudit.auth.login", "upmetr.audit", "",
         "xupmetr.audit.auth.login", "UPMETR.AUDIT.auth.login", " upmetr.audit.a",
         "other.upmetr.audit.a", "upmetr.audit\n.a", "\nupmetr.audit.a"]


@pytest.mark.parametrize("name", NAMES, ids=[repr(n) for n in NAMES])
def test_filter_keeps_exactly_the_upmetr_audit_prefix(config, name):
    (condition,) = config["processors"]["filter/audit"]["log_conditions"]
    assert _filter_drops(condition, name) == (not name.startswith(EVENT_NAME_PREFIX))


def test_filter_pattern_is_the_escaped_prefix(config):
    (condition,) = config["processors"]["filter/audit"]["log_conditions"]
    pattern = _ottl_string(re.search(r'"(.*)"', condition)[1])
    assert pattern == "^" + re.escape(EVENT_NAME_PREFIX)

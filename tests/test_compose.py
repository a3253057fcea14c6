"""docker-compose.yml, checked structurally (no Docker engine runs here):
services, commands against the real CLI, mounts, variables, ports, health
checks, and the database users against `db grants`."""

import re
from pathlib import Path
from urllib.parse import urlsplit

import click
import pytest
import yaml

from upmetr_audit.collector import grants
from upmetr_audit.collector.cli import cli

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = {"web": "web", "seal": "sealer", "detect": "detector"}
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
#: Read by code outside the click options.
EXTRA_ENV = {"UPMETR_AUDIT_SECRET_KEY"} | {a.password_env for a in grants.APPS}


def _env(service: str) -> dict:
    return SERVICES[service].get("environment", {})


def _command(args: list[str]) -> click.Command | None:
    cmd = cli
    for word in args:
        if not isinstance(cmd, click.Group) or word not in cmd.commands:
            return None
        cmd = cmd.commands[word]
    return cmd


def _app_user(service: str) -> tuple[str, str]:
    url = urlsplit(VAR.sub("PW", _env(service)["UPMETR_AUDIT_CLICKHOUSE_URL"]))
    raw = _env(service)["UPMETR_AUDIT_CLICKHOUSE_URL"]
    return url.username, VAR.search(raw.split("@")[0])[1]


def test_the_production_services_are_there():
    assert {"clickhouse", "migrate", "otelcol", "grafana", "web", "seal", "detect"} <= set(SERVICES)
    assert SERVICES["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert SERVICES["otelcol"]["image"].startswith("otel/opentelemetry-collector-contrib:")
    assert SERVICES["grafana"]["image"].startswith("grafana/grafana:")
    assert SERVICES["migrate"]["build"] == "." and (ROOT / "Dockerfile").is_file()
    image = SERVICES["migrate"]["image"]
    for name in APP_SERVICES:
        assert SERVICES[name]["image"] == image
        assert SERVICES[name]["command"] == ["upmetr-audit", name]


def test_migrate_is_one_shot_and_everything_waits_for_it():
    m = SERVICES["migrate"]
    assert m["command"][-1] == "upmetr-audit db migrate && upmetr-audit db grants --apply"
    assert m["restart"] == "no"
    assert m["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    for name in ("otelcol", "grafana", *APP_SERVICES):
        assert SERVICES[name]["depends_on"]["migrate"]["condition"] == \
            "service_completed_successfully", name
    for words in (["db", "migrate"], ["db", "grants"]):
        assert _command(words) is not None
    assert {a.password_env for a in grants.APPS} <= set(_env("migrate"))


@pytest.mark.parametrize("service", sorted(APP_SERVICES))
def test_app_environment_is_what_the_command_reads(service):
    cmd = _command([service])
    if cmd is None:
        pytest.skip(f"`upmetr-audit {service}` is not registered in this tree yet")
    known = {p.envvar for p in cmd.params if p.envvar} | EXTRA_ENV
    for key in _env(service):
        assert key in known, f"{service}: {key} is not read by `upmetr-audit {service}`"


@pytest.mark.parametrize("service,app", sorted(APP_SERVICES.items()))
def test_each_app_connects_as_its_least_privilege_user(service, app):
    user, password_var = _app_user(service)
    expected = next(a for a in grants.APPS if a.name == app)
    assert (user, password_var) == (expected.user, expected.password_env)
    assert urlsplit(VAR.sub("PW", _env(service)["UPMETR_AUDIT_CLICKHOUSE_URL"])).hostname == "clickhouse"


def test_collector_and_grafana_users_match_the_grants():
    by_name = {a.name: a for a in grants.APPS}
    otel = _env("otelcol")
    assert otel["CLICKHOUSE_USER"] == by_name["collector"].user
    assert VAR.fullmatch(otel["CLICKHOUSE_PASSWORD"])[1] == by_name["collector"].password_env
    g = _env("grafana")
    assert g["UPMETR_AUDIT_GRAFANA_CH_USER"] == by_name["grafana"].user
    assert VAR.fullmatch(g["UPMETR_AUDIT_DB_PASSWORD_GRAFANA"])[1] == by_name["grafana"].password_env


def test_variable_references_are_well_formed_and_secrets_required():
    text = (ROOT / "docker-compose.yml").read_text()
    refs = VAR.findall(text)
    assert refs
    assert not re.search(r"\$\{(?![A-Za-z_][A-Za-z0-9_]*(?::?[-?][^}]*)?\})", text)  # no broken ${
    assert not re.search(r"(?<!\$)\$(?![{$])", text)  # a lone $ would be interpolated
    secrets = [name for name, _, _ in refs if re.search(r"PASSWORD|SECRET_KEY|INGEST_TOKEN", name)
               and "WEBHOOK" not in name]
    assert secrets
    for name, op, _ in refs:
        if name in secrets:
            assert op == ":?", f"{name} must be required (:?), not defaulted"
    for service in SERVICES.values():  # no literal password anywhere
        for key, value in service.get("environment", {}).items():
            if re.search(r"PASSWORD|SECRET", key) and value:
                assert VAR.search(str(value)), key


def test_otel_collector_gets_every_variable_its_config_needs():
    config = (ROOT / "otel-config.yaml").read_text()
    needed = set(re.findall(r"\$\{env:([A-Z_][A-Z0-9_]*)\}", config))  # the ones without a default
    assert needed and needed <= set(_env("otelcol"))
    otel = SERVICES["otelcol"]
    assert "./otel-config.yaml:/etc/otelcol-contrib/config.yaml:ro" in otel["volumes"]
    assert otel["command"] == ["--config=/etc/otelcol-contrib/config.yaml"]
    queue_dir = _env("otelcol")["OTELCOL_QUEUE_DIR"]
    assert f"otelcol-queue:{queue_dir}" in otel["volumes"]
    assert f"otelcol-queue:{queue_dir}" in SERVICES["otelcol-queue-owner"]["volumes"]
    assert {"4317:4317", "4318:4318"} <= set(otel["ports"])
    assert _env("otelcol")["OTELCOL_HEALTH_ADDR"].endswith(":13133") and "13133" in otel["expose"]


def test_grafana_provisioning_and_plugin():
    g = SERVICES["grafana"]
    assert _env("grafana")["GF_PLUGINS_PREINSTALL"] == "grafana-clickhouse-datasource"
    assert "./dashboards/provisioning:/etc/grafana/provisioning:ro" in g["volumes"]
    tree = ROOT / "dashboards" / "provisioning"
    if tree.is_dir():  # every variable the provisioning files expand is set
        used = set()
        for f in tree.rglob("*.y*ml"):
            used |= {m[0] for m in VAR.findall(f.read_text())}
        assert used <= set(_env("grafana")), used - set(_env("grafana"))


def test_mounts_volumes_ports_and_health_checks():
    declared = set(COMPOSE["volumes"])
    used = set()
    for name, service in SERVICES.items():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source == "./dashboards/provisioning":  # generated: `upmetr-audit grafana export`
                assert (ROOT / "dashboards" / "tree.py").is_file()
            elif source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source} is missing"
            else:
                used.add(source)
        long_running = service.get("restart") == "unless-stopped"
        if long_running and name != "otelcol":  # distroless: probed on :13133 from outside
            assert service["healthcheck"]["test"], name
    assert used == declared
    web_port = _env("web")["UPMETR_AUDIT_WEB_ADDR"].rsplit(":", 1)[1]
    assert f"{web_port}:{web_port}" in SERVICES["web"]["ports"]
    assert web_port in str(SERVICES["web"]["healthcheck"]["test"])
    assert _env("web")["UPMETR_AUDIT_OTLP_HTTP_ADDR"] == "otelcol:4318"
    assert "/var/lib/upmetr-audit" in str(SERVICES["seal"]["volumes"])  # keys and digests persist


def test_the_sealer_gets_a_key_once_before_it_starts():
    keys = SERVICES["seal-keys"]
    data_dir = keys["environment"]["UPMETR_AUDIT_DATA_DIR"]
    assert keys["restart"] == "no" and keys["image"] == SERVICES["seal"]["image"]
    assert keys["volumes"] == SERVICES["seal"]["volumes"] == [f"sealer-data:{data_dir}"]
    # Only when the volume has no keyring: `keys generate` refuses to replace one.
    assert keys["command"] == ["sh", "-c", f"test -e {data_dir}/keys/keyring.json || "
                                           "upmetr-audit keys generate"]
    assert _command(["keys", "generate"]) is not None
    assert SERVICES["seal"]["depends_on"]["seal-keys"]["condition"] == "service_completed_successfully"

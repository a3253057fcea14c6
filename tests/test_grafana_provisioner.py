"""Contract tests of ``upmetr-audit grafana provision`` against a local HTTP stub.

The stub is NOT a real Grafana: it implements only the endpoints the
provisioner calls, with the request and response shapes of Grafana's HTTP API
(shared/reference/grafana-clickhouse.md §5), keeps what is written, and
answers reads with it plus fields Grafana adds (ids, versions, provenance).
"""

from __future__ import annotations

import copy
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from click.testing import CliRunner

from upmetr_audit.collector.cli import cli
from upmetr_audit.grafana import DATASOURCE_UID, FOLDER_TITLE, FOLDER_UID, PLUGIN_ID, alerting, tree

TOKEN, VIEWER = "glsa_admin", "glsa_viewer"
WEBHOOK = "https://hooks.example.test/grafana"


class GrafanaStub:
    def __init__(self):
        self.version = "12.1.1"
        self.plugin_installed = True
        self.healthy = True
        self.datasources: dict = {}
        self.folders: dict = {}
        self.dashboards: dict = {}
        self.contact_points: dict = {}
        self.groups: dict = {}
        self.calls: list[tuple] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _do(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                url = urlparse(self.path)
                stub.calls.append((self.command, url.path, body))
                status, answer = stub.handle(self.command, url.path, parse_qs(url.query), body,
                                             self.headers.get("Authorization", ""))
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _do

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def writes(self) -> list[tuple]:
        return [c for c in self.calls if c[0] != "GET"]

    def handle(self, method, path, query, body, auth):
        nf = (404, {"message": "not found"})
        if path == "/api/health":
            return 200, {"commit": "abc", "database": "ok", "version": self.version}
        if auth not in (f"Bearer {TOKEN}", f"Bearer {VIEWER}"):
            return 401, {"message": "invalid API key"}
        if path == f"/api/plugins/{PLUGIN_ID}/settings":
            return (200, {"id": PLUGIN_ID, "type": "datasource", "enabled": True}) if self.plugin_installed \
                else (404, {"message": "Plugin not found, no installed plugin with that id"})
        if auth == f"Bearer {VIEWER}":
            return 403, {"message": "You'll need additional permissions to perform this action."}
        parts = path.split("/")
        if path.startswith("/api/datasources/uid/"):
            uid = parts[4]
            if path.endswith("/health"):
                if self.healthy:
                    return 200, {"status": "OK", "message": "Data source is working"}
                return 400, {"status": "ERROR",
                             "message": "dial tcp 10.0.0.5:9000: connect: connection refused"}
            if method == "GET":
                ds = self.datasources.get(uid)
                return (200, ds) if ds else nf
            if method == "PUT":
                self.datasources[uid] = self._ds(body, self.datasources[uid]["version"] + 1)
                return 200, {"datasource": self.datasources[uid], "message": "Datasource updated"}
        if path == "/api/datasources" and method == "POST":
            self.datasources[body["uid"]] = self._ds(body, 1)
            return 200, {"datasource": self.datasources[body["uid"]], "id": 1, "message": "Datasource added"}
        if path.startswith("/api/folders"):
            if method == "POST":
                self.folders[body["uid"]] = {"id": 3, "uid": body["uid"], "title": body["title"],
                                             "version": 1}
                return 200, self.folders[body["uid"]]
            folder = self.folders.get(parts[3])
            if method == "GET":
                return (200, folder) if folder else nf
            if method == "PUT":
                folder.update(title=body["title"], version=folder["version"] + 1)
                return 200, folder
        if path.startswith("/api/dashboards/uid/"):
            board = self.dashboards.get(parts[4])
            return (200, copy.deepcopy(board)) if board else nf
        if path == "/api/dashboards/db" and method == "POST":
            uid = body["dashboard"]["uid"]
            version = self.dashboards.get(uid, {}).get("dashboard", {}).get("version", 0) + 1
            self.dashboards[uid] = {"dashboard": {**body["dashboard"], "id": 7, "version": version},
                                    "meta": {"folderUid": body["folderUid"], "slug": uid,
                                             "provisioned": False}}
            return 200, {"id": 7, "uid": uid, "status": "success", "version": version, "url": f"/d/{uid}"}
        if path == "/api/v1/provisioning/contact-points":
            if method == "GET":
                return 200, [c for c in self.contact_points.values() if c["name"] in query.get("name", [])]
            self.contact_points[body["uid"]] = {**body, "provenance": "api"}
            return 202, self.contact_points[body["uid"]]
        if path.startswith("/api/v1/provisioning/contact-points/") and method == "PUT":
            self.contact_points[parts[5]] = {**body, "provenance": "api"}
            return 202, {"message": "contactpoint updated"}
        if path.startswith("/api/v1/provisioning/folder/"):
            key = (parts[5], parts[7])
            if method == "GET":
                return (200, copy.deepcopy(self.groups[key])) if key in self.groups else \
                    (404, {"message": "rule group does not exist"})
            rules = [{**r, "id": i + 1, "updated": "2026-11-20T12:00:00Z", "provenance": "api"}
                     for i, r in enumerate(body["rules"])]
            self.groups[key] = {**body, "rules": rules}
            return 200, self.groups[key]
        return 404, {"message": f"the stub has no {method} {path}"}

    @staticmethod
    def _ds(body, version):
        stored = {k: v for k, v in body.items() if k != "secureJsonData"}
        return {**stored, "id": 1, "orgId": 1, "version": version, "readOnly": False,
                "secureJsonFields": {k: True for k in body.get("secureJsonData", {})}}


@pytest.fixture
def grafana():
    stub = GrafanaStub()
    yield stub
    stub.close()


def provision(stub_url, *extra, token=TOKEN):
    args = ["grafana", "provision", "--url", stub_url, "--token", token, "--webhook-url", WEBHOOK,
            "--clickhouse-host", "clickhouse", "--clickhouse-password", "s3cret", *extra]
    return CliRunner().invoke(cli, args)


BOARDS = tree.dashboards()
EXPECTED_DS = tree.datasource({"host": "clickhouse", "port": 9000, "protocol": "native",
                               "username": "upmetr_grafana", "defaultDatabase": "audit",
                               "password": "s3cret"})
GROUP_PATH = f"/api/v1/provisioning/folder/{FOLDER_UID}/rule-groups/{alerting.GROUP}"


def test_contract_first_run_creates_everything_with_exact_calls(grafana):
    result = provision(grafana.url)
    assert result.exit_code == 0, result.output
    expected = [
        ("GET", "/api/health", None),
        ("GET", f"/api/plugins/{PLUGIN_ID}/settings", None),
        ("GET", f"/api/datasources/uid/{DATASOURCE_UID}", None),
        ("POST", "/api/datasources", EXPECTED_DS),
        ("GET", f"/api/datasources/uid/{DATASOURCE_UID}/health", None),
        ("GET", f"/api/folders/{FOLDER_UID}", None),
        ("POST", "/api/folders", {"title": FOLDER_TITLE, "uid": FOLDER_UID}),
    ]
    for board in BOARDS:
        expected += [("GET", f"/api/dashboards/uid/{board['uid']}", None),
                     ("POST", "/api/dashboards/db", {"dashboard": {**board, "id": None},
                                                     "folderUid": FOLDER_UID, "overwrite": True,
                                                     "message": "upmetr-audit grafana provision"})]
    expected += [
        ("GET", "/api/v1/provisioning/contact-points", None),
        ("POST", "/api/v1/provisioning/contact-points", alerting.contact_point(WEBHOOK)),
        ("GET", GROUP_PATH, None),
        ("PUT", GROUP_PATH, alerting.api_rule_group(alerting.rules_mod.RuleSet())),
    ]
    assert grafana.calls == expected
    assert EXPECTED_DS["jsonData"]["defaultDatabase"] == "audit" and EXPECTED_DS["type"] == PLUGIN_ID
    group = grafana.calls[-1][2]
    assert {r["notification_settings"]["receiver"] for r in group["rules"]} == {alerting.CONTACT_POINT}
    assert group["interval"] == 60 and all(r["folderUID"] == FOLDER_UID for r in group["rules"])
    lines = result.output.splitlines()
    assert lines[0] == f"datasource {DATASOURCE_UID}: created"
    assert lines[-1] == f"changed {len(BOARDS) + 4} of {len(BOARDS) + 4} resources"


def test_contract_second_run_changes_nothing(grafana):
    assert provision(grafana.url).exit_code == 0
    grafana.calls.clear()
    result = provision(grafana.url)
    assert result.exit_code == 0, result.output
    assert grafana.writes() == []
    assert result.output.splitlines()[-1] == f"changed 0 of {len(BOARDS) + 4} resources"
    assert all(line.endswith(": unchanged") for line in result.output.splitlines()[:-1])


def test_contract_a_drifted_dashboard_is_updated_alone(grafana):
    assert provision(grafana.url).exit_code == 0
    grafana.dashboards[BOARDS[0]["uid"]]["dashboard"]["title"] = "edited by hand"
    grafana.calls.clear()
    result = provision(grafana.url)
    assert result.exit_code == 0
    assert [(m, p) for m, p, _ in grafana.writes()] == [("POST", "/api/dashboards/db")]
    assert f"dashboard {BOARDS[0]['uid']}: updated" in result.output.splitlines()


def test_contract_changed_settings_update_the_datasource_and_contact_point(grafana):
    assert provision(grafana.url).exit_code == 0
    grafana.calls.clear()
    result = CliRunner().invoke(cli, ["grafana", "provision", "--url", grafana.url, "--token", TOKEN,
                                      "--webhook-url", WEBHOOK + "/v2", "--clickhouse-protocol", "http",
                                      "--clickhouse-host", "clickhouse", "--clickhouse-password", "s3cret"])
    assert result.exit_code == 0, result.output
    writes = grafana.writes()
    assert [(m, p) for m, p, _ in writes] == [
        ("PUT", f"/api/datasources/uid/{DATASOURCE_UID}"),
        ("PUT", f"/api/v1/provisioning/contact-points/{alerting.CONTACT_POINT_UID}")]
    assert writes[0][2]["jsonData"]["port"] == 8123 and writes[0][2]["jsonData"]["protocol"] == "http"
    assert writes[1][2]["settings"]["url"] == WEBHOOK + "/v2"


def test_contract_dry_run_only_reads(grafana):
    result = provision(grafana.url, "--dry-run")
    assert result.exit_code == 0, result.output
    assert grafana.writes() == []
    assert result.output.splitlines()[0] == f"datasource {DATASOURCE_UID}: would create"
    assert result.output.splitlines()[-1] == f"would change {len(BOARDS) + 4} of {len(BOARDS) + 4} resources"


def _one_line_error(result, *needles):
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("Error: "), result.output
    for n in needles:
        assert n in result.output, result.output


def test_contract_bad_token(grafana):
    _one_line_error(provision(grafana.url, token="wrong"), "401", "--token")
    assert grafana.writes() == []


def test_contract_forbidden(grafana):
    _one_line_error(provision(grafana.url, token=VIEWER), "403", "Admin role")
    assert grafana.writes() == []


def test_contract_plugin_missing(grafana):
    grafana.plugin_installed = False
    _one_line_error(provision(grafana.url), PLUGIN_ID, "GF_PLUGINS_PREINSTALL")
    assert grafana.writes() == []


def test_contract_health_check_fails(grafana):
    grafana.healthy = False
    _one_line_error(provision(grafana.url), "health check", "connection refused")
    assert [p for _, p, _ in grafana.writes()] == ["/api/datasources"]


@pytest.mark.parametrize("version", ["11.5.2", "10.4.0", "9.0.0-beta1"])
def test_contract_grafana_too_old(grafana, version):
    grafana.version = version
    _one_line_error(provision(grafana.url), "too old", "11.6")
    assert [p for _, p, _ in grafana.calls] == ["/api/health"]


@pytest.mark.parametrize("version", ["11.6.0", "12.4.1+security-01", "13.0.0"])
def test_contract_recent_grafana_is_accepted(grafana, version):
    grafana.version = version
    assert provision(grafana.url, "--dry-run").exit_code == 0


def test_connection_failure():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _one_line_error(provision(f"http://127.0.0.1:{port}"), "cannot connect to Grafana")


@pytest.mark.parametrize("url", ["grafana:3000", "ftp://x", ""])
def test_bad_url(url):
    _one_line_error(provision(url), "--url")

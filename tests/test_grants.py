"""`db grants`: every statement parses in ClickHouse (chDB), and the parsed
grants form the least-privilege matrix, for every table the migrations create."""

import hashlib
import re

import pytest
from click.testing import CliRunner
from test_cluster_schema import fmt, split_script

from upmetr_audit.collector import cluster, grants
from upmetr_audit.collector.cli import cli
from upmetr_audit.collector.detector import Detector, current_alerts
from upmetr_audit.collector.errors import ConfigError
from upmetr_audit.web import accounts
from upmetr_audit.web.app import create_app

import scenarios as sc
from helpers import insert_events
from test_web_api import PASSWORD

ENV = {a.password_env: f"pw-{a.name}-'\\" for a in grants.APPS}
APP = {a.name: a for a in grants.APPS}
FORBIDDEN = {"ALTER", "DELETE", "TRUNCATE", "DROP", "ALL", "CREATE", "OPTIMIZE", "SYSTEM",
             "ALTER DELETE", "ALTER UPDATE", "INTROSPECTION", "ACCESS MANAGEMENT"}


def matrix(client, statements):
    """{role: {(privilege, table)}}, {user: default role}, {user: (hash, salt)}, roles."""
    privs, defaults, idents, roles, members = {}, {}, {}, set(), {}
    for sql in statements:
        f = " ".join(fmt(client, sql).split())
        if m := re.fullmatch(r"CREATE ROLE OR REPLACE (\w+)(?: ON CLUSTER \w+)?(?: SETTINGS .*)?", f):
            roles.add(m[1])
        elif m := re.fullmatch(r"GRANT(?: ON CLUSTER \w+)? ([A-Z ,]+) ON (\S+) TO (\w+)", f):
            for p in m[1].split(","):
                privs.setdefault(m[3], set()).add((p.strip(), m[2]))
        elif m := re.fullmatch(r"GRANT(?: ON CLUSTER \w+)? (\w+) TO (\w+)", f):
            members[m[2]] = m[1]
        elif m := re.fullmatch(r"CREATE USER OR REPLACE (\w+)(?: ON CLUSTER \w+)? IDENTIFIED WITH "
                               r"sha256_hash BY '(\w+)' SALT '(\w+)'", f):
            idents[m[1]] = (m[2], m[3])
        elif m := re.fullmatch(r"ALTER USER (\w+)(?: ON CLUSTER \w+)? DEFAULT ROLE (\w+)", f):
            defaults[m[1]] = m[2]
        else:
            pytest.fail(f"unexpected statement: {f}")
    return privs, defaults, idents, roles, members


@pytest.mark.parametrize("cluster_name", [None, "prod"])
def test_grants_parse_and_form_the_least_privilege_matrix(store, cluster_name):
    privs, defaults, idents, roles, members = matrix(
        store.client, grants.grant_statements(cluster_name, ENV))
    assert roles == {a.role for a in grants.APPS}
    tables = cluster.tables()

    def names(t):
        local = cluster_name and t.placement in (cluster.SHARDED, cluster.INGEST)
        return {f"audit.{t.name}"} | ({f"audit.{t.name}_local"} if local else set())

    def expected(app):
        want = set()
        for t in tables:
            readable = (app.reads_accounts is not None and t.placement != cluster.INGEST
                        and (app.reads_accounts or t.name not in grants.ACCOUNT_TABLES))
            for n in names(t):
                if readable:
                    want.add(("SELECT", n))
                if t.name in app.inserts:
                    want.add(("INSERT", n))
        return want

    for app in grants.APPS:
        got = privs.get(app.role, set())
        assert got == expected(app), app.name
        assert {p for p, _ in got} <= {"SELECT", "INSERT"}
        assert not {p for p, _ in got} & FORBIDDEN
        assert all("*" not in target for _, target in got)
        # one user per role, with the role as default, and the password's salted hash
        assert members[app.user] == defaults[app.user] == app.role
        digest, salt = idents[app.user]
        assert digest == hashlib.sha256((ENV[app.password_env] + salt).encode()).hexdigest()

    ingest = ["audit.audit_ingest"]
    collector = privs[APP["collector"].role]
    assert {p for p, _ in collector} == {"INSERT"}
    assert {t for _, t in collector} == ({*ingest, "audit.audit_ingest_local"} if cluster_name
                                         else set(ingest))
    # grafana: read-only, and never the password or token hashes
    grafana = privs[APP["grafana"].role]
    assert {p for p, _ in grafana} == {"SELECT"}
    assert not {t for _, t in grafana} & {f"audit.{n}" for n in grants.ACCOUNT_TABLES}
    # nobody but the collector writes the ingest path; nobody writes events directly
    for role, got in privs.items():
        written = {t for p, t in got if p == "INSERT"}
        assert not written & {"audit.audit_events", "audit.audit_events_local",
                              "audit.audit_rejects", "audit.audit_rejects_local"}, role
        if role != APP["collector"].role:
            assert not written & {"audit.audit_ingest", "audit.audit_ingest_local"}, role


def test_sealer_and_detector_write_only_their_tables_when_they_exist():
    present = {t.name for t in cluster.tables()}
    statements = grants.grant_statements(None, ENV)
    inserts = {(m[2], m[1]) for s in statements
               if (m := re.fullmatch(r"GRANT INSERT ON audit\.(\w+) TO (\w+)", s))}
    assert {t for r, t in inserts if r == "upmetr_audit_sealer"} == {
        "audit_seals", "audit_seal_leaves"} & present
    assert (("upmetr_audit_detector", "audit_alerts") in inserts) == ("audit_alerts" in present)
    assert {t for r, t in inserts if r == "upmetr_audit_detector"} <= {"audit_alerts"}


def test_missing_passwords_are_named():
    env = dict(ENV)
    del env["UPMETR_AUDIT_DB_PASSWORD_WEB"], env["UPMETR_AUDIT_DB_PASSWORD_GRAFANA"]
    with pytest.raises(ConfigError, match="UPMETR_AUDIT_DB_PASSWORD_WEB, UPMETR_AUDIT_DB_PASSWORD_GRAFANA"):
        grants.grant_statements(None, env)


def test_cli_prints_grants_and_refuses_bad_input(monkeypatch, tmp_path):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    out = CliRunner().invoke(cli, ["db", "grants", "--cluster", "prod"])
    assert out.exit_code == 0, out.output
    assert len(split_script(out.output)) == len(grants.grant_statements("prod", ENV))
    assert "ON CLUSTER prod" in out.output and "DROP" not in out.output.split("\n\n", 1)[1]
    bad = CliRunner().invoke(cli, ["db", "grants", "--cluster", "a;b"])
    assert bad.exit_code == 1 and bad.output.startswith("Error: invalid cluster name")
    chdb = CliRunner().invoke(cli, ["db", "grants", "--apply", "--clickhouse-url",
                                    f"chdb://{tmp_path}/ch"])
    assert chdb.exit_code == 1 and "chDB has no users or grants" in chdb.output
    monkeypatch.delenv("UPMETR_AUDIT_DB_PASSWORD_SEALER")
    missing = CliRunner().invoke(cli, ["db", "grants"])
    assert missing.exit_code == 1 and missing.output == (
        "Error: set the database passwords first: UPMETR_AUDIT_DB_PASSWORD_SEALER\n")


class _Recording:
    """The real store client, noting the table of every INSERT made through it."""

    def __init__(self, client):
        self._client, self.inserted = client, set()

    def insert(self, table, *args, **kwargs):
        self.inserted.add(table)
        return self._client.insert(table, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_the_web_role_may_insert_every_table_the_page_writes(store, tmp_path):
    """Sign in, acknowledge an alert, sign out: each table the page INSERTs into
    is granted to its role (or a server deployment's page fails there)."""
    accounts.create_user(store.client, "root@acme.test", "acme", "superadmin", PASSWORD)
    accounts.set_module(store.client, "acme", accounts.AUDIT_MODULE, True)
    insert_events(store.client, [dict(e, org_id="acme") for e in sc.brute_force(6)])
    Detector(store.client).run_once(sc.m(6))
    recording = _Recording(store.client)
    app = create_app({"STORE_CLIENT": recording, "SECRET_KEY": "k" * 40, "TESTING": True})
    client = app.test_client()

    def token(path):
        return re.search(r'name="csrf_token" value="([^"]+)"',
                             client.get(path).get_data(as_text=True)).group(1)

    assert client.post("/login", data={"email": "root@acme.test", "password": PASSWORD,
                                       "csrf_token": token("/login")}).status_code == 302
    [alert] = current_alerts(store.client)
    assert client.post(f"/audit/alerts/{alert['alert_id']}/ack",
                       data={"csrf_token": token("/audit/alerts")}).status_code == 302
    assert client.post("/logout", data={"csrf_token": token("/audit")}).status_code == 302
    assert recording.inserted == {"audit.audit_alerts", "audit.users"}
    granted = {t for p, t in matrix(store.client, grants.grant_statements(None, ENV))[0][
        APP["web"].role] if p == "INSERT"}
    assert recording.inserted <= granted

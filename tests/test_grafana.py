"""Grafana dashboards, alert rules and provisioning files, proven offline.

Every panel's and alert rule's SQL goes through the same steps as in Grafana
(variables, ``$__conditionalAll``, the plugin's macros: tests/grafana_sql.py)
and then runs on the real schema in chDB, seeded with known events.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import uuid
from datetime import UTC, datetime, timedelta

import jsonschema_rs
import pytest
import yaml
from click.testing import CliRunner
from grafana_sql import ALL, TimeRange, expand_macros, interpolate, render

from upmetr_audit.collector import rules as rules_mod
from upmetr_audit.collector import schema
from upmetr_audit.collector.cli import cli
from upmetr_audit.collector.detector import Detector
from upmetr_audit.grafana import (
    DATASOURCE_UID,
    FOLDER_TITLE,
    FOLDER_UID,
    PLUGIN_ID,
    SCHEMA_VERSION,
    alerting,
    explorer,
    overview,
    security,
    tree,
)
from upmetr_audit.web import queries

import scenarios

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED = os.path.join(ROOT, "dashboards", "provisioning")
SCHEMA = os.path.join(ROOT, "tests", "data", "grafana-dashboard.schema.json")

T = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
#: The end of the dashboards' range ("now"), not on a whole second.
NOW = T + timedelta(milliseconds=250)
DASHBOARDS = tree.dashboards()


def panels(board=None):
    for b in [board] if board else DASHBOARDS:
        yield from b["panels"]


def panel(board: dict, title: str) -> dict:
    (p,) = [p for p in board["panels"] if p["title"] == title]
    return p


# -- the expander against the plugin's own test vectors --------------------------

VECTOR = TimeRange(datetime(2014, 11, 12, 11, 45, 26, 123000, tzinfo=UTC),
                   datetime(2015, 11, 12, 11, 45, 26, 456000, tzinfo=UTC), timedelta(seconds=20))


@pytest.mark.parametrize("sql, expected", [
    ("$__timeFilter(c)", "c >= toDateTime(1415792726) AND c <= toDateTime(1447328726)"),
    ("$__timeFilter_ms(c)",
     "c >= fromUnixTimestamp64Milli(1415792726123) AND c <= fromUnixTimestamp64Milli(1447328726456)"),
    ("$__dateFilter(c)", "c >= toDate('2014-11-12') AND c <= toDate('2015-11-12')"),
    ("$__dt(d, t)", "(d >= toDate('2014-11-12') AND d <= toDate('2015-11-12')) AND "
                    "(t >= toDateTime(1415792726) AND t <= toDateTime(1447328726))"),
    ("$__fromTime / $__toTime", "toDateTime(1415792726) / toDateTime(1447328726)"),
    ("$__fromTime_ms $__toTime_ms",
     "fromUnixTimestamp64Milli(1415792726123) fromUnixTimestamp64Milli(1447328726456)"),
    ("$__timeFrom(c) $__timeTo(c)", "c >= toDateTime(1415792726) c <= toDateTime(1447328726)"),
    ("$__timeGroup(c, 5m)", "toStartOfInterval(toDateTime(c), INTERVAL 300 second)"),
    ("$__timeInterval(c)", "toStartOfInterval(toDateTime(c), INTERVAL 20 second)"),
    ("$__timeInterval_ms(c)", "toStartOfInterval(toDateTime64(c, 3), INTERVAL 20000 millisecond)"),
    ("$__interval_s $__interval $__interval_ms", "20 20s 20000"),
    ("$__timeFilter(cast(x as DateTime))",
     "cast(x as DateTime) >= toDateTime(1415792726) AND cast(x as DateTime) <= toDateTime(1447328726)"),
    ("'$__fromTime' -- $__toTime", "'$__fromTime' -- $__toTime"),
    ("$__unknown(c)", "$__unknown(c)"),
])
def test_expander_matches_the_plugin(sql, expected):
    assert expand_macros(sql, VECTOR) == expected


def test_expander_rejects_wrong_argument_counts():
    with pytest.raises(ValueError, match="expects 1"):
        expand_macros("$__timeFilter(a, b)", VECTOR)


def test_variables_and_conditional_all():
    sql = "$__conditionalAll(org_id IN (${org:singlequote}), $org) AND s = '$status'"
    assert interpolate(sql, {"org": ALL, "status": "failure"}) == "1=1 AND s = 'failure'"
    assert interpolate(sql, {"org": ["a", "o'b"], "status": "x"}) == "org_id IN ('a','o\\'b') AND s = 'x'"
    assert interpolate("$v", {"v": ["a", "b"]}) == "'a','b'"


# -- the committed tree is the build -----------------------------------------------

def test_committed_tree_is_a_fresh_build():
    built = tree.build()
    on_disk = {}
    for d, _, files in os.walk(COMMITTED):
        for name in files:
            path = os.path.join(d, name)
            on_disk[os.path.relpath(path, COMMITTED)] = open(path, encoding="utf-8").read()
    assert sorted(on_disk) == sorted(built), "run: upmetr-audit grafana export --out dashboards/provisioning"
    for rel, text in built.items():
        assert on_disk[rel] == text, f"{rel} differs from a fresh build: re-export the tree"


def test_export_writes_the_tree(tmp_path):
    result = CliRunner().invoke(cli, ["grafana", "export", "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p" / "dashboards" / "upmetr-audit" / "upmetr-audit-overview.json").exists()
    assert result.output == f"wrote {len(tree.build())} files to {tmp_path / 'p'}\n"


def test_export_with_a_bad_rules_file_is_one_line(tmp_path):
    bad = tmp_path / "rules.toml"
    bad.write_text("[rules.user_brute_force]\nwarning = 0\n")
    result = CliRunner().invoke(cli, ["grafana", "export", "--out", str(tmp_path), "--alert-rules", str(bad)])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "must be a whole number" in result.output


def test_export_uses_per_org_thresholds(tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text("[orgs.org-b.rules.user_brute_force]\nwarning = 7\ncritical = 12\n")
    built = tree.build(rules_mod.load(str(rules)))
    text = built["alerting/upmetr-audit-rules.yaml"]
    assert "org_id = 'org-b', 7" in text and "org_id = 'org-b', 12" in text


# -- structure -------------------------------------------------------------------------

@pytest.mark.parametrize("board", DASHBOARDS, ids=[b["uid"] for b in DASHBOARDS])
def test_dashboard_structure(board):
    assert board["schemaVersion"] == SCHEMA_VERSION == 41
    assert len(board["uid"]) <= 40
    ids = [p["id"] for p in board["panels"]]
    assert len(set(ids)) == len(ids)
    cells = set()
    for p in board["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine
        assert p["datasource"] == {"type": PLUGIN_ID, "uid": DATASOURCE_UID}
        refs = [t["refId"] for t in p["targets"]]
        assert len(set(refs)) == len(refs)
        for t in p["targets"]:
            assert t["datasource"] == {"type": PLUGIN_ID, "uid": DATASOURCE_UID}
            assert t["editorType"] == "sql"
            assert (t["format"], t["queryType"]) in ((0, "timeseries"), (1, "table"))
            assert tuple(int(x) for x in t["pluginVersion"].split(".")) >= (4, 0, 0)
            if p["type"] == "timeseries":
                assert t["format"] == 0 and " AS time" in t["rawSql"]
            else:
                assert t["format"] == 1
            # DateTime64 columns: $__timeFilter would drop sub-second events at the end.
            assert "$__timeFilter(" not in t["rawSql"]
        if p["type"] == "stat":
            assert p["options"]["reduceOptions"]["calcs"] == ["lastNotNull"]


def test_every_dashboard_passes_the_relaxed_sdk_schema():
    validator = jsonschema_rs.Draft7Validator(json.load(open(SCHEMA)))
    for board in DASHBOARDS:
        errors = [str(e) for e in validator.iter_errors(board)]
        assert not errors, (board["uid"], errors[:3])
    broken = {**DASHBOARDS[0], "panels": [{**DASHBOARDS[0]["panels"][0], "gridPos": {"h": 4, "w": 30,
                                                                                    "x": 0, "y": 0}}]}
    assert not validator.is_valid(broken)


def test_the_issue_panels_are_there():
    titles = {b["uid"]: [p["title"] for p in b["panels"]] for b in DASHBOARDS}
    assert titles[overview.UID] == ["Total events", "Events today", "Logins (24h)", "Failed logins (24h)",
                                    "Events over time by category", "Top actions", "Failures over time",
                                    "Events by service"]
    assert titles[security.UID] == ["Failed logins by user", "Failed logins by IP", "MFA events",
                                    "Magic-link failures", "Success after failures",
                                    "Spike rules: current results", "Alert history"]
    assert titles[explorer.UID] == ["Events"]
    names = [v["name"] for v in next(b for b in DASHBOARDS if b["uid"] == explorer.UID)["templating"]["list"]]
    assert names == ["org", "category", "action", "status", "user"]


# -- YAML ------------------------------------------------------------------------------

def _go_expand_env(text: str, env: dict) -> str:
    """Go's os.ExpandEnv with Grafana's ``$$`` escape (provisioning/values)."""
    def sub(m):
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1) or m.group(2), "")
    return re.sub(r"\$\$|\$\{(\w+)\}|\$(\w+)", sub, text)


def _expanded(value, env):
    if isinstance(value, dict):
        return {k: _expanded(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expanded(v, env) for v in value]
    return _go_expand_env(value, env) if isinstance(value, str) else value


def load_yaml(rel: str) -> dict:
    return yaml.safe_load(tree.build()[rel])


def test_datasource_yaml():
    doc = load_yaml("datasources/upmetr-audit-clickhouse.yaml")
    (ds,) = doc["datasources"]
    assert doc["apiVersion"] == 1
    assert (ds["uid"], ds["type"], ds["access"]) == (DATASOURCE_UID, PLUGIN_ID, "proxy")
    assert "database" not in ds["jsonData"]        # the plugin reads defaultDatabase only
    values = dict(host="ch", port="9000", protocol="native", username="upmetr_grafana",
                  defaultDatabase="audit", password="p$$w")
    env = {tree.ENV[k]: v for k, v in values.items()}
    got = _expanded(ds, env)
    assert got["jsonData"] | {} == {**ds["jsonData"], "host": "ch", "port": "9000", "protocol": "native",
                                    "username": "upmetr_grafana", "defaultDatabase": "audit"}
    assert got["secureJsonData"] == {"password": "p$$w"}    # the value is substituted once, not re-read


def test_dashboard_provider_yaml():
    (p,) = load_yaml("dashboards/upmetr-audit.yaml")["providers"]
    assert (p["type"], p["folder"], p["folderUid"]) == ("file", FOLDER_TITLE, FOLDER_UID)
    assert p["options"]["path"] == f"{tree.MOUNT}/{tree.DASHBOARDS_DIR}"
    assert set(p) <= {"name", "type", "orgId", "folder", "folderUid", "editable", "options",
                      "disableDeletion", "updateIntervalSeconds", "allowUiUpdates"}


def test_alerting_yaml_keys_and_escaping():
    (group,) = load_yaml("alerting/upmetr-audit-rules.yaml")["groups"]
    assert set(group) == {"orgId", "name", "folder", "interval", "rules"} and group["folder"] == FOLDER_TITLE
    ids = [r for r in rules_mod.DEFAULT_RULES]
    assert [r["uid"] for r in group["rules"]] == [alerting.rule_uid(i) for i in ids]
    keys = {"uid", "title", "condition", "data", "dashboardUid", "panelId", "noDataState", "execErrState",
            "for", "keepFiringFor", "annotations", "labels", "isPaused", "notification_settings", "record"}
    for r in group["rules"]:
        assert set(r) <= keys and len(r["uid"]) <= 40
        assert r["noDataState"] in ("NoData", "Alerting", "OK", "KeepLast")
        assert r["execErrState"] in ("Error", "Alerting", "OK", "KeepLast")
        # Labels are env-expanded by Grafana: they must come out unchanged.
        assert _expanded(r["labels"], {}) == r["labels"] == alerting.RULE_LABELS
        model = r["data"][0]["model"]
        assert (model["format"], model["queryType"], model["editorType"]) == (1, "table", "sql")
        assert "$__conditionalAll" not in model["rawSql"]
        assert not re.findall(r"\$(?!__)", model["rawSql"]), "alert SQL must not use dashboard variables"
        assert [d["refId"] for d in r["data"]] == ["A", "B", "C"] and r["condition"] == "C"
    cps = load_yaml("alerting/upmetr-audit-contact-points.yaml")["contactPoints"]
    (receiver,) = cps[0]["receivers"]
    url = _expanded(receiver["settings"], {tree.ENV["webhook"]: "https://hooks.example/x?a=1"})["url"]
    assert url == "https://hooks.example/x?a=1"
    (policy,) = load_yaml("alerting/upmetr-audit-policies.yaml")["policies"]
    assert policy["receiver"] == cps[0]["name"] == policy["routes"][0]["receiver"]


# -- the SQL on chDB -----------------------------------------------------------------

EVENT_COLUMNS = ("event_id", "org_id", "timestamp", "received_at", "category", "action", "status",
                 "user_email", "ip", "service_name")


def seed(client, events: list[tuple]) -> None:
    """(timestamp, action, status, user, ip, org, service)."""
    rows = []
    for ts, action, status, user, ip, org, service in events:
        addr = ipaddress.ip_address(ip)
        if addr.version == 4:
            addr = ipaddress.IPv6Address(int(addr) | 0xFFFF << 32)
        rows.append([uuid.uuid4(), org, ts, ts, action.split(".")[0], action, status, user, addr, service])
    client.insert(schema.EVENTS_TABLE, rows, column_names=list(EVENT_COLUMNS))


def at(**delta) -> datetime:
    return T + timedelta(**delta)


A, B = "org-a", "org-b"
EVENTS = [
    (at(days=-10), "auth.login", "success", "ana@a.test", "198.51.100.1", A, "web"),
    (at(hours=-30), "auth.login", "failure", "ana@a.test", "198.51.100.1", A, "web"),
    (at(hours=-23), "auth.login", "success", "bob@a.test", "198.51.100.2", A, "web"),
    *[(at(hours=-2, seconds=s), "auth.login", "failure", "ana@a.test", "203.0.113.9", A, "web")
      for s in range(3)],
    (at(hours=-1), "mfa.verify", "failure", "ana@a.test", "198.51.100.1", A, "web"),
    (at(hours=-1, seconds=5), "mfa.verify", "success", "ana@a.test", "198.51.100.1", A, "web"),
    (at(minutes=-30), "magic_link.verify", "failure", "carl@a.test", "198.51.100.3", A, "web"),
    *[(at(minutes=-12, seconds=30 * i), "auth.login", "failure", "dora@a.test", "192.0.2.7", A, "web")
      for i in range(5)],
    (at(minutes=-5), "auth.login", "success", "dora@a.test", "192.0.2.8", A, "web"),
    (at(minutes=-10), "team.user_create", "success", "admin@a.test", "198.51.100.4", A, "billing-api"),
    # Inside the range only with millisecond bounds ($__timeFilter would floor "to" to 12:00:00).
    (at(milliseconds=100), "auth.login", "success", "ana@a.test", "198.51.100.1", A, "web"),
    (at(hours=1), "auth.logout", "success", "ana@a.test", "198.51.100.1", A, "web"),       # later today
    *[(at(hours=-1, seconds=s), "auth.login", "failure", "zed@b.test", "2001:db8::1", B, "api")
      for s in (0, 1)],
]
RANGE = TimeRange(at(hours=-3), NOW, timedelta(hours=1))


@pytest.fixture
def seeded(store):
    seed(store.client, EVENTS)
    return store.client


def run(client, sql: str, tr: TimeRange = RANGE, **variables) -> list[dict]:
    values = {"org": ALL, "tz": "UTC", "category": ALL, "action": ALL, "status": ALL, "user": "", **variables}
    return list(client.query(render(sql, tr, values)).named_results())


def sql_of(board: dict, title: str) -> str:
    (t,) = panel(board, title)["targets"]
    return t["rawSql"]


def test_every_panel_and_variable_runs_on_chdb(seeded):
    for board in DASHBOARDS:
        for p in board["panels"]:
            for t in p["targets"]:
                for org in (ALL, [A], [A, B]):
                    run(seeded, t["rawSql"], org=org)
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                assert run(seeded, var["query"]), var["name"]


def test_variables_reference_existing_columns(seeded):
    columns = {r["name"] for r in seeded.query(f"DESCRIBE TABLE {schema.EVENTS_TABLE}").named_results()}
    alert_columns = {r["name"] for r in seeded.query(f"DESCRIBE TABLE {schema.ALERTS_TABLE}").named_results()}
    for board in DASHBOARDS:
        names = {v["name"] for v in board["templating"]["list"]}
        for p in panels(board):
            sql = p["targets"][0]["rawSql"]
            used = set(re.findall(r"\$\{?(\w+)", sql)) - {n for n in re.findall(r"\$(__\w+)", sql)}
            assert used <= names, (p["title"], used - names)
            for column, var in re.findall(r"\$__conditionalAll\((\w+) (?:IN|=) .*?, \$(\w+)\)", sql):
                assert var in names
                table_columns = alert_columns if "audit.audit_alerts" in sql else columns
                assert column in table_columns, (p["title"], column)
    options = {r["action"] for r in run(seeded, "SELECT action FROM audit.catalog_actions")}
    assert {"auth.login", "mfa.verify", "magic_link.verify"} <= options


def test_overview_stats_equal_the_page_cards(seeded):
    board = overview.build()
    for org in (A, B):
        cards = queries.summary(seeded, org, tz="UTC", now=NOW)
        got = {}
        for title, key in (("Total events", "total_events"), ("Events today", "events_today"),
                           ("Logins (24h)", "logins_24h"), ("Failed logins (24h)", "failed_logins_24h")):
            (row,) = run(seeded, sql_of(board, title), org=[org])
            (got[key],) = row.values()
        assert got == {k: cards[k] for k in got}
    # The numbers themselves, for org-a at 12:00:00.250 UTC.
    assert got_a(seeded, board) == {"total_events": 18, "events_today": 15, "logins_24h": 3,
                                    "failed_logins_24h": 8}


def got_a(client, board) -> dict:
    out = {}
    for title in ("Total events", "Events today", "Logins (24h)", "Failed logins (24h)"):
        (row,) = run(client, sql_of(board, title), org=[A])
        out.update(row)
    return out


def test_events_today_follows_the_time_zone(seeded):
    board = overview.build()
    for tz in ("America/Los_Angeles", "Asia/Tokyo"):
        (row,) = run(seeded, sql_of(board, "Events today"), org=[A], tz=tz)
        assert row["events_today"] == queries.summary(seeded, A, tz=tz, now=NOW)["events_today"]


def test_overview_panels_numbers(seeded):
    board = overview.build()
    by_category: dict = {}
    for r in run(seeded, sql_of(board, "Events over time by category")):
        by_category[r["category"]] = by_category.get(r["category"], 0) + r["events"]
    assert by_category == {"auth": 3 + 5 + 1 + 1 + 2, "mfa": 2, "magic_link": 1, "team": 1}
    top = {r["action"]: r["events"] for r in run(seeded, sql_of(board, "Top actions"), org=[A])}
    assert top == {"auth.login": 10, "mfa.verify": 2, "magic_link.verify": 1, "team.user_create": 1}
    failures: dict = {}
    for r in run(seeded, sql_of(board, "Failures over time")):
        failures[r["action"]] = failures.get(r["action"], 0) + r["failures"]
    assert failures == {"auth.login": 10, "mfa.verify": 1, "magic_link.verify": 1}
    services = {r["service"]: r["events"] for r in run(seeded, sql_of(board, "Events by service"))}
    assert services == {"web": 13, "billing-api": 1, "api": 2}
    # The sub-second event at the end is in range with $__timeFilter_ms, not with $__timeFilter.
    last = sql_of(board, "Top actions").replace("$__timeFilter_ms", "$__timeFilter")
    assert {r["action"]: r["events"] for r in run(seeded, last, org=[A])}["auth.login"] == 9


def test_security_panels_numbers(seeded):
    board = security.build()
    users = {r["user_email"]: r["failures"] for r in run(seeded, sql_of(board, "Failed logins by user"))}
    assert users == {"dora@a.test": 5, "ana@a.test": 3, "zed@b.test": 2}
    ips = {r["client_ip"]: (r["failures"], r["users"])
           for r in run(seeded, sql_of(board, "Failed logins by IP"), org=[A])}
    assert ips == {"192.0.2.7": (5, 1), "203.0.113.9": (3, 1)}
    mfa = {r["event"]: r["events"] for r in run(seeded, sql_of(board, "MFA events"))}
    assert mfa == {"mfa.verify failure": 1, "mfa.verify success": 1}
    ml = run(seeded, sql_of(board, "Magic-link failures"))
    assert [(r["action"], r["failures"]) for r in ml] == [("magic_link.verify", 1)]
    (after,) = run(seeded, sql_of(board, "Success after failures"))
    assert (after["user_email"], after["client_ip"], after["failures_before"]) == (
        "dora@a.test", "192.0.2.8", 5)
    hits = run(seeded, sql_of(board, "Spike rules: current results"))
    assert [(h["rule"], h["key"], h["severity"], h["value"]) for h in hits] == [
        ("user_brute_force", "dora@a.test", "warning", 5.0)]
    assert run(seeded, sql_of(board, "Spike rules: current results"), org=[B]) == []


def test_alert_history_shows_the_detector_changes(seeded):
    result = Detector(seeded).run_once(now=NOW)
    assert result.changes
    rows = run(seeded, sql_of(security.build(), "Alert history"))
    assert sorted((r["rule"], r["key"], r["change"]) for r in rows) == sorted(
        (c["rule"], c["key"], c["change"]) for c in result.changes)
    assert run(seeded, sql_of(security.build(), "Alert history"), org=[B]) == []


def test_explorer_filters(seeded):
    sql = sql_of(explorer.build(), "Events")
    assert len(run(seeded, sql)) == 16
    rows = run(seeded, sql, org=[A], category=["auth"], status=["failure"], user="ana@a.test")
    assert len(rows) == 3 and {r["client_ip"] for r in rows} == {"203.0.113.9"}
    assert len(run(seeded, sql, action=["mfa.verify", "magic_link.verify"])) == 3
    assert run(seeded, sql, user="o'hara@a.test") == []


# -- the alert rules fire exactly where the detector fires ------------------------------

def alert_hits(client, now: datetime) -> set[tuple]:
    out = set()
    for rule in alerting.file_rules(rules_mod.RuleSet()):
        query = rule["data"][0]
        tr = TimeRange(now - timedelta(seconds=query["relativeTimeRange"]["from"]), now,
                       timedelta(milliseconds=query["model"]["intervalMs"]))
        for row in client.query(render(query["model"]["rawSql"], tr)).named_results():
            assert set(row) == {*alerting.LABEL_COLUMNS, "value"} and row["value"] > 0
            out.add((row["rule"], row["key_type"], row["key"], row["severity"]))
    return out


def test_lag_is_the_detectors():
    assert Detector(None).lag == alerting.LAG


@pytest.mark.parametrize("make", scenarios.FIRING, ids=[f.__name__ for f in scenarios.FIRING])
def test_alert_rules_fire_where_the_detector_fires(store, make):
    from helpers import insert_events
    sc = make()
    insert_events(store.client, sc.events)
    opened = {(c["rule"], c["key_type"], c["key"], c["severity"])
              for c in Detector(store.client).run_once(now=sc.at).changes}
    assert opened == sc.expected
    assert alert_hits(store.client, sc.at) == sc.expected


def test_alert_rules_stay_silent_on_the_slow_attack(store):
    from helpers import insert_events
    events, times = scenarios.slow_attack()
    insert_events(store.client, events)
    detector = Detector(store.client)
    for now in times:
        assert detector.run_once(now=now).changes == []
        assert alert_hits(store.client, now) == set()


def test_success_after_failures_needs_the_detectors_alerts(store):
    """In Grafana this rule reads audit_alerts: with no detector running it never fires."""
    from helpers import insert_events
    sc = scenarios.success_after_failures()
    insert_events(store.client, sc.events)
    assert {h[0] for h in alert_hits(store.client, sc.at)} == {"user_brute_force"}

"""Rule configuration: overrides per rule and per org, and one clear line for
every bad value; `detect --once` end to end, and its refusal of bad rules."""

import json
import subprocess
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_cli import EXE

from upmetr_audit.collector import rules
from upmetr_audit.collector import store as store_mod
from upmetr_audit.collector.notify import verify_signature

import scenarios as sc
from helpers import insert_events, wait_for


def test_defaults_match_the_documented_table():
    r = rules.DEFAULT_RULES
    assert r["user_brute_force"].levels == (("warning", 5), ("critical", 10))
    assert r["user_brute_force"].window_minutes == 15
    assert (r["ip_brute_force"].levels, r["ip_brute_force"].window_minutes) == ((("critical", 20),), 10)
    assert (r["password_spraying"].levels[0][1], r["password_spraying"].max_attempts_per_user) == (10, 3)
    assert (r["credential_stuffing"].levels[0][1], r["credential_stuffing"].max_attempts_per_user) == (15, 2)
    assert (r["distributed_attack"].levels[0][1], r["distributed_attack"].window_minutes) == (5, 30)
    spike = r["org_spike"]
    assert (spike.factor, spike.levels[0][1], spike.window_minutes, spike.baseline_days) == (3, 20, 5, 7)
    assert r["success_after_failures"].levels[0][0] == "emergency"


def test_overrides_apply_globally_and_per_org():
    rs = rules.from_mapping({
        "allow": ["10.0.0.0/8"],
        "rules": {"ip_brute_force": {"critical": 25, "count_mfa": False}},
        "orgs": {"org-b": {"allow": ["192.168.0.0/16"],
                           "rules": {"password_spraying": {"min_users": 12, "enabled": False}}}}})
    assert rs.rules["ip_brute_force"].levels == (("critical", 25),)
    assert not rs.rules["ip_brute_force"].count_mfa
    assert rs.rules["user_brute_force"].allow == ("10.0.0.0/8",)
    b = rs.for_org("org-b", "password_spraying")
    assert (b.enabled, b.levels, b.allow) == (False, (("critical", 12),), ("10.0.0.0/8", "192.168.0.0/16"))
    assert rs.for_org("org-a", "password_spraying").enabled


@pytest.mark.parametrize("data, message", [
    ({"rules": {"user_brute_force": {"warning": -1}}}, "rules.user_brute_force.warning: must be a whole"),
    ({"rules": {"user_brute_force": {"warning": 0}}}, "must be a whole number from 1"),
    ({"rules": {"user_brute_force": {"warning": 2.5}}}, "must be a whole number"),
    ({"rules": {"user_brute_force": {"warning": True}}}, "must be a whole number"),
    ({"rules": {"user_brute_force": {"warning": 20}}}, "a higher severity needs a threshold"),
    ({"rules": {"brute": {}}}, "rules.brute: unknown rule; known: user_brute_force"),
    ({"rules": {"ip_brute_force": {"allow": ["10.0.0.300/8"]}}}, "'10.0.0.300/8' is not an IP address"),
    ({"rules": {"ip_brute_force": {"allow": "10.0.0.0/8"}}}, "must be a list of IP addresses"),
    ({"allow": ["not-an-ip"]}, "allow: 'not-an-ip' is not an IP address or CIDR"),
    ({"rules": {"ip_brute_force": {"min_users": 3}}}, "unknown setting(s) min_users"),
    ({"rules": {"org_spike": {"factor": 0.5}}}, "factor: must be a number from 1"),
    ({"rules": {"org_spike": {"baseline_days": 99}}}, "baseline_days: must be a whole number from 1 to 28"),
    ({"rules": {"user_brute_force": {"enabled": "yes"}}}, "enabled: must be true or false"),
    ({"rules": {"user_brute_force": {"window_minutes": 0}}}, "window_minutes: must be a whole number"),
    ({"rules": {"user_brute_force": 5}}, "must be a table of settings"),
    ({"orgs": {"bad org'); DROP": {}}}, "is not a valid org id"),
    ({"orgs": {"org-a": {"threshold": 3}}}, "may only set allow"),
    ({"orgz": {}}, "orgz: unknown section"),
])
def test_bad_configuration_is_one_clear_error(data, message):
    with pytest.raises(rules.RuleError) as exc:
        rules.from_mapping(data)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_bad_files(tmp_path):
    with pytest.raises(rules.RuleError, match="cannot read"):
        rules.load(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[rules\n")
    with pytest.raises(rules.RuleError, match="is not valid TOML"):
        rules.load(str(bad))


def test_org_ids_in_generated_sql_are_validated_literals():
    rs = rules.from_mapping({"orgs": {"org_b.x:1@y": {"rules": {"user_brute_force": {"warning": 3,
                                                                                    "critical": 3}}}}})
    sql = rules.rule_sql(rs, "user_brute_force", "now64()")
    assert "org_id = 'org_b.x:1@y'" in sql


def seeded_now(tmp_path, events):
    """A data dir whose store holds ``events`` shifted so that T+7 min is now
    (every scenario event is then older than the detector's one-minute lag)."""
    data = tmp_path / "data"
    s = store_mod.open_store(f"chdb://{data}/clickhouse")
    store_mod.migrate(s.client)
    shift = datetime.now(UTC).replace(microsecond=0) - sc.m(7)
    insert_events(s.client, [dict(e, timestamp=e["timestamp"] + shift) for e in events])
    s.close()
    return data


def test_detect_once_end_to_end_and_bad_rules(tmp_path):
    data = seeded_now(tmp_path, sc.brute_force(11))
    r = subprocess.run([EXE, "detect", "--once", "--data-dir", str(data)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "opened=1" in r.stdout and "user_brute_force user=victim@acme.test" in r.stdout
    again = subprocess.run([EXE, "detect", "--once", "--data-dir", str(data)],
                           capture_output=True, text=True, timeout=120)
    assert "opened=0 updated=0 escalated=0 resolved=0" in again.stdout
    bad = tmp_path / "rules.toml"
    bad.write_text("[rules.ip_brute_force]\ncritical = -5\n")
    r = subprocess.run([EXE, "detect", "--once", "--data-dir", str(data), "--alert-rules", str(bad)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip() == ("Error: alert rules: rules.ip_brute_force.critical: "
                                "must be a whole number from 1 to 1000000")


def test_serve_runs_the_detector_and_posts_to_the_webhook(tmp_path):
    """The detector inside serve: seeded attack → alert row → signed webhook."""

    got = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            got.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    data = seeded_now(tmp_path, sc.brute_force(6))
    proc = subprocess.Popen(
        [EXE, "serve", "--data-dir", str(data), "--otlp-http-addr", "127.0.0.1:0",
         "--otlp-grpc-addr", "127.0.0.1:0", "--web-addr", "127.0.0.1:0", "--summary-interval", "0",
         "--alert-webhook-url", f"http://127.0.0.1:{hook.server_port}/h",
         "--alert-webhook-secret", "s3cret-s3cret", "--public-url", "https://audit.example"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killer = threading.Timer(120, proc.kill)
    killer.start()
    try:
        for line in proc.stdout:
            if line.startswith("detector"):
                assert "notifications: webhook" in line
                break
        wait_for(lambda: got, timeout_s=60)
        headers, body = got[0]
        p = json.loads(body)
        assert (p["event"], p["rule"], p["key"]) == ("opened", "user_brute_force", "victim@acme.test")
        assert p["link"].startswith("https://audit.example/audit?")
        assert verify_signature("s3cret-s3cret", body, headers["X-Upmetr-Signature"])
    finally:
        proc.terminate()
        proc.wait(60)
        killer.cancel()
        hook.shutdown()
    assert proc.returncode == 0


def test_detect_checks_the_schema_instead_of_migrating(tmp_path):
    """The detector's database user may not run DDL: detect says what to do."""
    r = subprocess.run([EXE, "detect", "--once", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip() == "Error: the audit schema is not installed; run `upmetr-audit db migrate`"


def test_allowlists_of_every_level_add_up_without_repeats():
    rs = rules.from_mapping({
        "allow": ["10.0.0.0/8"],
        "rules": {"user_brute_force": {"allow": ["172.16.0.0/12", "10.0.0.0/8"]}},
        "orgs": {"org-a": {"allow": ["198.51.100.0/24"],
                           "rules": {"user_brute_force": {"allow": ["192.0.2.0/24", "10.1.2.3/8"]}}}}})
    assert rs.for_org("org-a", "user_brute_force").allow == (
        "10.0.0.0/8", "172.16.0.0/12", "198.51.100.0/24", "192.0.2.0/24")
    assert rs.for_org("org-b", "user_brute_force").allow == ("10.0.0.0/8", "172.16.0.0/12")
    nets = [f"10.0.{i}.0/24" for i in range(rules.MAX_ALLOW_NETWORKS)]
    with pytest.raises(rules.RuleError, match=r"^alert rules: orgs\.org-a\.rules\.ip_brute_force: "
                                              r"allows 65 networks in all; at most 64$"):
        rules.from_mapping({"allow": nets, "orgs": {"org-a": {"rules": {"ip_brute_force": {
            "allow": ["192.0.2.0/24", "10.0.1.0/24"]}}}}})

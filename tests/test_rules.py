"""Rule configuration: overrides per rule and per org, and one clear line for
every bad value; `detect --once` end to end, and its refusal of bad rules."""

import subprocess

import pytest
from test_cli import EXE

from upmetr_audit.collector import rules
from upmetr_audit.collector import store as store_mod

import scenarios as sc
from helpers import insert_events


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


def test_detect_once_end_to_end_and_bad_rules(tmp_path):
    data = tmp_path / "data"
    s = store_mod.open_store(f"chdb://{data}/clickhouse")
    store_mod.migrate(s.client)
    # The attack is "now" for the detector: shift the scenario to the present.
    from datetime import UTC, datetime
    shift = datetime.now(UTC).replace(microsecond=0) - sc.m(6)
    insert_events(s.client, [dict(e, timestamp=e["timestamp"] + shift) for e in sc.brute_force(11)])
    s.close()
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

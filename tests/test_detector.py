"""The spike detector on chDB with a controllable clock: each scenario raises
exactly its alerts; slow attacks, allowlisted NAT and normal traffic raise none;
alerts open, update, escalate, get acknowledged and resolve, once each."""

import uuid
from datetime import timedelta

import pytest

from upmetr_audit.collector import rules, schema
from upmetr_audit.collector.detector import (
    AlertNotFound,
    Detector,
    acknowledge,
    alert_history,
    current_alerts,
)

import scenarios as sc
from helpers import TOKEN, count, insert_events, wait_for


def fired(result) -> set:
    return {(c["rule"], c["key_type"], c["key"], c["severity"]) for c in result.changes
            if c["change"] in ("opened", "escalated")}


def open_alerts(client) -> set:
    return {(a["rule"], a["key_type"], a["key"], a["severity"])
            for a in current_alerts(client, open_only=True)}


@pytest.mark.parametrize("make", sc.FIRING, ids=lambda f: f.__name__)
def test_each_scenario_raises_exactly_its_alerts(store, make):
    s = make()
    insert_events(store.client, s.events)
    result = Detector(store.client).run_once(s.at)
    assert fired(result) == s.expected
    assert open_alerts(store.client) == s.expected


def test_brute_force_crosses_warning_then_critical_and_notifies_each_once(store):
    sent = []
    det = Detector(store.client, notify=lambda row, rule: sent.append((row["change"], row["severity"])))
    insert_events(store.client, sc.brute_force(6))
    assert fired(det.run_once(sc.m(4))) == {("user_brute_force", "user", "victim@acme.test", "warning")}
    insert_events(store.client, sc.brute_force(5, start=4))
    r = det.run_once(sc.m(8))
    assert [c["change"] for c in r.changes] == ["escalated"]
    assert sent == [("opened", "warning"), ("escalated", "critical")]
    [alert] = current_alerts(store.client)
    assert (alert["severity"], alert["value"], alert["version"]) == ("critical", 11.0, 2)
    assert len(alert["samples"]) == 10


def test_repeated_runs_write_nothing_new_and_updates_do_not_notify(store):
    sent = []
    det = Detector(store.client, notify=lambda row, rule: sent.append(row["change"]))
    insert_events(store.client, sc.brute_force(6))
    for _ in range(3):
        det.run_once(sc.m(6))
    det.run_once(sc.m(7))                  # same events still in the window
    assert count(store, schema.ALERTS_TABLE) == 1
    insert_events(store.client, sc.brute_force(2, start=7))     # 8 failures: still a warning
    r = det.run_once(sc.m(9))
    assert [(c["change"], c["value"]) for c in r.changes] == [("updated", 8.0)]
    assert sent == ["opened"]
    assert count(store, schema.ALERTS_TABLE) == 2


def test_two_detectors_at_the_same_instant_agree_on_one_alert(store):
    insert_events(store.client, sc.brute_force(6))
    a = Detector(store.client).run_once(sc.m(6))
    b = Detector(store.client).run_once(sc.m(6))
    assert len(a.changes) == 1 and b.changes == []
    assert len(current_alerts(store.client)) == 1


def test_alert_resolves_after_the_quiet_period_and_notifies(store):
    sent = []
    det = Detector(store.client, notify=lambda row, rule: sent.append(row["change"]),
                   quiet=timedelta(minutes=30))
    insert_events(store.client, sc.brute_force(6))          # last failure at T+2.5 min
    det.run_once(sc.m(6))
    assert det.run_once(sc.m(20)).changes == []            # out of the window, not yet quiet
    assert open_alerts(store.client)
    r = det.run_once(sc.m(34))                               # window end T+33: 30.5 min quiet
    assert [c["change"] for c in r.changes] == ["resolved"]
    assert open_alerts(store.client) == set()
    assert sent == ["opened", "resolved"]
    [alert] = current_alerts(store.client)
    assert [h["change"] for h in alert_history(store.client, "org-a", str(alert["alert_id"]))] == [
        "opened", "resolved"]
    # A new attack later opens a new alert, not the old one again.
    insert_events(store.client, sc.brute_force(6, start=60))
    r = det.run_once(sc.m(66))
    assert [c["change"] for c in r.changes] == ["opened"]
    assert r.changes[0]["alert_id"] != alert["alert_id"]


def test_acknowledge_keeps_history_and_is_scoped_to_the_org(store):
    insert_events(store.client, sc.brute_force(6))
    det = Detector(store.client)
    det.run_once(sc.m(6))
    [alert] = current_alerts(store.client)
    aid = str(alert["alert_id"])
    with pytest.raises(AlertNotFound):
        acknowledge(store.client, "org-b", aid, "boss@org-b.test")
    with pytest.raises(AlertNotFound):
        acknowledge(store.client, "org-a", str(uuid.uuid4()), "boss@acme.test")
    row = acknowledge(store.client, "org-a", aid, "boss@acme.test", now=sc.m(7))
    assert (row["state"], row["changed_by"], row["version"]) == ("acknowledged", "boss@acme.test", 2)
    assert acknowledge(store.client, "org-a", aid, "boss@acme.test")["version"] == 2   # no-op
    # Still counted and updated while acknowledged; resolves after quiet.
    insert_events(store.client, sc.brute_force(5, start=4))
    r = det.run_once(sc.m(8))
    assert [(c["change"], c["state"]) for c in r.changes] == [("escalated", "acknowledged")]
    det.run_once(sc.m(45))
    assert [h["change"] for h in alert_history(store.client, "org-a", aid)] == [
        "opened", "acknowledged", "escalated", "resolved"]
    with pytest.raises(ValueError, match="already resolved"):
        acknowledge(store.client, "org-a", aid, "boss@acme.test")


def test_late_events_count_and_future_events_do_not(store):
    det = Detector(store.client)
    insert_events(store.client, sc.brute_force(4))
    assert det.run_once(sc.m(3)).changes == []
    insert_events(store.client, sc.brute_force(1, start=1.5))   # arrives late, counts next run
    assert fired(det.run_once(sc.m(4))) == {("user_brute_force", "user", "victim@acme.test", "warning")}
    # Failures stamped in the future (a skewed clock) or inside the lag do not alert.
    insert_events(store.client, sc.brute_force(30, user="future@acme.test", start=9, spacing_s=1))
    assert det.run_once(sc.m(10)).changes == []


def test_a_slow_attack_under_every_threshold_fires_nothing(store):
    events, times = sc.slow_attack()
    insert_events(store.client, events)
    det = Detector(store.client)
    for at in times:
        assert det.run_once(at).changes == [], at
    assert count(store, schema.ALERTS_TABLE) == 0


def test_allowlisted_nat_fires_nothing_but_other_orgs_still_do(store):
    ruleset = rules.from_mapping({"orgs": {"org-a": {"allow": ["10.0.0.0/8"]}}})
    nat = sc.brute_force(30, ip="10.1.2.3") + [
        sc.fail(sc.m(i / 2), f"p{i}@acme.test", "10.9.9.9") for i in range(16)]
    other = [dict(e, org_id="org-b") for e in sc.brute_force(6, ip="10.1.2.3")]
    insert_events(store.client, nat + other)
    r = Detector(store.client, ruleset).run_once(sc.m(16))
    assert fired(r) == {("user_brute_force", "user", "victim@acme.test", "warning")}
    assert {c["org_id"] for c in r.changes} == {"org-b"}


def test_per_org_thresholds_and_switches(store):
    ruleset = rules.from_mapping({"orgs": {
        "org-b": {"rules": {"user_brute_force": {"warning": 3, "critical": 4}}},
        "org-c": {"rules": {"user_brute_force": {"enabled": False}}},
        "org-d": {"rules": {"user_brute_force": {"count_mfa": False}}}}})
    events = []
    for org in ("org-a", "org-b", "org-c"):
        events += [dict(e, org_id=org) for e in sc.brute_force(4)]
    events += [dict(e, org_id="org-d", action="mfa.verify") for e in sc.brute_force(6)]
    events += [dict(e, org_id="org-a", action="mfa.verify", user_email="mfa@acme.test")
               for e in sc.brute_force(6)]
    insert_events(store.client, events)
    r = Detector(store.client, ruleset).run_once(sc.m(5))
    assert {(c["org_id"], c["key"], c["severity"]) for c in r.changes} == {
        ("org-b", "victim@acme.test", "critical"), ("org-a", "mfa@acme.test", "warning")}


def test_rules_that_are_off_everywhere_are_not_queried(store):
    ruleset = rules.from_mapping({"rules": {r: {"enabled": False} for r in rules.DEFAULT_RULES}})
    insert_events(store.client, sc.brute_force(30))
    assert Detector(store.client, ruleset).run_once(sc.m(6)).changes == []
    assert rules.rule_sql(ruleset, "ip_brute_force", "now64()") is None


def test_a_week_of_normal_demo_traffic_fires_zero_alerts(store, collector, tmp_path):
    """Real path: the demo through the shipper into the collector, then the
    detector every 10 minutes over the whole week."""
    from datetime import UTC, datetime

    from upmetr_audit.shipper import AuditLogger
    from upmetr_audit.shipper.demo import DemoTraffic

    audit = AuditLogger(service_name="upmetr-demo", endpoint=collector.logs_url,
                        spool_dir=str(tmp_path / "spool"),
                        headers={"authorization": f"Bearer {TOKEN}"})
    sent = DemoTraffic(audit, attack_probability=0).backfill(days=7)
    audit.shutdown(timeout_s=60)
    wait_for(lambda: count(store) == sent, timeout_s=60)
    det = Detector(store.client)
    now = datetime.now(UTC)
    steps = int(7 * 24 * 6) + 1
    for k in range(steps):
        det.run_once(now - timedelta(minutes=10 * k))
    assert count(store, schema.ALERTS_TABLE) == 0


@pytest.mark.parametrize("kind, rule", [
    ("brute_force", "user_brute_force"), ("password_spraying", "password_spraying"),
    ("credential_stuffing", "credential_stuffing"), ("distributed", "distributed_attack")])
def test_each_demo_attack_is_detected(store, kind, rule):
    """The demo's scripted attacks (which the page's banner shows) trip their rule."""
    from upmetr_audit.shipper.demo import DemoTraffic

    class Rows:
        def __init__(self):
            self.events = []

        def emit(self, action, **kw):
            from datetime import UTC, datetime
            self.events.append({"timestamp": datetime.fromtimestamp(kw["timestamp"] / 1e9, UTC),
                                "action": action, "status": kw["status"], "org_id": kw["org"],
                                "user_email": kw["user"], "ip": kw["ip"]})

    rows = Rows()
    DemoTraffic(rows, seed=5).attack(kind, int(sc.T.timestamp() * 1e9))
    insert_events(store.client, rows.events)
    last = max(e["timestamp"] for e in rows.events)
    rules_fired = {c["rule"] for c in Detector(store.client).run_once(last + timedelta(minutes=2)).changes}
    assert rule in rules_fired


def test_detector_sql_reads_a_bounded_part_of_the_table(store):
    """The rule queries use the sort key: EXPLAIN shows the primary key and the
    partition key prune (the speed itself is a benchmark, bench/detector.py)."""
    insert_events(store.client, [sc.fail(sc.m(0) - timedelta(days=40 * k), "a@acme.test", "192.0.2.1",
                                         org=f"org-{k}") for k in range(5)])
    end = "toDateTime64('2026-11-20 12:00:00', 6, 'UTC')"
    sql = rules.rule_sql(rules.RuleSet(), "user_brute_force", end)
    plan = "\n".join(r[0] for r in store.client.query("EXPLAIN indexes = 1 " + sql).result_rows)
    assert "PrimaryKey" in plan and "timestamp" in plan
    assert "Partition" in plan



def test_two_detectors_running_concurrently_raise_one_alert(store):
    """Two instances (threads sharing chDB, as two processes would share a
    server) evaluate the same instant at once: one alert, identical rows per
    version, and the same delivery id for any notification both send."""
    import threading

    insert_events(store.client, sc.brute_force(11))
    barrier = threading.Barrier(2)
    notes = []

    def run():
        det = Detector(store.client, notify=lambda row, rule: notes.append(
            f"{row['alert_id']}.{row['version']}"))
        barrier.wait()
        det.run_once(sc.m(8))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    [alert] = current_alerts(store.client)
    assert alert["severity"] == "critical"
    rows = store.client.query(f"SELECT DISTINCT * FROM {schema.ALERTS_TABLE}").result_rows
    assert len(rows) == 1                       # both wrote the same row, or one wrote nothing
    assert len(set(notes)) == 1 and 1 <= len(notes) <= 2


# -- fixes from the review of the alerting (each test fails without its fix) --


def test_a_per_org_warning_level_leaves_the_other_orgs_thresholds_alone(store):
    """ip_brute_force has only a critical level; one org adding a warning level
    must not lift every other org's threshold out of reach."""
    ruleset = rules.from_mapping({"orgs": {"org-acme": {"rules": {"ip_brute_force": {"warning": 10}}}}})
    events = [sc.fail(sc.m(0) + timedelta(seconds=10 * i), f"u{i % 6}@b.test", "203.0.113.77", org=org)
              for org in ("org-b", "org-acme") for i in range(24)]
    events += [sc.fail(sc.m(0) + timedelta(seconds=10 * i), f"u{i % 6}@acme.test", "203.0.113.78",
                       org="org-acme") for i in range(12)]
    insert_events(store.client, events)
    r = Detector(store.client, ruleset).run_once(sc.m(6))
    assert {(c["org_id"], c["key"], c["severity"], c["threshold"]) for c in r.changes
            if c["rule"] == "ip_brute_force"} == {
        ("org-b", "203.0.113.77", "critical", 20.0), ("org-acme", "203.0.113.77", "critical", 10.0),
        ("org-acme", "203.0.113.78", "warning", 10.0)}


def test_an_allowlist_of_an_org_rule_keeps_the_top_level_allowlist(store):
    ruleset = rules.from_mapping({"allow": ["10.0.0.0/8"], "orgs": {
        "org-a": {"rules": {"user_brute_force": {"allow": ["192.0.2.0/24"]}}}}})
    insert_events(store.client, sc.brute_force(12, ip="10.1.2.3") + sc.brute_force(12, ip="192.0.2.5"))
    assert Detector(store.client, ruleset).run_once(sc.m(7)).changes == []


@pytest.mark.parametrize("rule, per_user", [("password_spraying", 3), ("credential_stuffing", 2)])
def test_one_user_tried_too_often_does_not_hide_a_spray(store, rule, per_user):
    users = [f"user{i}@acme.test" for i in range(16)]
    spray = [sc.fail(sc.T + timedelta(seconds=45 * i), users[i], "203.0.113.50") for i in range(16)]
    extra = [sc.fail(sc.T + timedelta(seconds=30 + 60 * i), "admin@acme.test", "203.0.113.50")
             for i in range(per_user + 1)]
    insert_events(store.client, spray + extra)
    r = Detector(store.client).run_once(sc.m(15))
    [hit] = [c for c in r.changes if c["rule"] == rule]
    assert (hit["key"], hit["value"], hit["failures"]) == ("203.0.113.50", 16.0, 16 + per_user + 1)


def test_events_without_a_client_address_are_not_one_attacker_ip(store):
    """No client.address is stored as '::': no IP rule may key on it."""
    events = [sc.fail(sc.T + timedelta(seconds=23 * i), f"employee{i}@acme.test", "::") for i in range(25)]
    events += sc.brute_force(6, user="victim@acme.test", ip="::")
    events.append(sc.ok(sc.m(9), "employee3@acme.test", "::"))
    insert_events(store.client, events)
    r = Detector(store.client).run_once(sc.m(11))
    assert fired(r) == {("user_brute_force", "user", "victim@acme.test", "warning")}


def test_a_distributed_attack_counts_sources_as_the_ip_rules_key_them(store):
    """An unknown address (::) is no source, and one IPv6 /64 is one source."""
    def attempts(user, ips):
        return [sc.fail(sc.m(2 * i), user, ip) for i, ip in enumerate(ips)]
    insert_events(store.client,
                  attempts("a@acme.test", ["::", *(f"192.0.2.{i}" for i in range(1, 5))])
                  + attempts("b@acme.test", [f"2001:db8:1:2::{i}" for i in range(1, 9)])
                  + attempts("c@acme.test", [f"192.0.2.{i}" for i in range(1, 6)]))
    got = {c["key"] for c in Detector(store.client).run_once(sc.m(12)).changes
           if c["rule"] == "distributed_attack"}
    assert got == {"c@acme.test"}


def test_letter_case_does_not_split_one_account(store):
    names = ["victim@acme.test", "Victim@acme.test", "VICTIM@ACME.TEST"]
    events = [sc.fail(sc.m(10) + timedelta(seconds=40 * i), names[i % 3], "198.51.100.7") for i in range(12)]
    events += [sc.fail(sc.m(4 * i), ["cfo@acme.test", "CFO@acme.test"][i % 2], f"192.0.2.{10 + i}")
               for i in range(6)]
    events += [sc.fail(sc.m(6.5) + timedelta(seconds=40 * i), f"User{i}@acme.test" if i < 10
                       else f"user{i - 10}@ACME.test", "203.0.113.50") for i in range(20)]
    events.append(sc.ok(sc.m(18), "Victim@Acme.Test", "198.51.100.99"))
    insert_events(store.client, events)
    r = Detector(store.client).run_once(sc.m(22))
    got = {(c["rule"], c["key"], c["value"]) for c in r.changes}
    assert ("user_brute_force", "victim@acme.test", 12.0) in got
    assert ("distributed_attack", "cfo@acme.test", 6.0) in got
    assert ("password_spraying", "203.0.113.50", 10.0) in got     # 10 users, 2 attempts each
    assert ("success_after_failures", "victim@acme.test", 1.0) in got


def test_ipv6_sources_are_keyed_by_their_64_and_ipv4_by_address(store):
    v6 = [sc.fail(sc.T + timedelta(seconds=14 * i), f"leak{i}@mail.test", f"2001:db8:1:2::{i + 1:x}")
          for i in range(40)]
    v4 = [sc.fail(sc.T + timedelta(seconds=14 * i), f"leak{i}@mail.test", f"::ffff:198.51.100.{i}")
          for i in range(40)]
    insert_events(store.client, v6 + v4 + [sc.ok(sc.m(9.5), "ana@acme.test", "2001:db8:1:2:ffff::9")])
    r = Detector(store.client).run_once(sc.m(11))
    assert {(c["rule"], c["key"]) for c in r.changes} == {
        (rule, "2001:db8:1:2::/64") for rule in (
            "ip_brute_force", "password_spraying", "credential_stuffing", "success_after_failures")
    } | {("org_spike", "org-a")}
    assert {c["value"] for c in r.changes if c["rule"] == "ip_brute_force"} == {40.0}


def test_a_failed_alert_write_repeats_the_notification_with_the_same_delivery_id(store):
    """The notification goes to the outbox before the alert row is written; if
    the write fails, the next run notifies again: with the same id, so the
    receiver can drop the repeat."""
    insert_events(store.client, sc.brute_force(6))
    sent = []

    def notify_then_lose_the_table(row, rule):
        sent.append(f"{row['alert_id']}.{row['version']}")
        if len(sent) == 1:   # the alert write that follows fails for real
            store.client.command(f"RENAME TABLE {schema.ALERTS_TABLE} TO {schema.ALERTS_TABLE}_away")

    det = Detector(store.client, notify=notify_then_lose_the_table)
    with pytest.raises(Exception, match="UNKNOWN_TABLE|doesn't exist|does not exist"):
        det.run_once(sc.m(6))
    store.client.command(f"RENAME TABLE {schema.ALERTS_TABLE}_away TO {schema.ALERTS_TABLE}")
    det.run_once(sc.m(7))
    assert len(sent) == 2 and sent[0] == sent[1]
    [alert] = current_alerts(store.client)
    assert f"{alert['alert_id']}.{alert['version']}" == sent[0]


def test_an_acknowledge_racing_an_escalation_keeps_both(store):
    """A superadmin acknowledges while the detector escalates (both write the
    next version): the alert is acknowledged and critical, and the escalation is
    not sent again."""
    insert_events(store.client, sc.brute_force(6))
    sent = []

    def notify(row, rule):
        sent.append((row["change"], row["severity"]))
        if row["change"] == "escalated":    # between the detector's read and its write
            acknowledge(store.client, "org-a", str(row["alert_id"]), "boss@acme.test", now=sc.m(8))

    det = Detector(store.client, notify=notify)
    det.run_once(sc.m(6))
    insert_events(store.client, sc.brute_force(5, start=4))
    det.run_once(sc.m(8))
    [alert] = current_alerts(store.client)
    assert (alert["state"], alert["severity"], alert["value"]) == ("acknowledged", "critical", 11.0)
    assert det.run_once(sc.m(9)).changes == []
    assert sent == [("opened", "warning"), ("escalated", "critical")]
    aid = str(alert["alert_id"])
    assert acknowledge(store.client, "org-a", aid, "boss@acme.test")["version"] == 2     # a no-op
    assert [h["change"] for h in alert_history(store.client, "org-a", aid)] == [
        "opened", "escalated", "acknowledged"]

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

"""Spike alerts on the page and in the API: the banner and its exact link, the
card, /audit/alerts with acknowledge (audited, CSRF-protected, org-scoped)."""

import re
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from upmetr_audit.collector import rules as rules_mod
from upmetr_audit.collector.detector import Detector, current_alerts
from upmetr_audit.web import accounts
from upmetr_audit.web.app import create_app

import scenarios as sc
from helpers import insert_events
from test_web_api import PASSWORD, signed_in

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def emitted():
    return []


@pytest.fixture
def app(store, emitted):
    for email, org, role in [("root@acme.test", "acme", "superadmin"),
                             ("admin@acme.test", "acme", "admin"),
                             ("root@globex.test", "globex", "superadmin")]:
        accounts.create_user(store.client, email, org, role, PASSWORD)
    for org in ("acme", "globex"):
        accounts.set_module(store.client, org, accounts.AUDIT_MODULE, True)
    # A brute force on acme, a distributed attack on globex, happening now;
    # noise around them that the link must leave out.
    start = NOW - timedelta(minutes=6)
    acme = [dict(e, org_id="acme") for e in sc.brute_force(6, user="victim@acme.test")]
    for e in acme:
        e["timestamp"] = start + (e["timestamp"] - sc.T)
    noise = [dict(acme[0], user_email="other@acme.test"),
             dict(acme[0], status="success", timestamp=start - timedelta(minutes=1)),
             dict(acme[0], action="monitor.create"),
             dict(acme[0], timestamp=start - timedelta(hours=2))]
    globex = [sc.fail(NOW - timedelta(minutes=25 - 5 * i), "cfo@globex.test", f"192.0.2.{i + 1}",
                      org="globex") for i in range(5)]
    insert_events(store.client, acme + noise + globex)
    Detector(store.client).run_once(NOW)
    return create_app({"STORE_CLIENT": store.client, "SECRET_KEY": "k" * 40, "TESTING": True,
                       "AUDIT_EMIT": lambda action, **kw: emitted.append((action, kw))})


def acme_alert(store):
    [a] = [a for a in current_alerts(store.client) if a["org_id"] == "acme"]
    return a


def test_banner_shows_rule_key_count_and_window_and_only_for_the_own_org(app):
    html = signed_in(app, "root@acme.test").get("/audit").get_data(as_text=True)
    banner = re.search(r'<div class="banner warning" role="alert"[^>]*>(.*?)</div>', html, re.S).group(1)
    text = " ".join(re.sub(r"<[^>]+>", " ", banner).split())
    assert "Brute force on one account" in text
    assert "victim@acme.test" in text and "6 failed attempts in 15 min" in text
    assert "cfo@globex.test" not in html and "Distributed" not in html
    assert 'data-card="spike"' in html and "1 alert firing" in html


def test_the_banner_link_lists_exactly_the_counted_events(app, store):
    client = signed_in(app, "root@acme.test")
    html = client.get("/audit").get_data(as_text=True)
    link = re.search(r'<a href="([^"]+)" data-alert-link>', html).group(1).replace("&amp;", "&")
    query = parse_qs(urlsplit(link).query)
    assert query["user"] == ["victim@acme.test"] and query["status"] == ["failure"]
    assert query["action"] == ["auth.login,mfa.verify,magic_link.verify"]
    events = client.get("/api/v1/events?" + urlsplit(link).query).get_json()["events"]
    assert sorted(e["event_id"] for e in events) == sorted(acme_alert(store)["samples"])
    assert len(events) == 6
    table = client.get(link).get_data(as_text=True)
    assert table.count("victim@acme.test</td>") == 6 and "other@acme.test" not in table


def test_the_link_leaves_out_the_sources_the_rule_allowlists(store):
    # Failed logins from the office network (allowlisted for this org) are
    # not counted; the banner's link must not list them either.
    rules = rules_mod.from_mapping({"orgs": {"initech": {"allow": ["10.0.0.0/8", "2001:db8::/32"]}}})
    accounts.create_user(store.client, "root@initech.test", "initech", "superadmin", PASSWORD)
    accounts.set_module(store.client, "initech", accounts.AUDIT_MODULE, True)
    start = NOW - timedelta(minutes=6)
    counted = [sc.fail(start + timedelta(seconds=30 * i), "victim@initech.test", "203.0.113.9",
                       org="initech") for i in range(6)]
    allowed = [sc.fail(start + timedelta(seconds=30 * i + 10), "victim@initech.test", ip, org="initech")
               for i, ip in enumerate(["10.1.2.3", "10.200.0.1", "2001:db8::7"])]
    insert_events(store.client, counted + allowed)
    Detector(store.client, rules).run_once(NOW)
    [alert] = [a for a in current_alerts(store.client) if a["org_id"] == "initech"]
    assert alert["value"] == 6  # the allowlisted sources were not counted
    app = create_app({"STORE_CLIENT": store.client, "SECRET_KEY": "k" * 40, "TESTING": True,
                      "ALERT_RULES": rules, "AUDIT_EMIT": lambda action, **kw: None})
    client = signed_in(app, "root@initech.test")
    html = client.get("/audit").get_data(as_text=True)
    link = re.search(r'<a href="([^"]+)" data-alert-link>', html).group(1).replace("&amp;", "&")
    assert parse_qs(urlsplit(link).query)["not_ip"] == ["10.0.0.0/8,2001:db8::/32"]
    events = client.get("/api/v1/events?" + urlsplit(link).query).get_json()["events"]
    assert sorted(e["event_id"] for e in events) == sorted(alert["samples"])
    assert {e["ip"] for e in events} == {"203.0.113.9"}
    table = client.get(link).get_data(as_text=True)
    assert table.count("victim@initech.test</td>") == 6 and "10.1.2.3" not in table


@pytest.mark.parametrize("email", ["vic\ttim@acme.test", " padded@acme.test", "a" * 300 + "@acme.test"])
def test_the_link_lists_the_events_of_any_email_a_failed_sign_in_can_store(store, email):
    # A failed sign-in records the email as typed (up to 320 characters, inner
    # tabs kept); another service may send spaces. The link must still match it.
    accounts.create_user(store.client, "root@acme.test", "acme", "superadmin", PASSWORD)
    accounts.set_module(store.client, "acme", accounts.AUDIT_MODULE, True)
    insert_events(store.client, [sc.fail(NOW - timedelta(minutes=3, seconds=i), email, "192.0.2.9",
                                         org="acme") for i in range(6)])
    Detector(store.client).run_once(NOW)
    app = create_app({"STORE_CLIENT": store.client, "SECRET_KEY": "k" * 40, "TESTING": True})
    client = signed_in(app, "root@acme.test")
    [alert] = client.get("/api/v1/alerts").get_json()["alerts"]
    assert alert["key"] == email
    query = urlsplit(alert["events_link"]).query
    r = client.get("/api/v1/events?" + query)
    assert r.status_code == 200, r.get_json()
    assert sorted(e["event_id"] for e in r.get_json()["events"]) == sorted(alert["sample_event_ids"])
    assert {e["user_email"] for e in r.get_json()["events"]} == {email}
    page = client.get("/audit?" + query)
    assert page.status_code == 200 and "No audit events match" not in page.get_data(as_text=True)

def test_a_rule_allowlist_longer_than_the_link_can_carry_is_refused():
    nets = [f"10.0.{i}.0/24" for i in range(rules_mod.MAX_ALLOW_NETWORKS)]
    rules_mod.from_mapping({"allow": nets})
    with pytest.raises(rules_mod.RuleError,
                       match=r"orgs\.initech\.rules\.\w+: allows 65 networks in all; at most 64"):
        rules_mod.from_mapping({"allow": nets, "orgs": {"initech": {"allow": ["192.0.2.0/24"]}}})


def test_alerts_api_lists_the_org_alerts_only(app):
    body = signed_in(app, "root@acme.test").get("/api/v1/alerts").get_json()
    [alert] = body["alerts"]
    assert (alert["rule"], alert["severity"], alert["state"], alert["key"], alert["value"]) == (
        "user_brute_force", "warning", "firing", "victim@acme.test", 6)
    assert alert["window_minutes"] == 15 and len(alert["sample_event_ids"]) == 6
    [g] = signed_in(app, "root@globex.test").get("/api/v1/alerts").get_json()["alerts"]
    assert g["rule"] == "distributed_attack" and g["key"] == "cfo@globex.test"
    assert signed_in(app, "admin@acme.test").get("/api/v1/alerts").status_code == 403
    assert app.test_client().get("/api/v1/alerts").status_code == 401
    assert signed_in(app, "root@acme.test").get("/api/v1/alerts?state=bogus").status_code == 400


def test_acknowledge_on_the_page_needs_csrf_is_audited_and_clears_the_banner(app, store, emitted):
    client = signed_in(app, "root@acme.test")
    alert_id = str(acme_alert(store)["alert_id"])
    page = client.get("/audit/alerts").get_data(as_text=True)
    assert alert_id in page and "Acknowledge" in page
    assert client.post(f"/audit/alerts/{alert_id}/ack").status_code == 400      # no CSRF token
    assert acme_alert(store)["state"] == "firing"
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    r = client.post(f"/audit/alerts/{alert_id}/ack", data={"csrf_token": token})
    assert r.status_code == 302
    row = acme_alert(store)
    assert (row["state"], row["changed_by"]) == ("acknowledged", "root@acme.test")
    acks = [kw for action, kw in emitted if action == "system.alert_acknowledge"]
    assert acks == [{**acks[0], "org": "acme", "user": "root@acme.test",
                     "resource": ("security_alert", alert_id)}]
    html = client.get("/audit").get_data(as_text=True)
    assert 'class="banner' not in html
    assert "acknowledged by root@acme.test" in client.get("/audit/alerts").get_data(as_text=True)


def test_who_acknowledged_stays_shown_after_the_detector_updates_the_alert(app, store):
    client = signed_in(app, "root@acme.test")
    alert_id = str(acme_alert(store)["alert_id"])
    page = client.get("/audit/alerts").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert client.post(f"/audit/alerts/{alert_id}/ack", data={"csrf_token": token}).status_code == 302
    # Two more failures: the detector's next run writes a newer version of the alert.
    more = [dict(e, org_id="acme", timestamp=NOW - timedelta(seconds=90 - i))
            for i, e in enumerate(sc.brute_force(2, user="victim@acme.test"))]
    insert_events(store.client, more)
    changes = Detector(store.client).run_once(NOW + timedelta(seconds=30)).changes
    assert [(c["change"], c["changed_by"]) for c in changes] == [("updated", "detector")]
    assert "acknowledged by root@acme.test" in client.get("/audit/alerts").get_data(as_text=True)
    [alert] = client.get("/api/v1/alerts").get_json()["alerts"]
    assert (alert["state"], alert["changed_by"], alert["acknowledged_by"]) == (
        "acknowledged", "detector", "root@acme.test")
    assert alert["acknowledged_at"] is not None


def test_the_link_of_a_mixed_case_attack_lists_every_spelling_it_counted(app, store):
    spellings = ["Mallory@Acme.test", "mallory@acme.TEST", "MALLORY@ACME.TEST"]
    attack = [dict(e, org_id="acme", user_email=spellings[i % 3],
                   timestamp=NOW - timedelta(minutes=5) + timedelta(seconds=30 * i))
              for i, e in enumerate(sc.brute_force(6, user="x"))]
    insert_events(store.client, attack)
    Detector(store.client).run_once(NOW + timedelta(minutes=1))
    [alert] = [a for a in current_alerts(store.client) if a["key"] == "mallory@acme.test"]
    assert alert["failures"] == 6
    client = signed_in(app, "root@acme.test")
    [shown] = [a for a in client.get("/api/v1/alerts").get_json()["alerts"]
               if a["key"] == "mallory@acme.test"]
    query = urlsplit(shown["events_link"]).query
    assert parse_qs(query)["user_case"] == ["any"]
    events = client.get("/api/v1/events?" + query).get_json()["events"]
    assert sorted(e["event_id"] for e in events) == sorted(alert["samples"])
    assert sorted(e["user_email"] for e in events) == sorted(spellings * 2)
    page = client.get(shown["events_link"]).get_data(as_text=True)
    assert re.search(r'name="user_case" value="any"\s+checked', page)


@pytest.mark.parametrize("email", ["victim@acme.test\x00", "v" * 16400 + "@acme.test"])
def test_the_link_of_an_alert_on_an_address_the_page_cannot_filter_by_still_works(app, store, email):
    attack = [dict(e, org_id="acme", user_email=email,
                   timestamp=NOW - timedelta(minutes=5) + timedelta(seconds=30 * i))
              for i, e in enumerate(sc.brute_force(6, user="x"))]
    insert_events(store.client, attack)
    Detector(store.client).run_once(NOW + timedelta(minutes=1))
    client = signed_in(app, "root@acme.test")
    [shown] = [a for a in client.get("/api/v1/alerts").get_json()["alerts"] if a["key"] == email]
    query = parse_qs(urlsplit(shown["events_link"]).query)
    assert "user" not in query and query["status"] == ["failure"]  # the window's failures
    r = client.get("/api/v1/events?" + urlsplit(shown["events_link"]).query)
    assert r.status_code == 200
    assert set(shown["sample_event_ids"]) <= {e["event_id"] for e in r.get_json()["events"]}
    assert client.get(shown["events_link"]).status_code == 200


def test_another_org_cannot_acknowledge_or_see_an_alert(app, store):
    alert_id = str(acme_alert(store)["alert_id"])
    globex = signed_in(app, "root@globex.test")
    assert globex.post(f"/api/v1/alerts/{alert_id}/ack",
                       headers={"X-CSRF-Token": _token(globex)}).status_code == 404
    assert alert_id not in globex.get("/audit/alerts").get_data(as_text=True)
    assert acme_alert(store)["state"] == "firing"


@pytest.mark.parametrize("bad", ["not-a-uuid", "00000000-0000-0000-0000-000000000000", "%00", "a" * 300])
def test_acknowledge_of_unknown_ids_is_a_clean_404(app, bad):
    client = signed_in(app, "root@acme.test")
    r = client.post(f"/api/v1/alerts/{bad}/ack", headers={"X-CSRF-Token": _token(client)})
    assert r.status_code == 404


def test_api_acknowledge_then_resolved_alert_is_a_conflict(app, store):
    client = signed_in(app, "root@acme.test")
    alert_id = str(acme_alert(store)["alert_id"])
    r = client.post(f"/api/v1/alerts/{alert_id}/ack", headers={"X-CSRF-Token": _token(client)})
    assert r.status_code == 200 and r.get_json()["alert"]["state"] == "acknowledged"
    assert r.get_json()["alert"]["acknowledged_by"] == "root@acme.test"
    assert r.get_json()["alert"]["acknowledged_at"] == r.get_json()["alert"]["changed_at"]
    Detector(store.client).run_once(NOW + timedelta(hours=2))
    r = client.post(f"/api/v1/alerts/{alert_id}/ack", headers={"X-CSRF-Token": _token(client)})
    assert r.status_code == 409 and "resolved" in r.get_json()["error"]["message"]
    states = {a["state"] for a in client.get("/api/v1/alerts?state=all").get_json()["alerts"]}
    assert states == {"resolved"}


def test_hostile_alert_keys_are_escaped(store):
    accounts.create_user(store.client, "root@acme.test", "acme", "superadmin", PASSWORD)
    accounts.set_module(store.client, "acme", accounts.AUDIT_MODULE, True)
    evil = '<script>alert(1)</script>"@x.test'
    insert_events(store.client, [sc.fail(NOW - timedelta(minutes=3, seconds=i), evil, "192.0.2.9",
                                         org="acme") for i in range(6)])
    Detector(store.client).run_once(NOW)
    app = create_app({"STORE_CLIENT": store.client, "SECRET_KEY": "k" * 40, "TESTING": True})
    client = signed_in(app, "root@acme.test")
    for path in ("/audit", "/audit/alerts"):
        html = client.get(path).get_data(as_text=True)
        assert "<script>alert(1)" not in html and "&lt;script&gt;" in html


def _token(client) -> str:
    html = client.get("/audit/alerts").get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def test_an_ipv6_alert_is_keyed_by_its_64_and_its_link_lists_the_counted_events(store):
    """One host rotating through its /64 is one source; the link's ip filter
    (a CIDR) lists every failure the rule counted, and nothing from outside."""
    accounts.create_user(store.client, "root@acme.test", "acme", "superadmin", PASSWORD)
    accounts.set_module(store.client, "acme", accounts.AUDIT_MODULE, True)
    start = NOW - timedelta(minutes=8)
    counted = [sc.fail(start + timedelta(seconds=20 * i), f"u{i % 5}@acme.test", f"2001:db8:7:7::{i + 1:x}",
                       org="acme") for i in range(21)]
    outside = [sc.fail(start, "u1@acme.test", "2001:db8:7:8::1", org="acme")]
    insert_events(store.client, counted + outside)
    Detector(store.client).run_once(NOW)
    app = create_app({"STORE_CLIENT": store.client, "SECRET_KEY": "k" * 40, "TESTING": True})
    client = signed_in(app, "root@acme.test")
    [alert] = [a for a in client.get("/api/v1/alerts").get_json()["alerts"] if a["rule"] == "ip_brute_force"]
    assert (alert["key"], alert["value"]) == ("2001:db8:7:7::/64", 21)
    events = client.get("/api/v1/events?" + urlsplit(alert["events_link"]).query).get_json()["events"]
    assert len(events) == 21 and {e["ip"] for e in events} == {e["ip"] for e in counted}

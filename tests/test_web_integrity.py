"""serve's sealer job (seal, then check the new seals) and what the page shows:
the integrity badge per org, the latest result, and the monthly reports."""

import re

import pytest

from upmetr_audit.collector import keys, report, schema
from upmetr_audit.collector import verify as verify_mod
from upmetr_audit.collector.integrity_job import IntegrityJob
from upmetr_audit.collector.sealing import to_dt
from upmetr_audit.web import accounts
from upmetr_audit.web.app import create_app

from integrity_helpers import HOUR, MIN, T0, event, insert
from test_web_api import PASSWORD, signed_in


@pytest.fixture
def data_dir(tmp_path):
    return str(tmp_path / "data")


@pytest.fixture
def app(store, data_dir):
    for email, org in [("root@acme.test", "org-a"), ("root@globex.test", "org-b")]:
        accounts.create_user(store.client, email, org, "superadmin", PASSWORD)
        accounts.set_module(store.client, org, accounts.AUDIT_MODULE, True)
    insert(store.client, [event(org=o, received_us=T0 + h * HOUR + 10 * MIN, user=f"u{h}@{o}.test")
                          for o in ("org-a", "org-b") for h in range(3)])
    return create_app({"STORE_CLIENT": store.client, "SECRET_KEY": "k" * 40, "TESTING": True,
                       "DATA_DIR": data_dir})


def badge(client) -> tuple[str, str]:
    html = client.get("/audit").get_data(as_text=True)
    m = re.search(r'data-integrity="(\w+)">\s*(.*?)\s*</a>', html, re.S)
    return m.group(1), " ".join(m.group(2).split())


def test_badge_before_any_check_then_verified_through_the_sealed_hour(app, store, data_dir):
    client = signed_in(app, "root@acme.test")
    assert badge(client) == ("never", "Not verified yet")
    job = IntegrityJob(store.client, data_dir)
    record = job.run_once(T0 + 3 * HOUR + 6 * MIN)           # hours 0-2 are due (5 min grace)
    assert record["ok"] and record["scope"] == "full"
    state, text = badge(client)
    assert state == "verified" and text.startswith("Verified through ")
    page = client.get("/audit/integrity").get_data(as_text=True)
    assert "Every sealed window of this organization matches" in page


def test_the_next_tick_checks_only_new_seals_and_problems_stay(app, store, data_dir):
    job = IntegrityJob(store.client, data_dir)
    job.run_once(T0 + 3 * HOUR + 6 * MIN)
    insert(store.client, [event(org="org-a", received_us=T0 + 3 * HOUR + 20 * MIN)])
    # Someone edits an event of org-a's newest sealed hour.
    store.client.command(f"ALTER TABLE {schema.EVENTS_TABLE} UPDATE user_email = 'x@evil.test' "
                         "WHERE org_id = 'org-a' AND user_email = 'u2@org-a.test' "
                         "SETTINGS mutations_sync = 2")
    record = job.run_once(T0 + 4 * HOUR + 6 * MIN)
    assert record["scope"] == "incremental" and not record["ok"]
    assert [w["status"] for w in record["windows"] if w["org_id"] == "org-a"] == ["modified"]
    job.run_once(T0 + 5 * HOUR + 6 * MIN)                    # a clean tick later: still a problem
    assert not verify_mod.latest_result(data_dir)["ok"]

    acme = signed_in(app, "root@acme.test")
    assert badge(acme) == ("problem", "Integrity problem detected")
    page = acme.get("/audit/integrity").get_data(as_text=True)
    assert "modified" in page and "Integrity problem detected" in page
    # The other org's windows are intact, and it sees nothing of org-a's problem.
    globex = signed_in(app, "root@globex.test")
    assert badge(globex)[0] == "verified"
    assert "org-a" not in globex.get("/audit/integrity").get_data(as_text=True)


def test_reports_are_listed_and_downloadable_by_their_org_only(app, store, data_dir):
    ring = keys.load_or_generate(keys.keys_dir_for(data_dir), T0)
    now = T0 + 5 * HOUR
    result = verify_mod.verify(store.client, ring, f"{data_dir}/digests", now)
    out = f"{data_dir}/reports"
    for org in ("org-a", "org-b"):
        report.build(store.client, ring, org, "2026-09", out, now, result)
    acme = signed_in(app, "root@acme.test")
    page = acme.get("/audit/integrity").get_data(as_text=True)
    links = re.findall(r'href="(/audit/reports/[^"]+)"', page)
    assert len(links) == 2 and all("org-a" in link for link in links)
    r = acme.get(links[0])
    assert r.status_code == 200 and "attachment" in r.headers["Content-Disposition"]
    theirs = [r["html_file"] for r in report.list_reports(out) if r["org_id"] == "org-b"][0]
    assert acme.get(f"/audit/reports/{theirs}").status_code == 404
    for bad in ("..%2F..%2Fkeys%2Fkeyring.json", "keyring.json", "%00"):
        assert acme.get(f"/audit/reports/{bad}").status_code == 404
    assert signed_in(app, "root@globex.test").get(links[0]).status_code == 404


def test_badge_says_pending_while_no_window_is_sealed_yet(app, store, data_dir):
    job = IntegrityJob(store.client, data_dir)
    job.run_once(T0 + 30 * MIN)          # the first hour has not ended
    assert badge(signed_in(app, "root@acme.test")) == (
        "pending", "Not sealed yet: the first seal follows the first full hour")


def test_a_problem_of_one_org_is_not_shown_to_another(app, store, data_dir):
    job = IntegrityJob(store.client, data_dir)
    job.run_once(T0 + 3 * HOUR + 6 * MIN)
    # An erasure row of org-b with no signed manifest: org-b's problem, not one of its windows.
    [[event_id]] = store.client.query(f"SELECT toString(event_id) FROM {schema.EVENTS_TABLE} "
                                      "WHERE org_id = 'org-b' LIMIT 1").result_rows
    store.client.insert(schema.ERASURES_TABLE, [["f" * 32, "org-b", event_id, "00" * 32,
                                                 to_dt(T0 + 4 * HOUR)]],
                        column_names=["erasure_id", "org_id", "event_id", "commitment", "erased_at"])
    job.run_once(T0 + 4 * HOUR + 6 * MIN)
    job.run_once(T0 + 5 * HOUR + 6 * MIN)  # sticky across a later tick
    latest = verify_mod.latest_result(data_dir)
    assert not latest["ok"] and latest["problems"] == [] and list(latest["org_problems"]) == ["org-b"]
    assert badge(signed_in(app, "root@acme.test"))[0] == "verified"
    globex = signed_in(app, "root@globex.test")
    assert badge(globex) == ("problem", "Integrity problem detected")
    page = globex.get("/audit/integrity").get_data(as_text=True)
    assert "1 problem(s)" in page


def test_a_bad_window_checked_again_by_each_tick_is_listed_once(store, data_dir):
    insert(store.client, [event(org="org-a", received_us=T0 + h * HOUR + 10 * MIN, user=f"u{h}@a.test")
                          for h in range(3)])
    job = IntegrityJob(store.client, data_dir)
    job.run_once(T0 + 3 * HOUR + 6 * MIN)
    store.client.command(f"ALTER TABLE {schema.EVENTS_TABLE} UPDATE user_email = 'x@evil.test' "
                         "WHERE user_email = 'u2@a.test' SETTINGS mutations_sync = 2")
    for minute in (20, 30, 40):  # no new seal: each tick checks the newest window (hour 2) again
        record = job.run_once(T0 + 3 * HOUR + minute * MIN)
    assert [w["status"] for w in record["windows"]] == ["modified"]

"""GDPR erasure under hard cases: a person seen from hundreds of addresses,
personal values in other letter cases, refused rows and alert keys, a
failure half-way, and no copy of the person left in the store's folder."""

import json
import os
import subprocess

import pytest
from test_integrity import NOW, _erase, only

from upmetr_audit.collector import erasure, report, schema
from upmetr_audit.collector.detector import COLUMNS
from upmetr_audit.collector.processors import to_batch
from upmetr_audit.collector.sealing import to_dt

from helpers import audit_attrs, otlp_request
from integrity_helpers import HOUR, MIN, T0, event, insert, two_orgs_sealed


@pytest.fixture
def sealed(store, tmp_path):
    return two_orgs_sealed(store.client, tmp_path, NOW)


def unfinished_mutations(client) -> list:
    return client.query("SELECT table, command FROM system.mutations WHERE NOT is_done").result_rows


def files_naming(folder: str, text: str) -> list[str]:
    out = subprocess.run(["grep", "-rlaF", text, folder], capture_output=True, text=True)
    return out.stdout.split()


def test_a_person_seen_from_300_addresses_is_erased_and_later_erasures_still_work(sealed):
    ips = [f"198.51.{i // 250}.{i % 250 + 1}" for i in range(300)]
    insert(sealed.client, [event(received_us=NOW + i, user="roamer@example.com", ip=ip,
                                 details={"seen_from": ip}) for i, ip in enumerate(ips)])
    done = _erase(sealed, "roamer@example.com")
    assert done.event_count == 300
    assert sealed.client.command("SELECT count() FROM audit.audit_events "
                                 "WHERE user_email = 'roamer@example.com' OR details['seen_from'] != '' "
                                 "AND details['seen_from'] != '[erased]'") == 0
    assert unfinished_mutations(sealed.client) == []
    _erase(sealed, "bo@example.com")  # nothing stuck holds up the next erasure
    assert sealed.verify(NOW + 2 * MIN).ok


def test_the_mutations_text_and_the_store_folder_keep_no_personal_value(sealed, store):
    insert(sealed.client, [event(received_us=NOW, user="Dee.Secret@example.com", ip="192.0.2.77",
                                 user_id="uid-dee-4711", changes='{"email": "Dee.Secret@example.com"}',
                                 details={"note": "mail to dee.secret@EXAMPLE.com"})])
    done = erasure.erase(sealed.client, sealed.keyring, sealed.digest_dir, "org-a",
                         "Dee.Secret@example.com", now_us=NOW + MIN, actor="dpo@example.com",
                         embedded=True)
    assert done.old_copies_deleted is True
    commands = " ".join(c for (c,) in sealed.client.query("SELECT command FROM system.mutations").result_rows)
    folder = store.url.removeprefix("chdb://")
    for secret in ("Dee.Secret@example.com", "dee.secret@example.com", "192.0.2.77", "uid-dee-4711"):
        assert secret not in commands
        assert files_naming(folder, secret) == [], secret
    # The temporary lookup tables are gone too.
    assert sealed.client.command("SELECT count() FROM system.tables WHERE database = 'audit' "
                                 "AND name LIKE 'erasure\\\\_%'") == 0
    # A table's old_parts_lifetime is back to its default.
    assert "old_parts_lifetime" not in sealed.client.command(
        f"SELECT engine_full FROM system.tables WHERE name = '{schema.EVENTS_TABLE.split('.')[1]}'")


def test_personal_values_are_found_in_any_letter_case_and_user_ids_as_whole_tokens(sealed):
    (eid,) = insert(sealed.client, [event(
        received_us=NOW, user="ana.silva@example.com", user_id="7",
        changes='{"contact": {"before": "ANA.SILVA@EXAMPLE.COM", "after": "x@new.example"}, '
                '"seats": {"before": "170", "after": "7"}}',
        details={"hint": "Ana.Silva@Example.com", "plan": "team-170", "owner": "user 7"})])
    _erase(sealed, "ana.silva@example.com")
    changes, details = sealed.client.query(
        "SELECT changes, details FROM audit.audit_events WHERE event_id = {id:UUID}",
        parameters={"id": eid}).result_rows[0]
    assert json.loads(changes) == {"contact": {"before": "[erased]", "after": "x@new.example"},
                                   "seats": {"before": "170", "after": "[erased]"}}
    assert details == {"hint": "[erased]", "plan": "team-170", "owner": "[erased]"}


def test_refused_rows_and_alert_keys_no_longer_name_the_person(sealed):
    bad = to_batch(otlp_request([{"attrs": audit_attrs(**{
        "upmetr.org.id": "org-a", "user.email": "Ana@Example.com", "upmetr.audit.status": "maybe",
        "client.address": "203.0.113.9"})}]))
    sealed.client.insert(schema.INGEST_TABLE, bad.rows, column_names=schema.INGEST_COLUMNS)
    other = to_batch(otlp_request([{"attrs": audit_attrs(**{
        "upmetr.org.id": "org-a", "user.email": "zed@example.com", "upmetr.audit.status": "maybe",
        "client.address": "198.51.100.200"})}]))
    sealed.client.insert(schema.INGEST_TABLE, other.rows, column_names=schema.INGEST_COLUMNS)
    alert = {"alert_id": "9b2f0e0c-6a59-5d43-9d0c-0c3f1f7a2b11", "version": 1, "change": "opened",
             "changed_at": NOW, "changed_by": "detector", "org_id": "org-a", "rule": "user_brute_force",
             "key_type": "user", "key": "ana@example.com", "state": "firing", "severity": "warning",
             "value": 6.0, "threshold": 5.0, "failures": 6, "first_seen": NOW, "last_seen": NOW,
             "window_start": NOW, "window_end": NOW, "last_fired_at": NOW, "samples": []}
    row = {k: to_dt(v) if k in ("changed_at", "first_seen", "last_seen", "window_start", "window_end",
                                "last_fired_at") else v for k, v in alert.items()}
    sealed.client.insert(schema.ALERTS_TABLE, [[row[c] for c in COLUMNS]], column_names=list(COLUMNS))
    done = _erase(sealed, "ana@example.com")
    assert (done.rejects, done.alerts) == (1, 1)
    raws = [r for (r,) in sealed.client.query("SELECT raw FROM audit.audit_rejects").result_rows]
    assert len(raws) == 2 and not any("ana@example.com" in r.lower() or "203.0.113.9" in r for r in raws)
    assert any("zed@example.com" in r for r in raws)  # another person's refused row is kept as it was
    assert json.loads(next(r for r in raws if "zed" not in r))["LogAttributes"]["user.email"] == "[erased]"
    keys = [k for (k,) in sealed.client.query("SELECT key FROM audit.audit_alerts").result_rows]
    assert keys == [done.subject]


def test_an_actor_the_audit_event_cannot_carry_stops_the_erasure_before_any_change(sealed):
    with pytest.raises(erasure.ErasureError, match="audit event would be refused"):
        erasure.erase(sealed.client, sealed.keyring, sealed.digest_dir, "org-a", "ana@example.com",
                      now_us=NOW + MIN, actor="dpo\udcff@host")
    assert sealed.client.command("SELECT count() FROM audit.audit_erasures") == 0
    assert not os.listdir(sealed.digest_dir) or "erasure" not in "".join(
        open(os.path.join(sealed.digest_dir, f)).read() for f in os.listdir(sealed.digest_dir))
    assert sealed.client.command(
        "SELECT count() FROM audit.audit_events WHERE user_email = 'ana@example.com'") == 4


def test_a_failure_before_the_events_change_leaves_verify_clean_and_a_rerun_erases(sealed, monkeypatch):
    real = erasure._mutate

    def fail_once(*args):
        monkeypatch.setattr(erasure, "_mutate", real)
        raise erasure.ErasureError("the disk is full")

    monkeypatch.setattr(erasure, "_mutate", fail_once)
    with pytest.raises(erasure.ErasureError, match="disk is full"):
        _erase(sealed, "ana@example.com")
    assert sealed.verify(NOW + 2 * MIN).ok  # manifest and rows written, events as they were
    done = _erase(sealed, "ana@example.com")
    assert done.event_count == 4
    result = sealed.verify(NOW + 2 * MIN)
    assert result.ok, result.to_json()
    assert only(result) == {0: "erased", 2: "erased"}


def test_a_mutation_clickhouse_cannot_run_is_killed_not_left_to_block_the_table(sealed):
    with pytest.raises(erasure.ErasureError, match="could not change audit.audit_events"):
        erasure._mutate(sealed.client, schema.EVENTS_TABLE, "user_agent = toString(throwIf(1))",
                        "org_id = {org:String}", {"org": "org-a"})
    assert unfinished_mutations(sealed.client) == []
    _erase(sealed, "bo@example.com")


def test_two_orgs_erasing_events_that_share_an_id_both_verify(sealed):
    shared = "0190c5a2-6f1e-7000-8000-00000000abcd"
    insert(sealed.client, [event(org="org-a", received_us=NOW, user="p@a.example", event_id=shared),
                           event(org="org-b", received_us=NOW, user="q@b.example", event_id=shared)])
    sealed.seal(NOW + 2 * HOUR)
    for org, email in (("org-a", "p@a.example"), ("org-b", "q@b.example")):
        erasure.erase(sealed.client, sealed.keyring, sealed.digest_dir, org, email,
                      now_us=NOW + 2 * HOUR, actor="dpo@example.com")
    result = sealed.verify(NOW + 2 * HOUR)
    assert result.ok, result.to_json()


def test_the_monthly_report_counts_no_erased_address_as_a_top_ip(sealed):
    month = to_dt(T0).strftime("%Y-%m")
    assert [r["value"] for r in report.gather(sealed.client, "org-a", month)["top_ips"]] == ["203.0.113.9"]
    _erase(sealed, "bo@example.com")  # bo's failed sign-in now has no address (::)
    gathered = report.gather(sealed.client, "org-a", month)
    assert gathered["failed_logins"] == 1 and gathered["top_ips"] == []


def test_a_replayed_events_mutation_whose_lookup_is_empty_changes_nothing(sealed):
    """After a kill, ClickHouse replays the unfinished mutation when the store is
    opened again; its in-memory lookup is empty then: no event may change."""
    before = sealed.client.query("SELECT * FROM audit.audit_events ORDER BY event_id").result_rows
    with erasure._lookup(sealed.client, "replay", "events", erasure.EVENTS_LOOKUP, []) as values:
        erasure._mutate(sealed.client, schema.EVENTS_TABLE, *erasure.events_update(values),
                        {"subject": "erased-000000000000", "org": "org-a"})
    assert sealed.client.query("SELECT * FROM audit.audit_events ORDER BY event_id").result_rows == before


def test_what_a_killed_erase_leaves_is_cleared_by_the_next(sealed):
    client = sealed.client
    client.command("CREATE TABLE audit.erasure_dead_events (event_id UUID, ok UInt8) "
                   "ENGINE = Join(ANY, LEFT, event_id) SETTINGS persistent = 0")
    client.command("ALTER TABLE audit.audit_events MODIFY SETTING old_parts_lifetime = 0")
    erasure.erase(client, sealed.keyring, sealed.digest_dir, "org-a", "bo@example.com",
                  now_us=NOW + MIN, actor="dpo@example.com", embedded=True)
    assert client.command("SELECT count() FROM system.tables WHERE database = 'audit' "
                          "AND startsWith(name, 'erasure_')") == 0
    assert "old_parts_lifetime" not in client.command(
        "SELECT engine_full FROM system.tables WHERE database = 'audit' AND name = 'audit_events'")


@pytest.mark.parametrize("email,as_refused,user_id", [
    ('"jo.doe"@example.com', '"JO.DOE"@example.com', "tenant/kim-42"),  # JSON escapes " and /
    ("groß@example.de", "Groß@Example.DE", "u-1"),                      # casefold is not lower
    ("οδυσσεας.ς@example.gr", "ΟΔΥΣΣΕΑΣ.ς@example.gr", "u-2")])
def test_a_refused_row_naming_the_person_in_json_escapes_or_other_cases_is_erased(
        sealed, email, as_refused, user_id):
    insert(sealed.client, [event(received_us=NOW, user=email, user_id=user_id)])
    refused = to_batch(otlp_request([{"attrs": audit_attrs(**{
        "user.email": as_refused, "user.id": user_id, "upmetr.audit.status": "maybe"})}]))
    sealed.client.insert(schema.INGEST_TABLE, refused.rows, column_names=schema.INGEST_COLUMNS)
    assert _erase(sealed, email).rejects == 1
    [raw] = [r for (r,) in sealed.client.query("SELECT raw FROM audit.audit_rejects").result_rows]
    attrs = json.loads(raw)["LogAttributes"]
    assert attrs["user.email"] == attrs["user.id"] == "[erased]"


def test_another_persons_refused_row_is_left_alone_and_a_mention_is_erased_alone(sealed):
    insert(sealed.client, [event(received_us=NOW, user="ann@example.com", user_id="1")])
    rows = []
    for attrs in ({"user.email": "joann@example.com", "client.address": "192.0.2.1"},
                  {"user.email": "zoe@example.com", "client.address": "192.0.2.9",
                   "upmetr.audit.reason": "invited ann@example.com"}):
        rows += to_batch(otlp_request([{"attrs": audit_attrs(
            **{"upmetr.audit.status": "maybe", **attrs})}])).rows
    sealed.client.insert(schema.INGEST_TABLE, rows, column_names=schema.INGEST_COLUMNS)
    assert _erase(sealed, "ann@example.com").rejects == 1
    by_email = {a["user.email"]: a for a in (json.loads(r)["LogAttributes"] for (r,) in
                sealed.client.query("SELECT raw FROM audit.audit_rejects").result_rows)}
    assert by_email["joann@example.com"]["client.address"] == "192.0.2.1"  # not ann's: untouched
    zoe = by_email["zoe@example.com"]  # zoe's own values stay; only the mention of ann goes
    assert zoe["client.address"] == "192.0.2.9" and zoe["upmetr.audit.reason"] == "[erased]"


def test_keys_that_name_the_person_are_erased_too(sealed):
    (eid,) = insert(sealed.client, [event(
        received_us=NOW, user="mira.k@example.com",
        changes='{"members": {"mira.k@example.com": "admin", "lee@example.com": "viewer"}}',
        details={"invited:mira.k@example.com": "yes", "plan": "pro"})])
    _erase(sealed, "mira.k@example.com")
    changes, details = sealed.client.query(
        "SELECT changes, details FROM audit.audit_events WHERE event_id = {id:UUID}",
        parameters={"id": eid}).result_rows[0]
    assert json.loads(changes) == {"members": {"[erased]": "admin", "lee@example.com": "viewer"}}
    assert details == {"[erased]": "yes", "plan": "pro"}

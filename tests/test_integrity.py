"""Tamper evidence: every tampering is caught and classified; no false positives.

Each case is applied directly to ClickHouse or to the digest files, the way
someone with database or disk access would. The clock is passed in (``now``).
"""

import json
import os

import pytest

from upmetr_audit.collector import erasure, keys, leafhash, proof, sealing
from upmetr_audit.collector import verify as verify_mod

from integrity_helpers import HOUR, MIN, T0, Sealed, event, insert, to_dt, two_orgs_sealed

#: Sealing and verifying "now": three hours of events are past the grace delay.
NOW = T0 + 3 * HOUR + 10 * MIN


@pytest.fixture
def sealed(store, tmp_path):
    return two_orgs_sealed(store.client, tmp_path, NOW)


def only(result, org="org-a"):
    """``{hour after T0: status}`` of the windows of ``org`` that are not plain valid."""
    return {(w.window_start_us - T0) // HOUR: w.status for w in result.windows if w.org_id == org}


# -- no false positives -----------------------------------------------------------


def test_untouched_data_verifies_clean(sealed):
    result = sealed.verify(NOW)
    assert result.ok, result.to_json()
    assert result.counts == {"valid": 6}
    assert result.events_checked == 6
    assert "OK" in result.summary()


def test_a_rerun_and_a_concurrent_sealer_write_the_same_seals(sealed, monkeypatch):
    assert sealed.seal(NOW).seals == []  # nothing new to seal
    # A second sealer that read the heads before the first one wrote its seals:
    monkeypatch.setattr(sealing, "_heads", lambda client: ({}, {}, None))
    again = sealed.seal(NOW + 5 * MIN)
    assert len(again.seals) == 6
    per_window = sealed.client.query(
        "SELECT org_id, window_start, uniqExact(seal_hash), count() FROM audit.audit_seals "
        "GROUP BY org_id, window_start").result_rows
    assert all(r[2] == 1 and r[3] == 2 for r in per_window)  # written twice, identical
    assert sealed.verify(NOW).ok


def test_late_arriving_events_verify_clean(sealed):
    # Sent days late: an old timestamp, but received (committed) now, in a new window.
    insert(sealed.client, [event(received_us=NOW + 1 * MIN, timestamp_us=T0 - 72 * HOUR)])
    sealed.seal(NOW + 2 * HOUR)
    result = sealed.verify(NOW + 2 * HOUR)
    assert result.ok, result.to_json()


def test_events_not_yet_sealed_are_pending_not_problems(sealed):
    insert(sealed.client, [event(received_us=NOW + 1 * MIN)])
    result = sealed.verify(NOW + 2 * MIN)
    assert result.ok
    assert result.counts.get("pending") == 1


def test_an_idle_org_verifies_clean_for_days(sealed):
    later = NOW + 72 * HOUR
    run = sealed.seal(later)
    assert len(run.seals) == 2 * 72 and all(s.event_count == 0 for s in run.seals)
    result = sealed.verify(later)
    assert result.ok and result.counts == {"valid": 6 + 144}


def test_key_rotation_verifies_clean(sealed, tmp_path):
    keys_dir = str(tmp_path / "keys")
    old, new = keys.rotate(keys_dir, NOW + 1 * MIN)
    assert old != new
    ring = keys.load(keys_dir)
    insert(sealed.client, [event(received_us=NOW + 2 * MIN)])
    run = sealing.seal_once(sealed.client, ring, sealed.digest_dir, NOW + 2 * HOUR)
    assert {s.key_id for s in run.seals} == {new}
    result = sealed.verify(NOW + 2 * HOUR, keyring=keys.load(keys_dir, private=False))
    assert result.ok, result.to_json()
    # The exported public keyring alone verifies both generations.
    exported = tmp_path / "public.json"
    exported.write_text(ring.public_json())
    assert sealed.verify(NOW + 2 * HOUR, keyring=keys.load_public(str(exported))).ok


def test_a_retired_key_cannot_vouch_for_a_newer_window(sealed, tmp_path):
    keys_dir = str(tmp_path / "keys")
    old_ring = keys.load(keys_dir)  # keeps the old private key, as a thief would
    keys.rotate(keys_dir, NOW + 1 * MIN)
    sealing.seal_once(sealed.client, old_ring, sealed.digest_dir, NOW + 2 * HOUR)
    result = sealed.verify(NOW + 2 * HOUR, keyring=keys.load(keys_dir, private=False))
    assert not result.ok
    assert set(only(result).values()) == {"bad signature"}
    assert "after it was retired" in result.windows[0].problems[0]


# -- every tampering is caught and classified ---------------------------------------


def test_alter_update_of_one_field_is_modified_and_names_the_event(sealed):
    sealed.mutate("ALTER TABLE audit.audit_events UPDATE status = 'success' "
                  "WHERE event_id = {id:UUID}", id=sealed.ids[1])
    result = sealed.verify(NOW)
    assert not result.ok
    assert only(result) == {0: "modified"}
    (w,) = result.windows
    assert w.events == {"modified": [sealed.ids[1]]}


def test_alter_update_of_a_personal_field_is_modified(sealed):
    sealed.mutate("ALTER TABLE audit.audit_events UPDATE user_agent = 'curl' "
                  "WHERE event_id = {id:UUID}", id=sealed.ids[3])
    result = sealed.verify(NOW)
    assert only(result) == {2: "modified"}
    assert result.windows[0].events == {"modified": [sealed.ids[3]]}


def test_alter_delete_of_one_event_is_missing_events(sealed):
    sealed.mutate("ALTER TABLE audit.audit_events DELETE WHERE event_id = {id:UUID}", id=sealed.ids[0])
    result = sealed.verify(NOW)
    assert only(result) == {0: "missing events"}
    assert result.windows[0].events == {"missing": [sealed.ids[0]]}
    assert (result.windows[0].sealed_count, result.windows[0].actual_count) == (3, 2)


def test_a_back_dated_insert_into_a_sealed_window_is_extra_events(sealed):
    (eid,) = insert(sealed.client, [event(received_us=T0 + 1 * HOUR + 30 * MIN)])  # the quiet hour
    result = sealed.verify(NOW)
    assert only(result) == {1: "extra events"}
    assert result.windows[0].events == {"extra": [eid]}


def test_an_insert_before_the_orgs_first_seal_is_extra_events(sealed):
    insert(sealed.client, [event(received_us=T0 - 5 * HOUR)])
    result = sealed.verify(NOW)
    assert only(result) == {-5: "extra events"}


def test_drop_partition_is_missing_events(sealed):
    month = sealed.client.command("SELECT toYYYYMM(fromUnixTimestamp64Micro({t:Int64}))",
                                  parameters={"t": T0})
    sealed.client.command(f"ALTER TABLE audit.audit_events DROP PARTITION {int(month)}")
    result = sealed.verify(NOW)
    assert only(result) == {0: "missing events", 2: "missing events"}
    assert only(result, "org-b") == {0: "missing events"}


def test_an_edited_seal_row_is_a_bad_signature(sealed):
    sealed.mutate("ALTER TABLE audit.audit_seals UPDATE event_count = 2 WHERE org_id = 'org-a' "
                  "AND window_start = fromUnixTimestamp64Micro({t:Int64})", t=T0)
    result = sealed.verify(NOW)
    assert only(result) == {0: "bad signature"}
    assert "own hash" in result.windows[0].problems[0]


def test_deleting_the_newest_seals_is_missing_seal(sealed):
    sealed.mutate("ALTER TABLE audit.audit_seals DELETE WHERE window_start >= "
                  "fromUnixTimestamp64Micro({t:Int64})", t=T0 + 1 * HOUR)
    result = sealed.verify(NOW)
    assert only(result) == {1: "missing seal", 2: "missing seal"}
    assert only(result, "org-b") == {1: "missing seal", 2: "missing seal"}


def _digest_lines(sealed):
    (name,) = os.listdir(sealed.digest_dir)
    path = os.path.join(sealed.digest_dir, name)
    with open(path) as f:
        return path, f.readlines()


def _window_of(line):
    obj = json.loads(line)
    return obj["org_id"], (obj["window_start_us"] - T0) // HOUR


def test_an_edited_digest_line_is_a_digest_mismatch(sealed):
    path, lines = _digest_lines(sealed)
    i = next(i for i, ln in enumerate(lines) if _window_of(ln) == ("org-a", 2))
    lines[i] = lines[i].replace('"event_count":2', '"event_count":1')
    with open(path, "w") as f:
        f.writelines(lines)
    result = sealed.verify(NOW)
    assert only(result) == {2: "digest mismatch"}


def test_a_reordered_digest_line_is_a_digest_mismatch(sealed):
    path, lines = _digest_lines(sealed)
    a = [i for i, ln in enumerate(lines) if _window_of(ln)[0] == "org-a"]
    lines[a[0]], lines[a[1]] = lines[a[1]], lines[a[0]]
    with open(path, "w") as f:
        f.writelines(lines)
    result = sealed.verify(NOW)
    assert only(result) == {0: "digest mismatch"}
    assert "out of order" in result.windows[0].problems[0]


def test_a_deleted_digest_line_is_a_digest_mismatch(sealed):
    path, lines = _digest_lines(sealed)
    with open(path, "w") as f:
        f.writelines(ln for ln in lines if _window_of(ln) != ("org-b", 1))
    result = sealed.verify(NOW)
    assert only(result, "org-b") == {1: "digest mismatch"}
    assert only(result) == {}


def test_a_garbled_digest_line_is_a_problem(sealed):
    path, lines = _digest_lines(sealed)
    with open(path, "a") as f:
        f.write("{not json\n")
    result = sealed.verify(NOW)
    assert not result.ok and "line 7 is not a digest record" in result.problems[0]


def test_a_seal_re_signed_with_another_key_is_a_bad_signature(sealed, tmp_path):
    thief = keys.load_or_generate(str(tmp_path / "thief"), T0)
    sealed.mutate("ALTER TABLE audit.audit_seals DELETE WHERE org_id = 'org-b'")
    with open(_digest_lines(sealed)[0]) as f:
        kept = [ln for ln in f if json.loads(ln)["org_id"] != "org-b"]
    with open(_digest_lines(sealed)[0], "w") as f:
        f.writelines(kept)
    with pytest.MonkeyPatch.context() as mp:  # the thief's own sealer starts org-b over from its first event
        mp.setattr(sealing, "_heads", lambda client: ({}, {}, None))
        sealing.seal_once(sealed.client, thief, sealed.digest_dir, NOW, orgs=["org-b"])
    result = sealed.verify(NOW)
    assert only(result, "org-b") == {0: "bad signature", 1: "bad signature", 2: "bad signature"}
    assert "unknown key" in result.windows[0].problems[0]
    assert only(result) == {}


def test_a_seal_with_the_wrong_previous_hash_is_a_broken_chain(sealed):
    row = sealed.client.query(
        sealing.SEAL_SELECT + " WHERE org_id = 'org-a' AND window_start = "
        "fromUnixTimestamp64Micro({t:Int64})" + sealing.SEAL_GROUP, parameters={"t": T0 + HOUR}
    ).result_rows[0]
    seal = sealing.Seal(*row[:5], prev_seal_hash="ab" * 32, key_id=row[6])
    sealing.sign(seal, sealed.keyring)  # validly signed, but chained to nothing
    sealed.mutate("ALTER TABLE audit.audit_seals UPDATE prev_seal_hash = {p:String}, "
                  "seal_hash = {h:String}, signature = {s:String} WHERE org_id = 'org-a' "
                  "AND window_start = fromUnixTimestamp64Micro({t:Int64})",
                  p=seal.prev_seal_hash, h=seal.seal_hash, s=seal.signature, t=T0 + HOUR)
    path, lines = _digest_lines(sealed)
    lines = [json.dumps(seal.line() | {"sealed_at_us": json.loads(ln)["sealed_at_us"]}) + "\n"
             if _window_of(ln) == ("org-a", 1) else ln for ln in lines]
    with open(path, "w") as f:
        f.writelines(lines)
    result = sealed.verify(NOW)
    # Both links of the replaced seal are broken: to the seal before and the one after.
    assert only(result) == {1: "broken chain", 2: "broken chain"}


def test_verify_can_be_limited_to_an_org_and_a_time_range(sealed):
    sealed.mutate("ALTER TABLE audit.audit_events DELETE WHERE event_id = {id:UUID}", id=sealed.ids[0])
    assert sealed.verify(NOW, org="org-b").ok
    assert sealed.verify(NOW, since_us=T0 + HOUR).ok
    assert not sealed.verify(NOW, until_us=T0 + HOUR).ok


def test_the_latest_result_is_saved_for_the_page(sealed, tmp_path):
    assert verify_mod.latest_result(str(tmp_path)) is None
    verify_mod.save_latest(str(tmp_path), sealed.verify(NOW))
    latest = verify_mod.latest_result(str(tmp_path))
    assert latest["ok"] is True and latest["through_us"] == T0 + 3 * HOUR


# -- the leaf serialization -----------------------------------------------------------


@pytest.mark.parametrize("fields", [
    {},
    {"user": "zoë@exämple.com", "user_agent": "agent with , and : and 12:", "ip": "::1"},
    {"details": {"b": "2", "a": "1", "é": "x", "A": ""}, "changes": '{"x": {"after": "ü"}}'},
    {"ip": "0.0.0.0", "reason": "3:abc,", "resource_id": ""},
])
def test_python_computes_the_same_leaf_as_clickhouse(store, fields):
    (eid,) = insert(store.client, [event(**fields)])
    public = ", ".join(sql for _, sql in leafhash.PUBLIC_FIELDS)
    personal = ", ".join(sql for name, sql in leafhash.PERSONAL_FIELDS if name != "details")
    row = store.client.query(
        f"SELECT {public}, {personal}, details, pii_salt, "
        f"{leafhash.leaf_sql(leafhash.commitment_sql())} FROM audit.audit_events").result_rows[0]
    pub = dict(zip([n for n, _ in leafhash.PUBLIC_FIELDS], row, strict=False))
    names = [n for n, _ in leafhash.PERSONAL_FIELDS if n != "details"]
    per = dict(zip(names, row[len(pub):], strict=False)) | {"details": row[-3]}
    assert pub["event_id"] == eid
    assert leafhash.leaf(pub, leafhash.commitment(row[-2], per)) == row[-1]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13])
def test_python_and_clickhouse_agree_on_merkle_roots_and_paths(store, n):
    leaves = [bytes([i]) * 32 for i in range(n)]
    root = store.client.query(
        f"SELECT {leafhash.merkle_root_sql('lv')} FROM (SELECT "
        f"arrayMap(i -> unhex(repeat(leftPad(hex(i), 2, '0'), 32)), range({n})) AS lv)").result_rows[0][0]
    assert root == leafhash.merkle_root(leaves)
    for i in range(n):
        assert leafhash.root_from_path(leaves[i], leafhash.merkle_path(leaves, i)) == root
    assert leafhash.merkle_root([]) == leafhash.EMPTY_ROOT


# -- erasure ----------------------------------------------------------------------------


def _erase(sealed, email, now=NOW + 1 * MIN, **kw):
    return erasure.erase(sealed.client, sealed.keyring, sealed.digest_dir, "org-a", email, now_us=now,
                         actor="dpo@example.com", **kw)


def test_an_erased_person_verifies_clean_and_is_reported_erased(sealed):
    done = _erase(sealed, "ana@example.com")
    assert done.event_count == 4 and done.subject.startswith("erased-")
    rows = sealed.client.query(
        "SELECT user_email, user_id, toString(ip), user_agent, hex(pii_salt) FROM audit.audit_events "
        "WHERE event_id IN {ids:Array(UUID)}", parameters={"ids": [sealed.ids[i] for i in (0, 2, 3, 4)]}
    ).result_rows
    assert {r[:4] for r in rows} == {(done.subject, done.subject, "::", "")}
    assert {r[4] for r in rows} == {"0" * 32}
    assert "ana@example.com" not in str(sealed.client.query(
        "SELECT * FROM audit.audit_events").result_rows)
    result = sealed.verify(NOW + 2 * MIN)
    assert result.ok, result.to_json()
    assert only(result) == {0: "erased", 2: "erased"}
    # The erasure is itself an audit event, naming the pseudonym, not the person.
    (ev,) = sealed.client.query(
        "SELECT user_email, resource_id, details FROM audit.audit_events "
        "WHERE action = 'system.personal_data_erase'").result_rows
    assert ev[0] == "dpo@example.com" and ev[1] == done.subject
    assert ev[2]["erased_events"] == "4" and ev[2]["erasure_id"] == done.erasure_id


def test_personal_values_inside_changes_and_details_are_erased(sealed):
    (eid,) = insert(sealed.client, [event(
        received_us=NOW + 1 * MIN, user="dee@example.com",
        changes='{"email": {"before": "dee@example.com", "after": "d@new.example"}, '
                '"plan": {"before": "free", "after": "pro"}}',
        details={"note": "sent to dee@example.com", "http.route": "/api/users", "name": "Dee"})])
    sealed.seal(NOW + 2 * HOUR)
    _erase(sealed, "dee@example.com", now=NOW + 2 * HOUR)
    changes, details = sealed.client.query(
        "SELECT changes, details FROM audit.audit_events WHERE event_id = {id:UUID}",
        parameters={"id": eid}).result_rows[0]
    assert json.loads(changes) == {"email": "[erased]", "plan": {"before": "free", "after": "pro"}}
    assert details == {"note": "[erased]", "http.route": "/api/users", "name": "[erased]"}
    assert sealed.verify(NOW + 2 * HOUR).ok


def test_erasing_an_unknown_person_is_refused_and_a_dry_run_changes_nothing(sealed):
    with pytest.raises(erasure.ErasureError, match="unknown person"):
        _erase(sealed, "nobody@example.com")
    with pytest.raises(erasure.ErasureError, match="unknown person"):
        _erase(sealed, "ANA@example.com")  # matched exactly
    dry = _erase(sealed, "bo@example.com", dry_run=True)
    assert dry.dry_run and dry.event_count == 1
    assert sealed.client.command("SELECT count() FROM audit.audit_erasures") == 0
    assert sealed.client.command(
        "SELECT count() FROM audit.audit_events WHERE user_email = 'bo@example.com'") == 1
    _erase(sealed, "bo@example.com")
    with pytest.raises(erasure.ErasureError, match="an erased person is unknown too"):
        _erase(sealed, "bo@example.com")


def test_a_forged_erasure_does_not_hide_a_modification(sealed):
    # With database access alone: copy the commitment, zero the salt, rewrite the email.
    com = sealed.client.query(
        f"SELECT lower(hex({leafhash.commitment_sql()})) FROM audit.audit_events "
        "WHERE event_id = {id:UUID}", parameters={"id": sealed.ids[1]}).result_rows[0][0]
    sealed.client.insert("audit.audit_erasures", [["fake", "org-a", sealed.ids[1], com, to_dt(NOW)]],
                         column_names=["erasure_id", "org_id", "event_id", "commitment", "erased_at"])
    sealed.mutate("ALTER TABLE audit.audit_events UPDATE user_email = 'someone-else', "
                  "pii_salt = toFixedString(repeat('\\0', 16), 16) WHERE event_id = {id:UUID}",
                  id=sealed.ids[1])
    result = sealed.verify(NOW)
    assert only(result) == {0: "modified"}
    assert any("no signed manifest" in p for p in result.org_problems["org-a"])


# -- proofs ----------------------------------------------------------------------------------


def test_a_proof_verifies_offline_and_fails_for_a_tampered_leaf(sealed, tmp_path):
    public = keys.load_public(_export(sealed, tmp_path))
    for eid in sealed.ids:
        p = proof.build(sealed.client, eid)
        assert "is included in the seal" in proof.check(json.loads(json.dumps(p)), public)
    p = proof.build(sealed.client, sealed.ids[2])
    for path, value in ((("event", "status"), "failure"), (("personal", "user_email"), "x@y"),
                        (("personal", "details"), {"plan": "free"}), (("event", "received_at_us"), "1")):
        bad = json.loads(json.dumps(p))
        bad[path[0]][path[1]] = value
        with pytest.raises(proof.ProofError):
            proof.check(bad, public)
    bad = json.loads(json.dumps(p))
    bad["seal"]["event_count"] += 1
    with pytest.raises(proof.ProofError, match="own hash"):
        proof.check(bad, public)
    thief = keys.load_or_generate(str(tmp_path / "thief"), T0)
    with pytest.raises(proof.ProofError, match="unknown key"):
        proof.check(p, keys.load_public(_export_ring(thief, tmp_path)))
    for junk in (None, [], {"format": "x"}, {**p, "path": [{"up": "00"}]}, {**p, "leaf_version": 9}):
        with pytest.raises(proof.ProofError):
            proof.check(junk, public)
    # the binary commitment (leaf version 3) takes the IP's 16 bytes and a details map
    for field, value in (("ip", "zz"), ("ip", "00" * 4), ("details", "plan=free"), ("details", None)):
        with pytest.raises(proof.ProofError, match="malformed proof"):
            proof.check({**p, "personal": {**p["personal"], field: value}}, public)


def test_a_proof_of_an_erased_event_still_verifies(sealed, tmp_path):
    _erase(sealed, "ana@example.com")
    p = proof.build(sealed.client, sealed.ids[0])
    assert p["personal"] == {"erased": True, "commitment": p["personal"]["commitment"]}
    proof.check(p, keys.load_public(_export(sealed, tmp_path)))


def test_no_proof_for_an_unknown_or_unsealed_event(sealed):
    with pytest.raises(proof.ProofError, match="no event"):
        proof.build(sealed.client, "not-a-uuid")
    (eid,) = insert(sealed.client, [event(received_us=NOW)])
    with pytest.raises(proof.ProofError, match="not sealed yet"):
        proof.build(sealed.client, eid)


def _export_ring(ring, tmp_path):
    path = tmp_path / f"public-{ring.active}.json"
    path.write_text(ring.public_json())
    return str(path)


def _export(sealed, tmp_path):
    return _export_ring(sealed.keyring, tmp_path)


# -- leaf versions ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", leafhash.LEAF_VERSIONS)
@pytest.mark.parametrize("fields", [
    {},
    {"user": "zoë@exämple.com", "user_agent": "agent with , and : and 12:", "ip": "::1",
     "resource_id": "ré/1", "reason": "3:abc,"},
    {"timestamp_us": -1, "trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": ""},
])
def test_python_and_clickhouse_agree_on_the_leaf_of_every_version(store, version, fields):
    insert(store.client, [event(**fields)])
    public = ", ".join(sql for _, sql in leafhash.PUBLIC_FIELDS)
    row = store.client.query(
        f"SELECT {public}, {leafhash.commitment_sql()}, "
        f"{leafhash.leaf_sql(leafhash.commitment_sql(), version)} FROM audit.audit_events").result_rows[0]
    pub = dict(zip([n for n, _ in leafhash.PUBLIC_FIELDS], row, strict=False))
    assert leafhash.leaf(pub, row[-2], version) == row[-1]
    others = [leafhash.leaf(pub, row[-2], v) for v in leafhash.LEAF_VERSIONS if v != version]
    assert row[-1] not in others  # each version has its own domain


def test_sealing_writes_the_current_leaf_version(sealed):
    versions = sealed.client.query("SELECT DISTINCT leaf_version FROM audit.audit_seals").result_rows
    assert versions == [(leafhash.LEAF_VERSION,)] and leafhash.LEAF_VERSION == 3


@pytest.fixture
def sealed_v1(store, tmp_path):
    """The events of ``sealed``, sealed by a sealer of leaf version 1."""
    ring = keys.load_or_generate(str(tmp_path / "keys"), T0)
    ids = insert(store.client, [
        event(received_us=T0 + 1 * MIN, user="ana@example.com"),
        event(received_us=T0 + 2 * MIN, user="bo@example.com", details={"b": "2", "a": "1"}),
        event(received_us=T0 + 2 * HOUR + 5 * MIN, user="ana@example.com", ip="2001:db8::7"),
        event(org="org-b", received_us=T0 + 10 * MIN, user="cy@b.example"),
    ])
    s = Sealed(store.client, str(tmp_path), ring, ids)
    run = s.seal(NOW, leaf_version=1)
    assert {seal.leaf_version for seal in run.seals} == {1} and len(run.seals) == 6
    return s


def test_seals_of_leaf_version_1_still_verify(sealed_v1):
    result = sealed_v1.verify(NOW)
    assert result.ok, result.to_json()
    assert result.counts == {"valid": 6} and result.events_checked == 4


def test_tampering_under_leaf_version_1_is_caught_and_named(sealed_v1):
    sealed_v1.mutate("ALTER TABLE audit.audit_events UPDATE action = 'auth.logout' "
                     "WHERE event_id = {id:UUID}", id=sealed_v1.ids[1])
    result = sealed_v1.verify(NOW)
    assert only(result) == {0: "modified"}
    assert result.windows[0].events == {"modified": [sealed_v1.ids[1]]}


def test_an_upgraded_sealer_chains_version_2_onto_version_1(sealed_v1, tmp_path):
    insert(sealed_v1.client, [event(received_us=NOW + 1 * MIN), event(received_us=NOW + 2 * MIN)])
    run = sealed_v1.seal(NOW + 2 * HOUR, leaf_version=2)
    assert {s.leaf_version for s in run.seals} == {2}
    result = sealed_v1.verify(NOW + 2 * HOUR)
    assert result.ok, result.to_json()
    assert result.events_checked == 6
    # Tampering on either side of the upgrade is still caught.
    sealed_v1.mutate("ALTER TABLE audit.audit_events UPDATE status = 'failure' "
                     "WHERE received_at >= fromUnixTimestamp64Micro({t:Int64}) "
                     "OR event_id = {id:UUID}", t=NOW, id=sealed_v1.ids[2])
    result = sealed_v1.verify(NOW + 2 * HOUR)
    assert only(result) == {2: "modified", 3: "modified"}
    # Proofs of either version verify offline.
    public = keys.load_public(_export(sealed_v1, tmp_path))
    p = proof.build(sealed_v1.client, sealed_v1.ids[0])
    assert p["leaf_version"] == 1
    assert "is included" in proof.check(p, public)
    with pytest.raises(proof.ProofError, match="leaf version"):
        proof.check({**p, "leaf_version": 2}, public)


def test_a_chain_of_leaf_versions_1_2_and_3_verifies_erases_and_proves(sealed_v1, tmp_path):
    """Windows 0-2 sealed with version 1, 3-4 with version 2, 5-7 with the
    current version 3 (binary commitment): one verify pass per version, an
    erasure across all three, tampering caught in each, proofs of each."""
    s = sealed_v1
    (v2_id,) = insert(s.client, [event(received_us=NOW + 1 * MIN, user="ana@example.com")])
    assert {x.leaf_version for x in s.seal(NOW + 2 * HOUR, leaf_version=2).seals} == {2}
    v3_ids = insert(s.client, [event(received_us=NOW + 3 * HOUR, user="ana@example.com",
                                     details={"z": "1", "a": "2", "é": ""}),
                               event(received_us=NOW + 3 * HOUR + MIN, user="bo@example.com",
                                     ip="2001:db8::9", details={"b": "x", "a": "y"})])
    assert {x.leaf_version for x in s.seal(NOW + 5 * HOUR).seals} == {3} == {leafhash.LEAF_VERSION}
    result = s.verify(NOW + 5 * HOUR)
    assert result.ok, result.to_json()
    assert result.events_checked == 7

    public = keys.load_public(_export(s, tmp_path))
    for eid, version in ((s.ids[1], 1), (v2_id, 2), (v3_ids[1], 3)):
        p = proof.build(s.client, eid)
        assert p["leaf_version"] == version
        assert "is included" in proof.check(p, public)

    # ana has events in windows of every version: each gets its version's commitment.
    erasure.erase(s.client, s.keyring, s.digest_dir, "org-a", "ana@example.com",
                  now_us=NOW + 5 * HOUR, actor="dpo@example.com")
    result = s.verify(NOW + 5 * HOUR)
    assert result.ok, result.to_json()
    assert only(result) == {0: "erased", 2: "erased", 3: "erased", 6: "erased"}
    p = proof.build(s.client, v3_ids[0])
    assert p["personal"]["erased"] and "is included" in proof.check(p, public)

    s.mutate("ALTER TABLE audit.audit_events UPDATE status = 'failure' "
             "WHERE event_id IN {ids:Array(UUID)}", ids=[s.ids[1], v2_id, v3_ids[1]])
    result = s.verify(NOW + 5 * HOUR)
    assert only(result) == {0: "modified", 2: "erased", 3: "modified", 6: "modified"}
    assert [w.events for w in result.windows if w.status == "modified"] == [
        {"modified": [s.ids[1]]}, {"modified": [v2_id]}, {"modified": [v3_ids[1]]}]


def test_an_erasure_under_leaf_version_1_still_verifies(sealed_v1):
    erasure.erase(sealed_v1.client, sealed_v1.keyring, sealed_v1.digest_dir, "org-a", "ana@example.com",
                  now_us=NOW + 1 * MIN, actor="dpo@example.com")
    result = sealed_v1.verify(NOW + 2 * MIN)
    assert result.ok, result.to_json()
    assert only(result) == {0: "erased", 2: "erased"}

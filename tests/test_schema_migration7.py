"""Migration 7 (storage of ``audit_events``: dictionary-encoded ``details`` and
``user_agent``, ZSTD codecs): a store written and sealed at schema version 6
reads back the same values after it, its leaf hashes (SQL and Python) are
unchanged, and verify, proofs and erasure still hold."""

import pytest

from upmetr_audit.collector import erasure, keys, leafhash, proof, schema
from upmetr_audit.collector import store as store_mod

from integrity_helpers import COLUMNS, HOUR, MIN, T0, Sealed, event, insert

NOW = T0 + 3 * HOUR + 10 * MIN

#: (type, codec) of the columns migration 7 changes.
BEFORE = {
    "details": ("Map(String, String)", "CODEC(ZSTD(1))"),
    "user_agent": ("String", "CODEC(ZSTD(1))"),
    "event_id": ("UUID", ""),
    "ip": ("IPv6", ""),
    "user_email": ("String", "CODEC(ZSTD(1))"),
    "user_id": ("String", "CODEC(ZSTD(1))"),
    "category": ("LowCardinality(String)", ""),
    "action": ("LowCardinality(String)", ""),
    "resource_type": ("LowCardinality(String)", ""),
    "actor_type": ("LowCardinality(String)", ""),
    "service_name": ("LowCardinality(String)", ""),
}
AFTER = {
    "details": ("Map(LowCardinality(String), LowCardinality(String))", "CODEC(ZSTD(1))"),
    "user_agent": ("LowCardinality(String)", "CODEC(ZSTD(1))"),
    "event_id": ("UUID", "CODEC(ZSTD(6))"),
    "ip": ("IPv6", "CODEC(ZSTD(1))"),
    "user_email": ("String", "CODEC(ZSTD(3))"),
    "user_id": ("String", "CODEC(ZSTD(3))"),
    "category": ("LowCardinality(String)", "CODEC(ZSTD(1))"),
    "action": ("LowCardinality(String)", "CODEC(ZSTD(1))"),
    "resource_type": ("LowCardinality(String)", "CODEC(ZSTD(1))"),
    "actor_type": ("LowCardinality(String)", "CODEC(ZSTD(1))"),
    "service_name": ("LowCardinality(String)", "CODEC(ZSTD(1))"),
}

LONG = "x" * 5000


def _events() -> list[dict]:
    return [
        event(received_us=T0 + 1 * MIN, user="ana@example.com",
              details={"http.route": "/api/login", "http.method": "POST"}),
        event(received_us=T0 + 2 * MIN, user="bo@example.com", status="failure", reason="bad password",
              user_agent="", ip="::", details={}),
        event(received_us=T0 + 30 * MIN, action="settings.update", changes='{"tz": {"before": "UTC"}}',
              details={"http.route": "/api/settings", "plan": "pro", "b": "2", "a": "1",
                       "request.id": "7d0e3b7c-4b1f-4d7e-9a55-1a2b3c4d5e6f", "body": "free text\nline 2",
                       "note": "ünïcödé ✓ 日本", "empty": "", "long": LONG},
              user_agent="Mozilla/5.0 (X11; Linux x86_64) ünïcödé", ip="2001:db8::7",
              resource_type="org", resource_id="org-a", session_id="s-9",
              trace_id="4bf92f3577b34da6a3ce929d0e0e4736", span_id="00f067aa0ba902b7"),
        event(received_us=T0 + 2 * HOUR + 5 * MIN, user="ana@example.com", user_agent=LONG,
              details={"note": "sent to ana@example.com"}),
        event(received_us=T0 + 2 * HOUR + 6 * MIN, user="ana@example.com", ip="2001:db8::7",
              actor_type="api_token", service_name="auth-service"),
        event(org="org-b", received_us=T0 + 10 * MIN, user="cy@b.example", details={"k": "v"}),
    ]


def _column_types(client) -> dict[str, tuple[str, str]]:
    return {name: (typ, codec) for name, typ, codec in client.query(
        "SELECT name, type, compression_codec FROM system.columns "
        "WHERE database = 'audit' AND table = 'audit_events'").result_rows}


def _rows(client) -> list[tuple]:
    return client.query(f"SELECT {', '.join(COLUMNS)}, hex(pii_salt) FROM {schema.EVENTS_TABLE} "
                        "ORDER BY event_id").result_rows


def _sql_leaves(client) -> dict[tuple[str, int], bytes]:
    out = {}
    for version in leafhash.LEAF_VERSIONS:
        leaf = leafhash.leaf_sql(leafhash.commitment_sql(version=version), version)
        for eid, value in client.query(f"SELECT toString(event_id), {leaf} FROM {schema.EVENTS_TABLE}"
                                       ).result_rows:
            out[eid, version] = value if isinstance(value, bytes) else value.encode("latin-1")
    return out


def _python_leaves(client) -> dict[tuple[str, int], bytes]:
    """The same leaves computed in Python from the values as read (as proofs do)."""
    public = ", ".join(f"{sql} AS f_{name}" for name, sql in leafhash.PUBLIC_FIELDS)
    personal = ", ".join(f"{sql} AS p_{name}" for name, sql in leafhash.PERSONAL_FIELDS
                         if name != "details")
    out = {}
    for row in client.query(f"SELECT {public}, {personal}, details AS p_details, hex(pii_salt) AS salt "
                            f"FROM {schema.EVENTS_TABLE}").named_results():
        personal = {name: row["p_" + name] for name in leafhash.PERSONAL_COLUMNS}
        pub = {name: row["f_" + name] for name, _ in leafhash.PUBLIC_FIELDS}
        for version in leafhash.LEAF_VERSIONS:
            com = leafhash.commitment(bytes.fromhex(row["salt"]), personal, version)
            out[pub["event_id"], version] = leafhash.leaf(pub, com, version)
    return out


@pytest.fixture
def at_version_6(tmp_path, monkeypatch):
    """A store migrated to version 6 only."""
    s = store_mod.open_store(f"chdb://{tmp_path}/clickhouse")
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", tuple(x for x in schema.MIGRATIONS if x.version <= 6))
        m.setattr(schema, "LATEST_VERSION", 6)
        assert store_mod.migrate(s.client) == [1, 2, 3, 4, 5, 6]
    yield s
    s.close()


@pytest.mark.parametrize("leaf_version", leafhash.LEAF_VERSIONS)
def test_a_store_sealed_at_version_6_verifies_clean_after_migration_7(at_version_6, tmp_path,
                                                                       leaf_version):
    client = at_version_6.client
    types = _column_types(client)
    assert {c: types[c] for c in BEFORE} == BEFORE
    ring = keys.load_or_generate(str(tmp_path / "keys"), T0)
    ids = insert(client, _events())
    sealed = Sealed(client, str(tmp_path), ring, ids)
    assert len(sealed.seal(NOW, leaf_version=leaf_version).seals) == 6
    rows, leaves = _rows(client), _sql_leaves(client)
    assert _python_leaves(client) == leaves

    assert store_mod.migrate(client) == [m.version for m in schema.MIGRATIONS if m.version >= 7]

    after = _column_types(client)
    assert {c: after[c] for c in AFTER} == AFTER
    assert {c: t for c, t in after.items() if c not in AFTER} == \
           {c: t for c, t in types.items() if c not in AFTER}
    assert _rows(client) == rows  # every stored value, the salt included
    client.command(f"OPTIMIZE TABLE {schema.EVENTS_TABLE} FINAL")  # parts rewritten with the new codecs
    assert _rows(client) == rows
    assert _sql_leaves(client) == leaves
    assert _python_leaves(client) == leaves

    result = sealed.verify(NOW)
    assert result.ok, result.to_json()
    assert result.counts == {"valid": 6} and result.events_checked == len(ids)
    assert not any(w.events for w in result.windows)

    # A proof of a sealed event with details, built and checked after the migration.
    p = proof.build(client, ids[2])
    assert p["personal"]["details"]["long"] == LONG
    assert p["leaf"] == leaves[ids[2], leaf_version].hex()
    public = tmp_path / "public.json"
    public.write_text(ring.public_json())
    proof.check(p, keys.load_public(str(public)))


def test_new_events_and_erasure_after_migration_7(at_version_6, tmp_path):
    client = at_version_6.client
    ring = keys.load_or_generate(str(tmp_path / "keys"), T0)
    events = _events()
    old = insert(client, events[:3] + events[5:])  # org-b's event arrived before the first seal
    sealed = Sealed(client, str(tmp_path), ring, old)
    sealed.seal(T0 + HOUR + 10 * MIN)
    assert store_mod.migrate(client) == [m.version for m in schema.MIGRATIONS if m.version >= 7]
    new = insert(client, events[3:5])
    sealed.seal(NOW)
    result = sealed.verify(NOW)
    assert result.ok, result.to_json()
    assert result.events_checked == 6

    done = erasure.erase(client, ring, sealed.digest_dir, "org-a", "ana@example.com", now_us=NOW + MIN,
                         actor="dpo@example.com")
    assert done.event_count == 4  # events 0, 2, 3 and 4
    (details,) = client.query(f"SELECT details FROM {schema.EVENTS_TABLE} WHERE event_id = {{id:UUID}}",
                              parameters={"id": new[0]}).result_rows[0]
    assert "ana@example.com" not in str(details)
    result = sealed.verify(NOW + 2 * MIN)
    assert result.ok, result.to_json()

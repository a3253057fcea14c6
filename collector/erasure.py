"""GDPR erasure that keeps the seals verifiable (docs/integrity.md).

For every event of one person in one org (``user_email``), in this order:

1. check the audit event that records the erasure (so that a value it
   cannot carry stops the erasure before anything changes);
2. append a signed manifest of the erasure (its id, org, pseudonym, and a
   hash of the sorted ``event_id:commitment`` list) to the digest files;
3. record each event's personal commitment in ``audit.audit_erasures``: the
   one its leaf holds, which depends on the leaf version of the seal of its
   window (the current version if the window is not sealed yet);
4. in one mutation, replace the email and user id by a pseudonym
   (``erased-<12 hex>``, the same for all the person's events), zero the IP
   and user agent, replace personal values inside ``changes`` and
   ``details``, and zero the salt: the commitment can no longer be opened
   (crypto-shredding), while the recorded commitment keeps the leaf, and so
   the seal, verifiable;
5. replace the person in ``audit_rejects`` (the refused rows' raw JSON) and
   in the keys of the user alerts of ``audit_alerts``;
6. commit the audit event (``system.personal_data_erase``), which names the
   pseudonym, never the person;
7. in an embedded store, wait until ClickHouse has deleted the old copies of
   the changed rows (the parts from before the mutations).

The new values are computed here and handed to the mutations through
temporary in-memory Join and Set tables, so the mutations' text (which
ClickHouse keeps in ``system.mutations`` and in the table's folder) holds no
personal value. A crash or an error before step 4 leaves the events as they
were (a manifest or erasure rows without erased events are harmless);
rerunning erases them.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import string
import threading
import time
import uuid
from dataclasses import dataclass

from . import digests, leafhash, local_audit, schema
from .errors import UpmetrAuditError
from .keys import Keyring
from .sealing import to_dt
from .verify import ERASURE_DOMAIN, erasure_body, erasure_events_hash

REDACTED = "[erased]"
#: Keys (in ``changes``, ``details`` and refused rows) whose values are personal, whatever they hold.
PERSONAL_KEYS = frozenset({
    "email", "user", "user_email", "username", "name", "full_name", "first_name", "last_name",
    "display_name", "phone", "phone_number", "address", "ip", "client.address", "user_agent",
    "user_agent.original", "user.id", "user.email",
})
_ZERO_SALT = "toFixedString(repeat('\\0', 16), 16)"
#: Longest the erasure waits for ClickHouse to delete the old copies of the
#: rows it changed: its cleanup runs every 30 s or so, and after a while
#: with nothing to clean, up to every 5 minutes (measured on chDB 4.4).
OLD_COPIES_WAIT_S = 360.0


class ErasureError(UpmetrAuditError):
    """The erasure cannot be done (unknown person, already erased...)."""


@dataclass(frozen=True)
class Erasure:
    erasure_id: str
    org_id: str
    subject: str  # the pseudonym
    event_count: int
    dry_run: bool = False
    audit_event_id: str | None = None
    rejects: int = 0  # refused rows whose raw JSON named the person
    alerts: int = 0   # alert rows keyed by the person's email
    #: Whether the old copies of the changed rows are deleted from disk (an
    #: embedded store; ``None``: a server deletes them after its old_parts_lifetime).
    old_copies_deleted: bool | None = None


#: Around a name: not inside a longer word, address or number (``ann@x.org``
#: is not in ``joann@x.org``, user id ``1`` is not in ``192.0.2.1``); a final
#: full stop ends a sentence, not a name (but ``ann@x.org.br`` is another one).
_BEFORE, _AFTER = r"(?<![\w.+:@-])", r"(?![\w+:@-]|\.\w)"
#: The same around an email, which may follow a colon (``mailto:``, ``invited:``).
_BEFORE_EMAIL, _AFTER_EMAIL = r"(?<![\w.+@-])", r"(?![\w+@-]|\.\w)"


class Person:
    """What names the person in a value: the email, in any letter case, and
    the person's user ids and IP addresses, each as a whole name (see
    ``_BEFORE``/``_AFTER``)."""

    def __init__(self, email: str, tokens=()):
        self.email = email
        self.tokens = tokens = sorted({t for t in tokens if t and t != email}, key=len, reverse=True)
        self._email = re.compile(_BEFORE_EMAIL + re.escape(email) + _AFTER_EMAIL, re.IGNORECASE)
        self._tokens = (re.compile(_BEFORE + "(?:" + "|".join(map(re.escape, tokens)) + ")" + _AFTER)
                        if tokens else None)

    def named_in(self, text: str) -> bool:
        return bool(self._email.search(text) or (self._tokens and self._tokens.search(text)))

    def named_anywhere(self, value) -> bool:
        """Whether a decoded JSON value names the person, in a key or a value."""
        if isinstance(value, dict):
            return any(self.named_in(k) or self.named_anywhere(v) for k, v in value.items())
        if isinstance(value, list):
            return any(self.named_anywhere(v) for v in value)
        return isinstance(value, str) and self.named_in(value)

    def search_terms(self) -> list[str]:
        """The email and ids as written and as JSON escapes them (``/`` and
        ``"`` escaped), for a first cut in SQL."""
        terms = [self.email, *self.tokens]
        escaped = (json.dumps(t, ensure_ascii=False)[1:-1].replace("/", "\\/") for t in terms)
        return sorted({*terms, *escaped})


def _personal_key(key: str) -> bool:
    return key.lower() in PERSONAL_KEYS


def _keys(d: dict, person: Person) -> dict:
    """``d`` with every key that names the person renamed ``[erased]`` (``[erased 2]``...)."""
    out, n = {}, 0
    for k, v in d.items():
        if person.named_in(k):
            n += 1
            k = REDACTED if n == 1 else f"[erased {n}]"
        out[k] = v
    return out


def _redact(value, person: Person, own: bool = True):
    """``value`` with what names the person replaced; ``own``: also every value
    under a personal key (the person's own record, not one that mentions them)."""
    if isinstance(value, dict):
        return _keys({k: REDACTED if own and _personal_key(k) and v not in (None, "")
                      else _redact(v, person, own) for k, v in value.items()}, person)
    if isinstance(value, list):
        return [_redact(v, person, own) for v in value]
    if isinstance(value, str) and person.named_in(value):
        return REDACTED
    return value


def redact_changes(text: str, person: Person) -> str:
    """``changes`` (a JSON object) with personal values replaced."""
    if not text:
        return text
    try:
        obj = json.loads(text)
    except ValueError:
        return REDACTED if person.named_in(text) else text
    return json.dumps(_redact(obj, person), ensure_ascii=False)


def redact_details(details: dict, person: Person) -> dict:
    """``details`` with the values of personal keys, values naming the person,
    and keys naming the person, replaced."""
    return _keys({k: REDACTED if (_personal_key(k) and v != "") or person.named_in(v) else v
                  for k, v in details.items()}, person)


def redact_raw(raw: str, person: Person) -> str | None:
    """A refused row's raw JSON (``audit_rejects.raw``) with what names the
    person replaced (all its personal values if it is the person's own record:
    its ``user.email`` names them); ``None`` if it does not name them."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return REDACTED if person.named_in(raw) else None
    if not person.named_anywhere(obj):
        return None
    attrs = obj.get("LogAttributes") if isinstance(obj, dict) else None
    own = isinstance(attrs, dict) and person.named_in(str(attrs.get("user.email", "")))
    return json.dumps(_redact(obj, person, own), ensure_ascii=False, separators=(",", ":"))


def _seal_versions(client, org: str):
    """A function from an event's ``received_at`` (µs) to the leaf version of
    the org's seal covering it, or the current version."""
    seals = client.query(
        f"SELECT DISTINCT toUnixTimestamp64Micro(window_start), toUnixTimestamp64Micro(window_end), "
        f"leaf_version FROM {schema.SEALS_TABLE} WHERE org_id = {{org:String}} ORDER BY 1",
        parameters={"org": org}).result_rows
    starts = [s for s, _, _ in seals]

    def version_at(received_us: int) -> int:
        i = bisect.bisect_right(starts, received_us) - 1
        if i >= 0 and received_us < seals[i][1] and seals[i][2] in leafhash.LEAF_VERSIONS:
            return seals[i][2]
        return leafhash.LEAF_VERSION

    return version_at


def erase(client, keyring: Keyring, digest_dir: str, org: str, email: str, *, now_us: int,
          actor: str, dry_run: bool = False, embedded: bool = False,
          stop: threading.Event | None = None, progress=None) -> Erasure:
    """Erase one person of one org (see the module's docstring). ``embedded``:
    the store is an embedded chDB folder, which this process alone has open:
    it clears what an erase stopped half-way left, and has the old copies of
    the changed rows deleted at once. ``stop`` cuts that last wait short;
    ``progress(message)`` is told when it begins."""
    if not org or not email:
        raise ErasureError("both --org and --user-email are needed")
    if embedded:
        clear_leftovers(client)
    # [the text commitment (leaf versions 1 and 2), the binary one (version 3)]
    commitments = ", ".join(f"lower(hex({leafhash.commitment_sql(version=v)}))" for v in (1, 3))
    rows = client.query(
        f"SELECT toString(event_id), user_id, if(ip = toIPv6('::'), '', "
        f"replaceRegexpOne(IPv6NumToString(ip), '^::ffff:', '')), user_agent, changes, details, "
        f"[{commitments}], pii_salt = {_ZERO_SALT}, toUnixTimestamp64Micro(received_at) "
        f"FROM {schema.EVENTS_TABLE} WHERE org_id = {{org:String}} AND user_email = {{email:String}}",
        parameters={"org": org, "email": email}).result_rows
    if not rows:
        raise ErasureError(f"no events of {email!r} in org {org!r}: refusing to erase an unknown "
                           f"person (the address is matched exactly; an erased person is unknown too)")
    live = [r for r in rows if not r[7]]
    if not live:
        raise ErasureError(f"the {len(rows)} events of {email!r} in org {org!r} are already erased")
    erasure_id = uuid.uuid4().hex
    subject = "erased-" + hashlib.sha256(erasure_id.encode()).hexdigest()[:12]
    if dry_run:
        return Erasure(erasure_id, org, subject, len(live), dry_run=True)
    person = Person(email, [r[1] for r in live] + [r[2] for r in live])
    # The commitment the event's leaf holds: that of its seal's leaf version,
    # or of the version the sealer will use if its window is not sealed yet.
    version_at = _seal_versions(client, org)
    pairs = [(r[0], r[6][version_at(r[8]) in leafhash.BINARY_COMMITMENT]) for r in live]
    erased_at = to_dt(now_us)
    try:  # 1. the audit event, checked before anything changes
        audit_event_id, audit_batch = local_audit.prepare(
            "system.personal_data_erase", org=org, user=actor, resource=subject,
            erasure_id=erasure_id, erased_events=str(len(pairs)),
            erased_at=dt.datetime.fromtimestamp(now_us / 1e6, dt.UTC).isoformat())
    except ValueError as exc:
        raise ErasureError(f"the erasure's own audit event would be refused: {exc}") from None

    # 2. the signed manifest, then 3. the erasure rows it vouches for
    manifest = {"v": 1, "type": "erasure", "erasure_id": erasure_id, "org_id": org, "subject": subject,
                "event_count": len(pairs), "events_hash": erasure_events_hash(pairs),
                "erased_at_us": now_us, "key_id": keyring.active}
    digest = hashlib.sha256(digests.dumps(erasure_body(manifest)).encode()).digest()
    _, manifest["signature"] = keyring.sign(ERASURE_DOMAIN, digest)
    digests.append(digest_dir, [(now_us, manifest)])
    client.insert(schema.ERASURES_TABLE, [[erasure_id, org, eid, com, erased_at] for eid, com in pairs],
                  column_names=["erasure_id", "org_id", "event_id", "commitment", "erased_at"])

    # 4. the events
    with _lookup(client, erasure_id, "events", EVENTS_LOOKUP,
                 [[r[0], 1, redact_changes(r[4], person), redact_details(r[5], person)]
                  for r in live]) as values:
        _mutate(client, schema.EVENTS_TABLE, *events_update(values), {"subject": subject, "org": org})
    # 5. the refused rows and the alerts that name the person
    rejects = _erase_rejects(client, erasure_id, org, person)
    alerts = _erase_alert_keys(client, erasure_id, org, email, subject)
    changed = [table for table, n in ((schema.EVENTS_TABLE, len(live)), (schema.REJECTS_TABLE, rejects),
                                      (schema.ALERTS_TABLE, alerts)) if n]
    # 6. the erasure as an audit event
    local_audit.commit(client, audit_batch)
    # 7. the old copies of the rows, on disk until ClickHouse deletes the parts they are in
    deleted = None
    if embedded:
        if progress:
            progress(f"erased; waiting for ClickHouse to delete the old copies of the changed rows "
                     f"(usually under a minute, at most {OLD_COPIES_WAIT_S / 60:g} minutes)")
        deleted = _delete_old_copies(client, changed, stop or threading.Event())
    return Erasure(erasure_id, org, subject, len(pairs), audit_event_id=audit_event_id,
                   rejects=rejects, alerts=alerts, old_copies_deleted=deleted)


EVENTS_LOOKUP = {"event_id": "UUID", "ok": "UInt8", "changes": "String", "details": "Map(String, String)"}


def events_update(values: str) -> tuple[str, str]:
    """The assignments and the condition of the events' mutation, reading the
    lookup table ``values``. Only the rows it holds change: ClickHouse replays
    an unfinished mutation when the store is opened again (after a kill), and
    the in-memory lookup is empty then, so the replay changes nothing."""
    return (f"user_email = {{subject:String}}, user_id = {{subject:String}}, ip = toIPv6('::'), "
            f"user_agent = '', changes = joinGet('{values}', 'changes', event_id), "
            f"details = CAST(joinGet('{values}', 'details', event_id), "
            f"'Map(LowCardinality(String), LowCardinality(String))'), pii_salt = {_ZERO_SALT}",
            f"org_id = {{org:String}} AND joinGet('{values}', 'ok', event_id) = 1")


@contextlib.contextmanager
def _lookup(client, erasure_id: str, name: str, columns: dict[str, str], rows: list[list]):
    """A temporary in-memory Join table (keyed by its first column, not written
    to disk) holding ``rows``, for a mutation to read with joinGet."""
    table = f"{schema.DATABASE}.erasure_{erasure_id}_{name}"
    ddl = ", ".join(f"{c} {t}" for c, t in columns.items())
    client.command(f"CREATE TABLE {table} ({ddl}) ENGINE = Join(ANY, LEFT, {next(iter(columns))}) "
                   f"SETTINGS persistent = 0")
    try:
        if rows:
            client.insert(table, rows, column_names=list(columns))
        yield table
    finally:
        client.command(f"DROP TABLE IF EXISTS {table} SYNC")


def _mutate(client, table: str, assignments: str, where: str, parameters: dict) -> None:
    """``ALTER TABLE … UPDATE``, waited for. If it fails, it is killed, not
    left to be retried for ever (which would hold up every later mutation)."""
    marker = uuid.uuid4().hex  # finds this mutation in system.mutations
    try:
        client.command(f"ALTER TABLE {table} UPDATE {assignments} WHERE {where} AND '{marker}' != '' "
                       f"SETTINGS mutations_sync = 2", parameters=parameters)
    except Exception as exc:
        database, name = table.split(".")
        client.command("KILL MUTATION WHERE database = {db:String} AND table = {t:String} "
                       "AND NOT is_done AND position(command, {m:String}) > 0 SYNC",
                       parameters={"db": database, "t": name, "m": marker})
        raise ErasureError(f"ClickHouse could not change {table} (the erasure is incomplete; "
                           f"run it again): {exc}") from None


def _erase_rejects(client, erasure_id: str, org: str, person: Person) -> int:
    """Replace the person in the raw JSON of the org's refused rows; returns how many."""
    # A first cut in SQL (multiSearchAny takes at most 255 needles at once), the exact one here.
    terms = person.search_terms()
    chunks = [terms[i:i + 255] for i in range(0, len(terms), 255)]
    named_sql = " OR ".join(f"multiSearchAnyCaseInsensitiveUTF8(raw, {{t{i}:Array(String)}})"
                            for i in range(len(chunks)))
    rows = client.query(f"SELECT DISTINCT cityHash64(raw), raw FROM {schema.REJECTS_TABLE} "
                        f"WHERE org_id = {{org:String}} AND ({named_sql})",
                        parameters={"org": org, **{f"t{i}": c for i, c in enumerate(chunks)}}).result_rows
    named = [[h, new] for h, raw in rows if (new := redact_raw(raw, person)) is not None]
    if not named:
        return 0
    with _lookup(client, erasure_id, "rejects", {"h": "UInt64", "raw": "String"}, named) as values:
        _mutate(client, schema.REJECTS_TABLE, f"raw = joinGet('{values}', 'raw', cityHash64(raw))",
                f"org_id = {{org:String}} AND joinGet('{values}', 'raw', cityHash64(raw)) != ''",
                {"org": org})
    return len(named)


def _erase_alert_keys(client, erasure_id: str, org: str, email: str, subject: str) -> int:
    """Key the org's user alerts on the person by the pseudonym; returns how many rows."""
    key = email.translate(_ASCII_LOWER)  # rules.USER_KEY: ClickHouse's lower(), ASCII letters only
    n = client.query(f"SELECT count() FROM {schema.ALERTS_TABLE} WHERE org_id = {{org:String}} "
                     "AND key_type = 'user' AND key = {key:String}",
                     parameters={"org": org, "key": key}).result_rows[0][0]
    if n:
        with _lookup(client, erasure_id, "alerts", {"key": "String", "subject": "String"},
                     [[key, subject]]) as values:
            _mutate(client, schema.ALERTS_TABLE, f"key = joinGet('{values}', 'subject', key)",
                    f"org_id = {{org:String}} AND key_type = 'user' "
                    f"AND joinGet('{values}', 'subject', key) != ''", {"org": org})
    return n


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


_TABLES = (schema.EVENTS_TABLE, schema.REJECTS_TABLE, schema.ALERTS_TABLE)


def clear_leftovers(client) -> None:
    """Undo what an erase stopped by a crash or a kill may have left: its
    mutations (no-ops by then, or stuck if their lookup table is gone) are
    killed, its lookup tables dropped, ``old_parts_lifetime`` restored. Only
    for a store no other process can be erasing in (an embedded one)."""
    names = [t.split(".")[1] for t in _TABLES]
    params = {"db": schema.DATABASE, "t": names}
    client.command("KILL MUTATION WHERE database = {db:String} AND table IN {t:Array(String)} "
                   "AND NOT is_done AND position(command, 'erasure_') > 0 SYNC", parameters=params)
    for (name,) in client.query("SELECT name FROM system.tables WHERE database = {db:String} "
                                "AND startsWith(name, 'erasure_')", parameters=params).result_rows:
        client.command(f"DROP TABLE IF EXISTS {schema.DATABASE}.`{name}` SYNC")
    for (name,) in client.query("SELECT name FROM system.tables WHERE database = {db:String} "
                                "AND name IN {t:Array(String)} "
                                "AND position(engine_full, 'old_parts_lifetime') > 0",
                                parameters=params).result_rows:
        client.command(f"ALTER TABLE {schema.DATABASE}.{name} RESET SETTING old_parts_lifetime")


def _delete_old_copies(client, tables: list[str], stop: threading.Event) -> bool:
    """Have ClickHouse delete the parts from before the mutations now, not
    after its ``old_parts_lifetime`` (8 minutes of the store being open): flush
    the new parts to disk, let old parts go at once while waiting for them to
    be gone (up to :data:`OLD_COPIES_WAIT_S`), then restore the setting."""
    os.sync()  # the new parts are on disk before the old ones may go
    names = [t.split(".")[1] for t in tables]
    for table in tables:
        client.command(f"ALTER TABLE {table} MODIFY SETTING old_parts_lifetime = 0")
    try:
        deadline = time.monotonic() + OLD_COPIES_WAIT_S
        while time.monotonic() < deadline:
            left = client.query("SELECT count() FROM system.parts WHERE database = {db:String} "
                                "AND table IN {t:Array(String)} AND NOT active",
                                parameters={"db": schema.DATABASE, "t": names}).result_rows[0][0]
            if not left:
                return True
            if stop.wait(0.5):
                break
        return False
    finally:
        for table in tables:
            client.command(f"ALTER TABLE {table} RESET SETTING old_parts_lifetime")

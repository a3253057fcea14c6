"""GDPR erasure that keeps the seals verifiable (docs/integrity.md).

For every event of one person in one org (``user_email``), in this order:

1. record the event's personal commitment in ``audit.audit_erasures``: the
   one its leaf holds, which depends on the leaf version of the seal of its
   window (the current version if the window is not sealed yet);
2. append a signed manifest of the erasure (its id, org, pseudonym, and a
   hash of the sorted ``event_id:commitment`` list) to the digest files;
3. in one mutation, replace the email and user id by a pseudonym
   (``erased-<12 hex>``, the same for all the person's events), zero the IP
   and user agent, replace personal values inside ``changes`` and
   ``details``, and zero the salt: the commitment can no longer be opened
   (crypto-shredding), while the recorded commitment keeps the leaf, and so
   the seal, verifiable.

A crash before step 3 leaves the events as they were; rerunning erases them.
The erasure itself is recorded as an audit event
(``system.personal_data_erase``) naming the pseudonym, never the person.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import json
import uuid
from dataclasses import dataclass

from . import digests, leafhash, local_audit, schema
from .errors import UpmetrAuditError
from .keys import Keyring
from .sealing import to_dt
from .verify import ERASURE_DOMAIN, erasure_body, erasure_events_hash

REDACTED = "[erased]"
#: Keys (in ``changes`` and ``details``) whose values are personal, whatever they hold.
PERSONAL_KEYS = frozenset({
    "email", "user", "user_email", "username", "name", "full_name", "first_name", "last_name",
    "display_name", "phone", "phone_number", "address", "ip", "client.address", "user_agent",
    "user_agent.original", "user.id", "user.email",
})
_ZERO_SALT = "toFixedString(repeat('\\0', 16), 16)"


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


def _personal_key(key: str) -> bool:
    return key.lower() in PERSONAL_KEYS


def _redact(value, needles: list[str]):
    if isinstance(value, dict):
        return {k: REDACTED if _personal_key(k) and v not in (None, "") else _redact(v, needles)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, needles) for v in value]
    if isinstance(value, str) and any(n in value for n in needles):
        return REDACTED
    return value


def redact_changes(text: str, needles: list[str]) -> str:
    """``changes`` (a JSON object) with personal values replaced."""
    if not text:
        return text
    try:
        obj = json.loads(text)
    except ValueError:
        return REDACTED if any(n in text for n in needles) else text
    return json.dumps(_redact(obj, needles), ensure_ascii=False)


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
          actor: str, dry_run: bool = False) -> Erasure:
    if not org or not email:
        raise ErasureError("both --org and --user-email are needed")
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
    needles = sorted({email, *(r[1] for r in live), *(r[2] for r in live)} - {""}, key=len, reverse=True)
    ids = [r[0] for r in live]
    # The commitment the event's leaf holds: that of its seal's leaf version,
    # or of the version the sealer will use if its window is not sealed yet.
    version_at = _seal_versions(client, org)
    pairs = [(r[0], r[6][version_at(r[8]) in leafhash.BINARY_COMMITMENT]) for r in live]
    erased_at = to_dt(now_us)

    client.insert(schema.ERASURES_TABLE, [[erasure_id, org, eid, com, erased_at] for eid, com in pairs],
                  column_names=["erasure_id", "org_id", "event_id", "commitment", "erased_at"])
    manifest = {"v": 1, "type": "erasure", "erasure_id": erasure_id, "org_id": org, "subject": subject,
                "event_count": len(pairs), "events_hash": erasure_events_hash(pairs),
                "erased_at_us": now_us, "key_id": keyring.active}
    digest = hashlib.sha256(digests.dumps(erasure_body(manifest)).encode()).digest()
    _, manifest["signature"] = keyring.sign(ERASURE_DOMAIN, digest)
    digests.append(digest_dir, [(now_us, manifest)])

    client.command(
        f"ALTER TABLE {schema.EVENTS_TABLE} UPDATE "
        f"user_email = {{subject:String}}, user_id = {{subject:String}}, ip = toIPv6('::'), "
        f"user_agent = '', changes = transform(toString(event_id), {{ids:Array(String)}}, "
        f"{{changes:Array(String)}}, changes), "
        f"details = mapApply((k, v) -> (k, if(lower(k) IN {{keys:Array(String)}} AND v != '', "
        f"{{redacted:String}}, if(multiSearchAny(v, {{needles:Array(String)}}), "
        f"{{redacted:String}}, v))), details), "
        f"pii_salt = {_ZERO_SALT} "
        f"WHERE org_id = {{org:String}} AND event_id IN {{uuids:Array(UUID)}} "
        f"SETTINGS mutations_sync = 2",
        parameters={"subject": subject, "ids": ids, "uuids": ids,
                    "changes": [redact_changes(r[4], needles) for r in live],
                    "keys": sorted(PERSONAL_KEYS), "redacted": REDACTED, "needles": needles,
                    "org": org})
    event_id = local_audit.record(
        client, "system.personal_data_erase", org=org, user=actor, resource=subject,
        erasure_id=erasure_id, erased_events=str(len(pairs)),
        erased_at=dt.datetime.fromtimestamp(now_us / 1e6, dt.UTC).isoformat())
    return Erasure(erasure_id, org, subject, len(pairs), audit_event_id=event_id)

"""Per-event inclusion proofs, checked offline (no database).

A proof holds the event's fields in canonical form, the opening of its
personal commitment (salt and values; only the commitment once the person
was erased), its Merkle path, and the signed seal of its window. Checking it
needs only the public keys.
"""

from __future__ import annotations

import hashlib

from . import digests, leafhash, schema
from .errors import UpmetrAuditError
from .keys import Keyring
from .sealing import SEAL_DOMAIN, SEAL_GROUP, SEAL_SELECT, Seal, iso
from .verify import current_leaves

FORMAT = "upmetr-audit-proof/1"


class ProofError(UpmetrAuditError):
    """No proof can be made, or a proof does not hold."""


def build(client, event_id: str) -> dict:
    public = ", ".join(f"{sql} AS f_{name}" for name, sql in leafhash.PUBLIC_FIELDS)
    personal = ", ".join(f"{sql} AS p_{name}" for name, sql in leafhash.PERSONAL_FIELDS
                         if name != "details")
    rows = list(client.query(
        f"SELECT {public}, {personal}, details AS p_details, lower(hex(pii_salt)) AS salt, "
        f"toUnixTimestamp64Micro(received_at) AS ra FROM {schema.EVENTS_TABLE} "
        f"WHERE event_id = toUUIDOrZero({{id:String}}) AND event_id != toUUIDOrZero('')",
        parameters={"id": event_id}).named_results())
    if not rows:
        raise ProofError(f"no event with id {event_id!r}")
    if len(rows) > 1:
        raise ProofError(f"event id {event_id!r} is stored more than once")
    row = rows[0]
    org, ra = row["f_org_id"], row["ra"]
    seals = client.query(
        SEAL_SELECT + " WHERE org_id = {org:String} AND window_start <= fromUnixTimestamp64Micro("
        "{ra:Int64}, 'UTC') AND window_end > fromUnixTimestamp64Micro({ra:Int64}, 'UTC')" + SEAL_GROUP,
        parameters={"org": org, "ra": ra}).result_rows
    if len(seals) != 1:
        raise ProofError(f"event {event_id} is not sealed yet (its window is sealed after it ends "
                         f"and a grace delay)" if not seals else
                         f"the window of event {event_id} has conflicting seals; run `upmetr-audit verify`")
    r = seals[0]
    seal = Seal(org_id=r[0], window_start_us=r[1], window_end_us=r[2], event_count=r[3],
                merkle_root=r[4], prev_seal_hash=r[5], key_id=r[6], leaf_version=r[7],
                seal_hash=r[8], signature=r[9], sealed_at_us=r[10])
    if seal.leaf_version not in leafhash.LEAF_VERSIONS:
        raise ProofError(f"the seal of event {event_id} uses leaf version {seal.leaf_version}, "
                         f"unknown to this version of upmetr-audit")
    leaves = current_leaves(client, org, seal.window_start_us, seal.window_end_us, None,
                            seal.leaf_version)
    hashes = [leaf for _, _, leaf in leaves]
    if leafhash.merkle_root(hashes) != seal.merkle_root:
        raise ProofError(f"the window of event {event_id} no longer matches its seal; "
                         f"run `upmetr-audit verify`")
    event = {name: row["f_" + name] for name, _ in leafhash.PUBLIC_FIELDS}
    index = [eid for _, eid, _ in leaves].index(event["event_id"])
    if row["salt"] == "0" * 32:
        stored = client.query(f"SELECT any(commitment) FROM {schema.ERASURES_TABLE} "
                              f"WHERE org_id = {{org:String}} AND event_id = {{id:UUID}}",
                              parameters={"org": org, "id": event["event_id"]})
        personal_part = {"erased": True, "commitment": stored.result_rows[0][0]}
    else:
        personal_part = {"erased": False, "salt": row["salt"],
                         **{name: row["p_" + name] for name in leafhash.PERSONAL_COLUMNS}}
    return {"format": FORMAT, "leaf_version": seal.leaf_version, "event": event,
            "personal": personal_part, "leaf": hashes[index].hex(), "index": index,
            "leaf_count": len(hashes), "path": leafhash.merkle_path(hashes, index),
            "seal": seal.line()}


def check(proof: object, keyring: Keyring) -> str:
    """A one-line description of what the proof shows; ``ProofError`` if it fails."""
    try:
        return _check(proof, keyring)
    except ProofError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError) as exc:
        raise ProofError(f"malformed proof: {type(exc).__name__}: {exc}") from None


def _check(proof, keyring: Keyring) -> str:
    if not isinstance(proof, dict) or proof.get("format") != FORMAT:
        raise ProofError(f"not a proof (format is not {FORMAT})")
    version = proof["leaf_version"]
    if version not in leafhash.LEAF_VERSIONS or type(version) is not int:
        raise ProofError(f"unsupported leaf version {version!r}")
    event, personal = proof["event"], proof["personal"]
    if personal["erased"]:
        commitment = bytes.fromhex(personal["commitment"])
    else:
        commitment = leafhash.commitment(bytes.fromhex(personal["salt"]), personal, version)
    leaf = leafhash.leaf(event, commitment, version)
    seal = Seal.from_line(proof["seal"])
    if seal.leaf_version != version:
        raise ProofError("the proof's leaf version is not the one its seal signs")
    if seal.computed_hash() != seal.seal_hash:
        raise ProofError("the seal does not match its own hash")
    problem = keyring.check(seal.key_id, SEAL_DOMAIN, bytes.fromhex(seal.seal_hash), seal.signature,
                            signed_through_us=seal.window_end_us)
    if problem:
        raise ProofError(f"the seal's {problem}")
    if event["org_id"] != seal.org_id or not (
            seal.window_start_us <= int(event["received_at_us"]) < seal.window_end_us):
        raise ProofError("the event is not in the sealed org and window")
    if leafhash.root_from_path(leaf, proof["path"]) != seal.merkle_root:
        raise ProofError("the event's fields do not lead to the sealed Merkle root (altered?)")
    digest = hashlib.sha256(digests.dumps(proof["seal"]).encode()).hexdigest()[:12]
    return (f"event {event['event_id']} is included in the seal of {seal.org_id} for "
            f"{iso(seal.window_start_us)} to {iso(seal.window_end_us)}, signed by key {seal.key_id} "
            f"(seal {seal.seal_hash[:16]}, proof {digest})")

"""Sealing: a signed, chained Merkle seal per org per window of ``received_at``.

``received_at`` is the time the collector committed an event, so once a
window has ended (plus a grace delay) nothing can legitimately arrive in it.
Every window from an org's first event on is sealed, empty ones included,
so deleting all of a window's events is detected; a new org's windows start
no earlier than the newest seal of any org (earlier events were back-dated). A seal is deterministic:
its body holds no clock reading, Ed25519 signatures are deterministic, and
``sealed_at`` stays outside the signed body; two sealers at once, or a
rerun, write byte-identical seals, and readers take one per window.

Order of writes: seal leaves, then the digest lines (fsynced), then the seal
rows; a crash at any point is repaired by the next run writing the same data.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
from dataclasses import dataclass, field

from . import digests, leafhash, schema
from .keys import Keyring

log = logging.getLogger(__name__)

SEAL_DOMAIN = b"upmetr-audit/seal/v1\x00"
GENESIS = "0" * 64
HOUR_US = 3_600_000_000
DEFAULT_WINDOW_US = HOUR_US
DEFAULT_GRACE_US = 300_000_000
#: Windows computed per query when catching up on a long backlog.
CHUNK_WINDOWS = 24 * 31

_LOCK = threading.Lock()  # one sealer at a time inside a process


@dataclass
class Seal:
    org_id: str
    window_start_us: int
    window_end_us: int
    event_count: int
    merkle_root: str
    prev_seal_hash: str
    key_id: str
    leaf_version: int = leafhash.LEAF_VERSION
    seal_hash: str = ""
    signature: str = ""
    sealed_at_us: int = 0

    def body(self) -> dict:
        """What the seal hash covers (and so the signature)."""
        return {"v": 1, "org_id": self.org_id, "window_start_us": self.window_start_us,
                "window_end_us": self.window_end_us, "event_count": self.event_count,
                "merkle_root": self.merkle_root, "leaf_version": self.leaf_version,
                "prev_seal_hash": self.prev_seal_hash, "key_id": self.key_id}

    def computed_hash(self) -> str:
        return hashlib.sha256(digests.dumps(self.body()).encode()).hexdigest()

    def line(self) -> dict:
        """The digest-file record."""
        return {"type": "seal", **self.body(), "seal_hash": self.seal_hash,
                "signature": self.signature, "sealed_at_us": self.sealed_at_us}

    def identity(self) -> str:
        """Everything but ``sealed_at``: equal for two writes of one seal."""
        return digests.dumps(self.body()) + self.seal_hash + self.signature

    @classmethod
    def from_line(cls, obj: dict) -> Seal:
        """A seal from a digest record; ``ValueError`` if a field is missing or mistyped."""
        try:
            seal = cls(org_id=obj["org_id"], window_start_us=obj["window_start_us"],
                       window_end_us=obj["window_end_us"], event_count=obj["event_count"],
                       merkle_root=obj["merkle_root"], prev_seal_hash=obj["prev_seal_hash"],
                       key_id=obj["key_id"], leaf_version=obj["leaf_version"],
                       seal_hash=obj["seal_hash"], signature=obj["signature"],
                       sealed_at_us=obj.get("sealed_at_us", 0))
        except KeyError as exc:
            raise ValueError(f"missing field {exc}") from None
        ints = (seal.window_start_us, seal.window_end_us, seal.event_count, seal.leaf_version,
                seal.sealed_at_us)
        strs = (seal.org_id, seal.merkle_root, seal.prev_seal_hash, seal.key_id, seal.seal_hash,
                seal.signature)
        if not all(type(v) is int for v in ints) or not all(isinstance(v, str) for v in strs):
            raise ValueError("a field has the wrong type")
        return seal


SEAL_COLUMNS = ("org_id", "window_start", "window_end", "event_count", "merkle_root", "leaf_version",
                "prev_seal_hash", "seal_hash", "key_id", "signature", "sealed_at")

#: SELECT list giving a Seal's constructor arguments, one row per distinct seal.
SEAL_SELECT = (
    "SELECT org_id, toUnixTimestamp64Micro(window_start) AS ws, toUnixTimestamp64Micro(window_end), "
    "event_count, merkle_root, prev_seal_hash, key_id, leaf_version, seal_hash, signature, "
    f"toUnixTimestamp64Micro(min(sealed_at)) FROM {schema.SEALS_TABLE}"
)
SEAL_GROUP = (" GROUP BY org_id, window_start, window_end, event_count, merkle_root, prev_seal_hash, "
              "key_id, leaf_version, seal_hash, signature")


def sign(seal: Seal, keyring: Keyring) -> Seal:
    seal.key_id = keyring.active
    seal.seal_hash = seal.computed_hash()
    _, seal.signature = keyring.sign(SEAL_DOMAIN, bytes.fromhex(seal.seal_hash))
    return seal


def to_dt(us: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)


def iso(us: int) -> str:
    """``2026-10-01T10:00:00Z`` (microseconds only when there are some)."""
    text = to_dt(us).isoformat().replace("+00:00", "Z")
    return text.replace(".000000", "")


def _us(param: str) -> str:
    return f"fromUnixTimestamp64Micro({{{param}:Int64}}, 'UTC')"


def leaf_rows_sql(where: str, erasures: str | None = "", version: int = leafhash.LEAF_VERSION) -> str:
    """SELECT of ``org_id, received_at, event_id, leaf, erased`` for the events
    matching ``where``, with leaves of ``version``. ``erasures``: an extra
    condition on the erasure rows that may stand in for a shredded commitment
    (verify passes only the signed ones); ``None`` when none may (a row with a
    zero salt then gets the leaf of an empty commitment, which matches no seal)."""
    zero_salt = "pii_salt = toFixedString(repeat('\\0', 16), 16)"
    if erasures is None:
        no_erasure = leafhash.effective_commitment_sql("''", version)
        return (f"SELECT org_id, received_at, event_id, "
                f"{leafhash.leaf_sql(no_erasure, version)} AS leaf, "
                f"{zero_salt} AS erased FROM {schema.EVENTS_TABLE} WHERE {where}")
    return (
        f"SELECT org_id, received_at, event_id, "
        f"{leafhash.leaf_sql(leafhash.effective_commitment_sql(version=version), version)} AS leaf, "
        f"{zero_salt} AS erased "
        f"FROM {schema.EVENTS_TABLE} LEFT ANY JOIN ("
        f"SELECT org_id, event_id, unhex(any(commitment)) AS erased_commitment "
        f"FROM {schema.ERASURES_TABLE} WHERE 1 {erasures} GROUP BY org_id, event_id) AS erasures "
        f"USING (org_id, event_id) WHERE {where}"
    )


def window_stats_sql(where: str, width: str, erasures: str | None = "",
                     version: int = leafhash.LEAF_VERSION) -> str:
    """Per (org, window): count, erased count and Merkle root (leaves of
    ``version``) of the matching events. ``width``: SQL of the window width in
    microseconds (may depend on org_id)."""
    return f"""
SELECT org_id, ws, length(lv) AS n, erased_n, {leafhash.merkle_root_sql('lv')} AS root FROM (
    SELECT org_id, intDiv(toUnixTimestamp64Micro(received_at), {width}) * {width} AS ws,
           {leafhash.sorted_leaves_sql(version)} AS lv,
           countIf(erased) AS erased_n
    FROM ({leaf_rows_sql(where, erasures, version)})
    GROUP BY org_id, ws)"""


@dataclass
class SealRun:
    seals: list[Seal] = field(default_factory=list)
    orgs: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # org -> why its chain was not extended
    backdated: list[str] = field(default_factory=list)  # new orgs with events before the horizon


def _heads(client) -> tuple[dict[str, tuple[int, int, str]], dict[str, str], int | None]:
    """Per org, the newest seal's ``(window end, width, seal hash)``; orgs whose
    newest window has two different seals are returned apart; and the sealer's
    horizon, the newest window end of any seal (``None``: nothing sealed yet)."""
    rows = client.query(
        f"SELECT org_id, toUnixTimestamp64Micro(window_start), toUnixTimestamp64Micro(window_end), "
        f"groupUniqArray(seal_hash) FROM {schema.SEALS_TABLE} "
        f"GROUP BY org_id, window_start, window_end ORDER BY org_id, window_start DESC LIMIT 1 BY org_id"
    ).result_rows
    heads, conflicts = {}, {}
    horizon = max((we for _, _, we, _ in rows), default=None)
    for org, ws, we, hashes in rows:
        if len(hashes) != 1:
            conflicts[org] = "its newest window has two different seals; run `upmetr-audit verify`"
        else:
            heads[org] = (we, we - ws, hashes[0])
    return heads, conflicts, horizon


def seal_once(client, keyring: Keyring, digest_dir: str, now_us: int, *,
              window_us: int = DEFAULT_WINDOW_US, grace_us: int = DEFAULT_GRACE_US,
              orgs: list[str] | None = None, leaf_version: int = leafhash.LEAF_VERSION) -> SealRun:
    """Seal every window of every org that ended at least ``grace_us`` before
    ``now_us`` and is not sealed yet. An org keeps the window width of its
    first seal. Returns what was sealed. ``leaf_version``: an older one only
    to test and measure that verify still accepts it."""
    if window_us <= 0 or grace_us < 0:
        raise ValueError("the window must be positive and the grace not negative")
    if leaf_version not in leafhash.LEAF_VERSIONS:
        raise ValueError(f"unknown leaf version {leaf_version!r}")
    with _LOCK:
        return _seal(client, keyring, digest_dir, now_us, window_us, grace_us, orgs, leaf_version)


def _seal(client, keyring, digest_dir, now_us, window_us, grace_us, only, version) -> SealRun:
    run = SealRun()
    horizon = now_us - grace_us
    heads, run.skipped, sealed_through = _heads(client)
    # A new org starts at the sealer's horizon at the earliest: received_at is
    # now64() at ingest, so its events before that were back-dated (they stay
    # unsealed, and verify reports them). Capped by the clock: a forged seal row
    # far ahead must not stop new orgs from being sealed.
    floor = None if sealed_through is None else min(sealed_through, horizon)
    firsts = dict(client.query(
        f"SELECT org_id, toUnixTimestamp64Micro(min(received_at)) FROM {schema.EVENTS_TABLE} "
        f"GROUP BY org_id").result_rows)
    for org in sorted((set(heads) | set(firsts)) - set(run.skipped)):
        if only is not None and org not in only:
            continue
        run.orgs += 1
        if org in heads:
            start, width, prev = heads[org]
        else:
            width, prev = window_us, GENESIS
            start = firsts[org] // width * width
            if floor is not None and start < floor:
                start = -(-floor // width) * width  # the first window starting at or after it
                run.backdated.append(org)
        while start + width <= horizon:
            count = min(CHUNK_WINDOWS, (horizon - start) // width)
            end = start + count * width
            prev = _seal_chunk(client, keyring, digest_dir, run, org, start, end, width, prev, now_us,
                               version)
            start = end
    if run.seals:
        log.info("sealed windows", extra={"seals": len(run.seals), "orgs": run.orgs})
    return run


def _seal_chunk(client, keyring, digest_dir, run, org, start, end, width, prev, now_us, version) -> str:
    params = {"org": org, "start": start, "end": end, "width": width}
    where = f"org_id = {{org:String}} AND received_at >= {_us('start')} AND received_at < {_us('end')}"
    stats = {ws: (n, root) for _, ws, n, _, root in client.query(
        window_stats_sql(where, "{width:Int64}", version=version), parameters=params).result_rows}
    seals = []
    for ws in range(start, end, width):
        n, root = stats.get(ws, (0, leafhash.EMPTY_ROOT))
        seal = sign(Seal(org, ws, ws + width, n, root, prev, keyring.active, version), keyring)
        seal.sealed_at_us = now_us
        seals.append(seal)
        prev = seal.seal_hash
    if stats:
        client.command(
            f"INSERT INTO {schema.SEAL_LEAVES_TABLE} (org_id, window_start, received_at, event_id, leaf) "
            f"SELECT org_id, fromUnixTimestamp64Micro(intDiv(toUnixTimestamp64Micro(received_at), "
            f"{{width:Int64}}) * {{width:Int64}}, 'UTC'), received_at, event_id, leaf "
            f"FROM ({leaf_rows_sql(where, version=version)})", parameters=params)
    digests.append(digest_dir, [(s.window_start_us, s.line()) for s in seals])
    client.insert(schema.SEALS_TABLE, [
        [s.org_id, to_dt(s.window_start_us), to_dt(s.window_end_us), s.event_count, s.merkle_root,
         s.leaf_version, s.prev_seal_hash, s.seal_hash, s.key_id, s.signature, to_dt(s.sealed_at_us)]
        for s in seals], column_names=SEAL_COLUMNS)
    run.seals.extend(seals)
    return prev

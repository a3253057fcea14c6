"""Verification: recompute every window from ClickHouse and classify it.

CloudTrail-style, one status per (org, window), the first that applies:

``missing seal``     no seal row, though the window is sealed in the digest
                     files or lies before the sealer's horizon;
``bad signature``    the seal row does not match its own hash or signature
                     (edited, or signed by an unknown or retired key);
``digest mismatch``  the seal row differs from the digest files (a line
                     edited, deleted, reordered or never written);
``broken chain``     the seal's previous-seal hash is not the hash of the
                     seal before it;
``missing events``   fewer events than sealed;
``extra events``     more events than sealed (e.g. a back-dated insert);
``modified``         as many events, another Merkle root;
``erased``           valid, and some events were erased by a signed erasure;
``valid``            everything matches.

For a content problem the stored leaves of the window (believed only when
their Merkle root is the signed one) name the events. Erasures count only
when their manifest in the digest files is signed.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from . import digests, leafhash, schema
from .errors import UpmetrAuditError
from .keys import Keyring
from .sealing import GENESIS, SEAL_DOMAIN, SEAL_GROUP, SEAL_SELECT, Seal, _us, leaf_rows_sql, window_stats_sql
from .sealing import iso as _iso

ERASURE_DOMAIN = b"upmetr-audit/erasure/v1\x00"

PROBLEMS = ("missing seal", "bad signature", "digest mismatch", "broken chain", "missing events",
            "extra events", "modified")
OK_STATUSES = ("valid", "erased")
#: Windows recomputed per query (a week of hourly windows): bounds memory and paces
#: the progress bar. Shorter slices cost more than they save: a small org's granule
#: spans days of received_at, so every slice reads it again.
SLICE_WINDOWS = 24 * 7
LATEST_FILE = "verify-latest.json"


class VerifyError(UpmetrAuditError):
    """Nothing to verify: an org with no events, seals or digest records."""


@dataclass
class WindowResult:
    org_id: str
    window_start_us: int
    window_end_us: int
    status: str
    problems: list[str] = field(default_factory=list)
    sealed_count: int | None = None
    actual_count: int = 0
    events: dict[str, list[str]] = field(default_factory=dict)  # kind -> event ids


@dataclass
class VerifyResult:
    verified_at_us: int
    through_us: int | None  # the sealer's horizon: windows ending by then were checked
    counts: dict[str, int]
    events_checked: int
    windows: list[WindowResult]  # every window that is not plain "valid"
    problems: list[str]  # problems not tied to one window or org (the digest files)
    #: Problems of one org not tied to one of its windows (its erasures, a seal
    #: of a window that has not begun): the page shows each org only its own.
    org_problems: dict[str, list[str]] = field(default_factory=dict)

    @property
    def other_problems(self) -> list[str]:
        return self.problems + [p for o in sorted(self.org_problems) for p in self.org_problems[o]]

    @property
    def ok(self) -> bool:
        return not self.other_problems and all(w.status in OK_STATUSES for w in self.windows)

    def summary(self) -> str:
        parts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items()) if n)
        verdict = "OK" if self.ok else "INTEGRITY PROBLEM"
        return (f"{verdict}: {sum(self.counts.values())} windows ({parts or 'none'}), "
                f"{self.events_checked} events checked"
                + (f", {len(self.other_problems)} other problem(s)" if self.other_problems else ""))

    def to_json(self) -> dict:
        return {"ok": self.ok, "verified_at_us": self.verified_at_us, "through_us": self.through_us,
                "counts": self.counts, "events_checked": self.events_checked,
                "problems": self.problems, "org_problems": self.org_problems,
                "windows": [asdict(w) for w in self.windows]}


# -- digest files ---------------------------------------------------------------


@dataclass
class _Digests:
    seals: dict[tuple[str, int], Seal] = field(default_factory=dict)
    bad: dict[tuple[str, int], str] = field(default_factory=dict)  # window -> why its line is bad
    erasures: dict[str, dict] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    org_problems: dict[str, list[str]] = field(default_factory=dict)
    where: dict[tuple[str, int], str] = field(default_factory=dict)  # window -> "file line n"


def _read_digests(digest_dir: str, keyring: Keyring, now_us: int) -> _Digests:
    """The digest records. A seal line of a window that begins after ``now_us``
    is a problem, and not believed."""
    out = _Digests()
    last: dict[str, int] = {}
    for line in digests.read(digest_dir):
        if line.obj is None:
            out.problems.append(line.error)
            continue
        kind = line.obj.get("type")
        where = f"{line.file} line {line.number}"
        if kind == "erasure":
            problem = _check_erasure_line(line.obj, keyring)
            if problem:
                out.problems.append(f"{where}: {problem}")
            else:
                out.erasures.setdefault(line.obj["erasure_id"], line.obj)
            continue
        if kind != "seal":
            out.problems.append(f"{where}: unknown record type {kind!r}")
            continue
        try:
            seal = Seal.from_line(line.obj)
        except ValueError as exc:
            out.problems.append(f"{where}: malformed seal ({exc})")
            continue
        if seal.window_start_us > now_us:
            out.org_problems.setdefault(seal.org_id, []).append(
                f"{where}: a seal of {seal.org_id} for {_iso(seal.window_start_us)}, "
                f"a window that has not begun: not believed")
            continue
        key = (seal.org_id, seal.window_start_us)
        seen = out.seals.get(key)
        if seen is not None:
            if seen.identity() != seal.identity():
                out.bad[key] = f"{where} is a second, different digest of this window"
            continue
        if seal.window_start_us < last.get(seal.org_id, -1):
            out.bad[key] = f"{where} is out of order (the digests of an org are appended in window order)"
        last[seal.org_id] = max(last.get(seal.org_id, -1), seal.window_start_us)
        out.seals[key] = seal
        out.where[key] = where
    return out


def erasure_events_hash(pairs: list[tuple[str, str]]) -> str:
    """SHA-256 over the sorted ``event_id:commitment`` lines of an erasure."""
    return hashlib.sha256("".join(f"{e}:{c}\n" for e, c in sorted(pairs)).encode()).hexdigest()


def erasure_body(obj: dict) -> dict:
    return {k: obj[k] for k in ("v", "type", "erasure_id", "org_id", "subject", "event_count",
                                "events_hash", "erased_at_us", "key_id")}


def _check_erasure_line(obj: dict, keyring: Keyring) -> str | None:
    try:
        body = erasure_body(obj)
        digest = hashlib.sha256(digests.dumps(body).encode()).digest()
        return keyring.check(obj["key_id"], ERASURE_DOMAIN, digest, obj["signature"],
                             signed_through_us=obj["erased_at_us"])
    except (KeyError, TypeError, AttributeError):
        return "malformed erasure record"


def _authentic_erasures(client, dg: _Digests, orgs: list[str] | None) -> tuple[list[str], list[tuple]]:
    """Erasure ids whose rows match their signed manifest; and the problems
    found, as (org, problem)."""
    cond, params = ("WHERE org_id IN {orgs:Array(String)}", {"orgs": orgs}) if orgs else ("", {})
    rows = client.query(
        f"SELECT erasure_id, any(org_id), groupArray((toString(event_id), commitment)) "
        f"FROM {schema.ERASURES_TABLE} {cond} GROUP BY erasure_id", parameters=params).result_rows
    good, problems = [], []
    for erasure_id, org, pairs in rows:
        manifest = dg.erasures.get(erasure_id)
        pairs = sorted(set(map(tuple, pairs)))
        if manifest is None:
            problems.append((org, f"erasure {erasure_id} ({org}) has no signed manifest in the "
                                  f"digest files"))
        elif (manifest["org_id"] != org or manifest["event_count"] != len(pairs)
              or manifest["events_hash"] != erasure_events_hash(pairs)):
            problems.append((org, f"erasure {erasure_id} ({org}) does not match its signed manifest"))
        else:
            good.append(erasure_id)
    return good, problems


# -- ClickHouse -----------------------------------------------------------------


def _seal_of(r: tuple) -> Seal:
    """A seal from a row of ``SEAL_SELECT``."""
    return Seal(org_id=r[0], window_start_us=r[1], window_end_us=r[2], event_count=r[3],
                merkle_root=r[4], prev_seal_hash=r[5], key_id=r[6], leaf_version=r[7],
                seal_hash=r[8], signature=r[9], sealed_at_us=r[10])


def _db_seals(client, orgs: list[str] | None) -> dict[tuple[str, int], list[Seal]]:
    cond, params = (" WHERE org_id IN {orgs:Array(String)}", {"orgs": orgs}) if orgs else ("", {})
    out: dict[tuple[str, int], list[Seal]] = {}
    for r in client.query(SEAL_SELECT + cond + SEAL_GROUP, parameters=params).result_rows:
        seal = _seal_of(r)
        out.setdefault((seal.org_id, seal.window_start_us), []).append(seal)
    return out


def _signature_problem(seal: Seal, keyring: Keyring) -> str | None:
    """What is wrong with a seal's own hash or signature, or ``None``."""
    if seal.computed_hash() != seal.seal_hash:
        return "the seal does not match its own hash (edited)"
    return keyring.check(seal.key_id, SEAL_DOMAIN, bytes.fromhex(seal.seal_hash), seal.signature,
                         signed_through_us=seal.window_end_us)


#: Seal rows tried, newest first, for the horizon (forged rows are skipped).
HORIZON_CANDIDATES = 100


def _sealed_through(client, dg: _Digests, keyring: Keyring, now_us: int) -> int | None:
    """The sealer's horizon: the newest window end of an authentic seal (hash and
    signature check out), in the table or the files, of a window begun by ``now_us``."""
    rows = client.query(
        SEAL_SELECT + f" WHERE window_start <= {_us('now')}" + SEAL_GROUP
        + f" ORDER BY window_end DESC LIMIT {HORIZON_CANDIDATES}", parameters={"now": now_us}).result_rows
    candidates = [_seal_of(r) for r in rows] + list(dg.seals.values())
    for seal in sorted(candidates, key=lambda s: s.window_end_us, reverse=True):
        if _signature_problem(seal, keyring) is None:
            return seal.window_end_us
    return None


def stored_leaves(client, org: str, ws: int, version: int = leafhash.LEAF_VERSION,
                  ) -> list[tuple[int, str, bytes]]:
    """The leaves stored when window ``ws`` of ``org`` was sealed (with leaves
    of ``version``), in the tree's order."""
    rows = client.query(
        f"SELECT DISTINCT toUnixTimestamp64Micro(received_at), toString(event_id), leaf "
        f"FROM {schema.SEAL_LEAVES_TABLE} WHERE org_id = {{org:String}} AND window_start = {_us('ws')}",
        parameters={"org": org, "ws": ws}).result_rows
    return leafhash.ordered(rows, version)


def current_leaves(client, org: str, ws: int, we: int, erasure_ids: list[str] | None,
                   version: int = leafhash.LEAF_VERSION) -> list[tuple[int, str, bytes]]:
    """The leaves (of ``version``) of the events now stored in window [ws, we)
    of ``org``, in the tree's order."""
    where = f"org_id = {{org:String}} AND received_at >= {_us('ws')} AND received_at < {_us('we')}"
    erasures = "AND erasure_id IN {erasure_ids:Array(String)}" if erasure_ids is not None else ""
    rows = client.query(
        f"SELECT toUnixTimestamp64Micro(received_at), toString(event_id), leaf "
        f"FROM ({leaf_rows_sql(where, erasures, version)})",
        parameters={"org": org, "ws": ws, "we": we, "erasure_ids": erasure_ids or []}).result_rows
    return leafhash.ordered(rows, version)


# -- classification -------------------------------------------------------------


def _name_events(client, w: WindowResult, seal: Seal, erasure_ids: list[str]) -> None:
    stored = stored_leaves(client, w.org_id, w.window_start_us, seal.leaf_version)
    if leafhash.merkle_root([leaf for _, _, leaf in stored]) != seal.merkle_root:
        w.problems.append("the stored leaves do not match the signed root either: "
                          "the events cannot be named")
        return
    before = {eid: leaf for _, eid, leaf in stored}
    now = {eid: leaf for _, eid, leaf in current_leaves(
        client, w.org_id, w.window_start_us, w.window_end_us, erasure_ids, seal.leaf_version)}
    named = {"missing": sorted(set(before) - set(now)), "extra": sorted(set(now) - set(before)),
             "modified": sorted(e for e in set(before) & set(now) if before[e] != now[e])}
    w.events = {k: v for k, v in named.items() if v}
    if named["modified"]:
        w.status = "modified"
    elif named["missing"]:
        w.status = "missing events"
    elif named["extra"]:
        w.status = "extra events"


def _check_seal(key: tuple[str, int], db: list[Seal], dg: _Digests, keyring: Keyring,
                prev: Seal | None, first: bool) -> tuple[str, str] | None:
    """``(status, problem)`` if the seal row of a window is not authentic, not
    published, or not chained; ``None`` if it is good. Needs no event data."""
    if len(db) > 1:
        return "broken chain", f"{len(db)} different seals for this window"
    seal = db[0]
    problem = _signature_problem(seal, keyring)
    if problem:
        return "bad signature", problem
    line = dg.seals.get(key)
    if line is None:
        return "digest mismatch", "the seal is in ClickHouse but not in the digest files"
    if line.identity() != seal.identity() or key in dg.bad:
        return "digest mismatch", dg.bad.get(key, "the digest files hold a different seal for this window")
    if first and seal.prev_seal_hash != GENESIS:
        return "broken chain", "the org's first seal does not start the chain (older seals deleted?)"
    if prev is not None and seal.prev_seal_hash != prev.seal_hash:
        return "broken chain", "the previous-seal hash is not the hash of the seal before"
    return None


def _check_content(client, w: WindowResult, seal: Seal, stats: tuple[int, int, str] | None,
                   erasure_ids: list[str]) -> None:
    n, erased_n, root = stats or (0, 0, leafhash.EMPTY_ROOT)
    if seal.leaf_version not in leafhash.LEAF_VERSIONS:
        w.status = "modified"
        w.problems.append(f"leaf version {seal.leaf_version} is not known to this verifier")
        return
    if n == seal.event_count and root == seal.merkle_root:
        w.status = "erased" if erased_n else "valid"
        return
    w.status = ("missing events" if n < seal.event_count else "extra events" if n > seal.event_count
                else "modified")
    w.problems.append(f"sealed {seal.event_count} events, found {n}"
                      + ("" if n != seal.event_count else ", with another Merkle root"))
    _name_events(client, w, seal, erasure_ids)


def verify(client, keyring: Keyring, digest_dir: str, now_us: int, *, org: str | None = None,
           since_us: int | None = None, until_us: int | None = None,
           default_window_us: int = 3_600_000_000,
           progress: Callable[[int, int], None] | None = None) -> VerifyResult:
    """Check every window of every org (or ``org``) overlapping [since, until),
    clamped to the org's first event or seal and to the later of now and the
    sealer's horizon.

    Windows that end after the sealer's horizon and have no seal are
    ``pending``, not a problem. ``VerifyError`` for an unknown ``org``.
    """
    orgs = [org] if org else None
    dg = _read_digests(digest_dir, keyring, now_us)
    through = _sealed_through(client, dg, keyring, now_us)
    org_cond, params = ("org_id = {org:String}", {"org": org}) if org else ("1", {})
    firsts = dict(client.query(
        f"SELECT org_id, toUnixTimestamp64Micro(min(received_at)) FROM {schema.EVENTS_TABLE} "
        f"WHERE {org_cond} GROUP BY org_id", parameters=params).result_rows)
    db = _db_seals(client, orgs)
    if org:
        dg.seals = {k: v for k, v in dg.seals.items() if k[0] == org}
        if not (firsts or db or dg.seals or any(e.get("org_id") == org for e in dg.erasures.values())):
            raise VerifyError(f"unknown org {org!r}: it has no events, seals or digest records")
    problems = list(dg.problems)
    org_problems = {o: list(p) for o, p in dg.org_problems.items() if not org or o == org}

    def org_problem(o: str, text: str) -> None:
        org_problems.setdefault(o, []).append(text)

    # A digest line without its seal row is believed only when its signature is.
    for key, seal in sorted(dg.seals.items()):
        if key not in db:
            problem = _signature_problem(seal, keyring)
            if problem:
                org_problem(key[0], f"{dg.where[key]}: {problem}; not believed")
                del dg.seals[key]
    erasure_ids, erasure_problems = _authentic_erasures(client, dg, orgs)
    for o, text in erasure_problems:
        org_problem(o, text)

    # Each org's chain: its window width, and where it starts (its first seal).
    widths: dict[str, int] = {}
    starts: dict[str, int] = {}
    for (o, ws), seal in sorted([(k, v[0]) for k, v in db.items()] + list(dg.seals.items()),
                                key=lambda kv: kv[0]):
        widths.setdefault(o, seal.window_end_us - seal.window_start_us)
        starts.setdefault(o, ws)
    for o, first in firsts.items():
        widths.setdefault(o, default_window_us)
        starts.setdefault(o, first // widths[o] * widths[o])
    if not widths:
        return VerifyResult(now_us, through, {}, 0, [], problems, org_problems)
    max_w = max(widths.values())
    earliest = min([*starts.values(), *(f // widths[o] * widths[o] for o, f in firsts.items())])
    latest = max(now_us, through or 0)
    lo = earliest if since_us is None else max(since_us, earliest)
    hi = latest if until_us is None else min(until_us, latest)

    # Recompute (count, erased count, root) per window, in slices of received_at.
    # Each window with the leaf version of its seal. An org's chain upgrades its
    # leaf version at most forwards: its windows up to the end of its newest seal
    # of version <= v (v older than the current one) and after that bound of
    # v - 1 are computed with version v, the rest with the current one. A window
    # computed with another version than its seal's is redone on its own.
    stats: dict[tuple[str, int], tuple[int, int, str]] = {}
    used: dict[tuple[str, int], int] = {}
    org_list = sorted(widths)
    width_sql = ("transform(org_id, {w_orgs:Array(String)}, {w_widths:Array(Int64)}, "
                 "toInt64({w_def:Int64}))")
    older = [v for v in leafhash.LEAF_VERSIONS if v != leafhash.LEAF_VERSION]
    bounds: dict[int, dict[str, int]] = {v: {} for v in older}  # version -> org -> end
    for (o, _), seals in db.items():
        for v in older:
            if seals[0].leaf_version <= v:
                bounds[v][o] = max(bounds[v].get(o, 0), seals[0].window_end_us)
    bounds = {v: b for v, b in bounds.items() if b}

    def bound_sql(v: int) -> str:
        return (f"fromUnixTimestamp64Micro(transform(org_id, {{b{v}_orgs:Array(String)}}, "
                f"{{b{v}_ends:Array(Int64)}}, toInt64(0)), 'UTC')")

    def passes_for(s0: int) -> list[tuple[int, str]]:
        """(version, extra condition) of each pass over the slice from ``s0``."""
        out, prev = [], None
        for v in sorted(bounds):
            if any(end > s0 for end in bounds[v].values()):
                low = f" AND received_at >= {bound_sql(prev)}" if prev else ""
                out.append((v, f"{low} AND received_at < {bound_sql(v)}"))
            prev = v
        return out + [(leafhash.LEAF_VERSION, f" AND received_at >= {bound_sql(prev)}" if prev else "")]

    # Erasure rows are joined only when a signed erasure may stand in for a commitment.
    erasures = "AND erasure_id IN {erasure_ids:Array(String)}" if erasure_ids else None
    base = {"w_orgs": org_list, "w_widths": [widths[o] for o in org_list], "w_def": default_window_us,
            "erasure_ids": erasure_ids, **params}
    for v, b in bounds.items():
        base[f"b{v}_orgs"], base[f"b{v}_ends"] = sorted(b), [b[o] for o in sorted(b)]
    step = SLICE_WINDOWS * max_w
    scan_lo, scan_hi = lo // step * step, -(-hi // max_w) * max_w
    slices = list(range(scan_lo, scan_hi, step))
    cut: set[tuple[str, int]] = set()
    failure: list[BaseException] = []

    def recompute() -> None:
        try:
            for i, s0 in enumerate(slices):
                where = f"{org_cond} AND received_at >= {_us('s0')} AND received_at < {_us('s1')}"
                for version, cond in passes_for(s0):
                    rows = client.query(
                        window_stats_sql(where + cond, width_sql, erasures, version),
                        parameters={**base, "s0": s0, "s1": min(s0 + step, scan_hi)}).result_rows
                    for o, ws, n, erased_n, root in rows:
                        if (o, ws) in stats:
                            cut.add((o, ws))
                        stats[(o, ws)] = (n, erased_n, root)
                        used[(o, ws)] = version
                if progress:
                    progress(i + 1, len(slices))
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    # ClickHouse works (without the GIL) while this thread checks the seals.
    worker = threading.Thread(target=recompute, name="verify-recompute", daemon=True)
    worker.start()
    auth: dict[tuple[str, int], tuple[str, str] | None] = {}
    for key, seals in db.items():
        o, ws = key
        prev = db.get((o, ws - widths[o]))
        auth[key] = _check_seal(key, seals, dg, keyring, prev[0] if prev and len(prev) == 1 else None,
                                ws == starts[o])
    worker.join()
    if failure:
        raise failure[0]
    redo = {key: used[key] for key in cut}  # a window across a slice edge
    for key, seals in db.items():
        version = seals[0].leaf_version
        if key in used and used[key] != version and version in leafhash.LEAF_VERSIONS:
            redo[key] = version
    for (o, ws), version in redo.items():
        stats[(o, ws)] = _whole_window(client, o, ws, widths[o], base, erasures, version)
    # The slices are whole weeks: count only the events of windows in [lo, hi).
    events_checked = sum(n for (o, ws), (n, _, _) in stats.items() if ws + widths[o] > lo and ws < hi)

    windows, counts = [], Counter()

    def report(w: WindowResult) -> None:
        counts[w.status] += 1
        if w.status != "valid":
            windows.append(w)

    newest: dict[str, int] = {}  # per org, the end of its newest known window
    for o, ws in (*db, *dg.seals, *stats):
        if o in widths:
            newest[o] = max(newest.get(o, ws), ws + widths[o])
    by_org: dict[str, list[tuple[int, int]]] = {}  # per org, (window start, count) of recomputed windows
    for (o, ws), (n, _, _) in sorted(stats.items()):
        by_org.setdefault(o, []).append((ws, n))
    for o in sorted(widths):
        w_us, start = widths[o], starts[o]
        last = max([start, newest.get(o, start)] + ([through] if through is not None else []))
        first = start if lo <= start else start + (lo - start) // w_us * w_us  # the window holding lo
        for ws in range(first, min(last, hi), w_us):
            key = (o, ws)
            sealed = key in db or key in dg.seals
            due = through is not None and ws + w_us <= through
            if not sealed and not due:
                if key in stats:
                    counts["pending"] += 1
                continue
            w = WindowResult(o, ws, ws + w_us, "valid", actual_count=stats.get(key, (0,))[0])
            if key not in db:
                w.status = "missing seal"
                w.problems.append("no seal in ClickHouse"
                                  + (" (the digest files have one)" if key in dg.seals else ""))
            elif auth[key]:
                w.status, problem = auth[key]
                w.problems.append(problem)
            else:
                w.sealed_count = db[key][0].event_count
                _check_content(client, w, db[key][0], stats.get(key), erasure_ids)
            report(w)
        # Events before an org's first seal were inserted after it was sealed.
        for ws, n in by_org.get(o, []):
            if ws < start and ws + w_us > lo and ws < hi:
                report(WindowResult(o, ws, ws + w_us, "extra events", actual_count=n,
                                    problems=["events before the org's first sealed window"]))
    for o, ws in sorted(db):
        if ws > now_us and ws >= hi:  # not reached above: a forged row, say
            org_problem(o, f"a seal row of {o} for {_iso(ws)}, a window that has not begun: "
                           f"not believed")
    return VerifyResult(verified_at_us=now_us, through_us=through, counts=dict(counts),
                        events_checked=events_checked, windows=windows, problems=problems,
                        org_problems=org_problems)


def _whole_window(client, org, ws, width, base, erasures, version) -> tuple[int, int, str]:
    where = (f"org_id = {{o:String}} AND received_at >= {_us('ws')} AND received_at < {_us('we')}")
    rows = client.query(window_stats_sql(where, "{width:Int64}", erasures, version),
                        parameters={**base, "o": org, "ws": ws, "we": ws + width, "width": width}
                        ).result_rows
    return (rows[0][2], rows[0][3], rows[0][4]) if rows else (0, 0, leafhash.EMPTY_ROOT)


# -- the latest result, for the page's badge --------------------------------------


def save_latest(data_dir: str, result: VerifyResult | dict) -> str:
    """Write the result the page's badge shows (atomically)."""
    data = result if isinstance(result, dict) else result.to_json()
    path = os.path.join(data_dir, "integrity", LATEST_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def latest_result(data_dir: str) -> dict | None:
    """The last saved verify result (``ok``, ``verified_at_us``, ``through_us``,
    ``counts``, ``problems``, ``windows``), or ``None`` if verify never ran."""
    try:
        with open(os.path.join(data_dir, "integrity", LATEST_FILE)) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None

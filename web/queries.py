"""The audit page's read queries: filters, pages, cards, chart, export.

Pure functions over a clickhouse-connect client (no Flask), so that the page,
the JSON API and the benchmark share one query layer.

Parameterization
----------------
Every SQL text here is a constant assembled from fixed fragments. Every value
from a request, and the org id, is sent in ``parameters=`` and bound
server-side through a typed ``{name:Type}`` parameter: ClickHouse parses it
as a value of that type, never as SQL. Instants travel as ``Int64``
microseconds (``fromUnixTimestamp64Micro``), so no timezone is guessed on the
way. The org is never a filter: it is the ``org_id`` argument of each function
(from the session), and ``org_id = {org:String}`` is the first condition of
every WHERE, ANDed with the rest, so no filter value can widen it.

Pagination (keyset)
-------------------
Newest first: ``ORDER BY timestamp DESC, event_id DESC``, the reverse of the
table's sorting key ``(org_id, timestamp, event_id)``, so ClickHouse reads in
key order and stops at the LIMIT. A page asks for ``per_page + 1`` rows; if the
extra row exists there is a next page, whose cursor is the position of the
last row shown: its timestamp in microseconds and its event id. The next page
adds::

    timestamp <= {cur_ts} AND (timestamp, event_id) < ({cur_ts}, {cur_id})

The first condition is implied by the second; it is there so that the
primary key skips every granule newer than the cursor, and a deep page costs
what the first page costs. An event that arrives later is newer than every
cursor already handed out, so it never shifts a later page.

The cursor is the unpadded base64url of the compact JSON
``{"t":<microseconds>,"id":"<uuid>","c":"<checksum>"}``, where ``c`` is an
8-hex-digit BLAKE2b of ``t`` and ``id``. Parsing is strict: the text must be
exactly what :func:`encode_cursor` would write, so a cut, edited or
hand-made cursor is refused as ``FilterError('cursor', ...)``. The checksum
catches corruption, it is not a secret: a cursor only says where to resume,
always inside the org and filters of the request, so a forged one can show
nothing the request could not show anyway.

Rendered events
---------------
Every column of ``audit.audit_events`` plus ``action_label``. ``timestamp``
and ``received_at`` are ISO 8601 UTC strings with microseconds and a ``Z``
(``2024-05-01T12:00:00.000000Z``); ``event_id`` is UUID text; ``ip`` is text,
an IPv4-mapped address shown as plain IPv4 and a missing one (``::``) as
``""``; ``details`` is a dict; ``changes`` is the stored JSON text.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import io
import ipaddress
import json
import math
import re
import statistics
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from upmetr_audit.collector.rules import MAX_ALLOW_NETWORKS, MAX_EXACT_FILTER_LEN
from upmetr_audit.collector.schema import EVENTS_TABLE
from upmetr_audit.shipper.catalog import ACTIONS, CATEGORIES, CATEGORY_BY_ID
from upmetr_audit.shipper.contract import STATUSES, UUID_PATTERN

MAX_LEN = 256
MAX_EXACT_LEN = MAX_EXACT_FILTER_LEN
PER_PAGE_CHOICES = (25, 50, 100)
DEFAULT_PER_PAGE = 25
RANGES: dict[str, timedelta] = {
    "1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7),
    "30d": timedelta(days=30), "90d": timedelta(days=90),
}
#: Filter values outside these instants are refused (DateTime64(6) holds them all).
MIN_INSTANT = datetime(1970, 1, 1, tzinfo=UTC)
MAX_INSTANT = datetime(2300, 1, 1, tzinfo=UTC)
EXPORT_CHUNK_ROWS = 5000
#: Export format -> Content-Type.
EXPORT_FORMATS = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson"}
LOGIN_ACTION = "auth.login"

_US = 1_000_000
_DAY_US = 86_400 * _US
_UUID_RE = re.compile(UUID_PATTERN)
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]+")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: What a spreadsheet may also take as a formula's start after leading blanks:
#: the same signs, and their fullwidth forms (which some convert on input).
_FORMULA_AFTER_BLANKS = ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20")

#: The table's columns, in DDL order; the SELECT expression of those that differ.
COLUMNS: tuple[str, ...] = (
    "event_id", "org_id", "timestamp", "received_at", "category", "action", "status",
    "user_email", "user_id", "resource_type", "resource_id", "ip", "user_agent", "session_id",
    "actor_type", "service_name", "reason", "changes", "details", "trace_id", "span_id",
)
#: Instants are read as µs; the aliases must not shadow a column, or WHERE and
#: ORDER BY would use them.
_SELECT_EXPR = {
    "timestamp": "toUnixTimestamp64Micro(timestamp) AS timestamp_us",
    "received_at": "toUnixTimestamp64Micro(received_at) AS received_at_us",
}
#: What the audit page's table shows (``audit.html``; a test holds them
#: together): its list query reads only these, which takes a quarter off its
#: time (docs/benchmarks.md, P2). The API, exports and the detail page return
#: whole events.
PAGE_COLUMNS: tuple[str, ...] = (
    "event_id", "timestamp", "action", "status", "user_email", "resource_type", "resource_id", "ip",
)


def _select(columns: tuple[str, ...]) -> str:
    return ", ".join(_SELECT_EXPR.get(c, c) for c in columns)


_SELECT = _select(COLUMNS)
#: Keys of a rendered event (and the CSV header).
EVENT_FIELDS: tuple[str, ...] = (*COLUMNS, "action_label")

_ORDER = "ORDER BY timestamp DESC, event_id DESC"
_AFTER_CURSOR = (
    "timestamp <= fromUnixTimestamp64Micro({cur_ts:Int64}, 'UTC') AND "
    "(timestamp, event_id) < (fromUnixTimestamp64Micro({cur_ts:Int64}, 'UTC'), {cur_id:UUID})"
)


class FilterError(ValueError):
    """Bad input; ``field`` names the query parameter at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# -- cursor --------------------------------------------------------------------


@dataclass(frozen=True)
class Cursor:
    """A position in the newest-first order: just after this row."""

    ts_us: int
    event_id: str

    def encode(self) -> str:
        return encode_cursor(self.ts_us, self.event_id)


def _checksum(ts_us, event_id) -> str:
    digest = hashlib.blake2b(f"{ts_us}|{event_id}".encode(), digest_size=4, person=b"audit-cursor")
    return digest.hexdigest()


def encode_cursor(ts_us: int, event_id: str) -> str:
    obj = {"t": ts_us, "id": event_id, "c": _checksum(ts_us, event_id)}
    raw = json.dumps(obj, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(text: str) -> Cursor:
    """Parse a cursor, refusing anything :func:`encode_cursor` would not write."""
    bad = FilterError("cursor", "is not a valid cursor; start again from the first page")
    if not _B64URL_RE.fullmatch(text):
        raise bad
    try:
        obj = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error):
        raise bad from None
    if not isinstance(obj, dict) or set(obj) != {"t", "id", "c"}:
        raise bad
    ts_us, event_id = obj["t"], obj["id"]
    if type(ts_us) is not int or not _micros(MIN_INSTANT) <= ts_us < _micros(MAX_INSTANT):
        raise bad
    if not isinstance(event_id, str) or not _UUID_RE.fullmatch(event_id) or event_id != event_id.lower():
        raise bad
    if encode_cursor(ts_us, event_id) != text:  # canonical form and checksum
        raise bad
    return Cursor(ts_us, event_id)


# -- filters -------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """The validated filter state of a request. Empty string / ``None`` = no filter.

    ``user`` is an exact match on the whole stored address, taken as given,
    not trimmed (it uses the bloom-filter index; pick a user from the table to
    fill it); with ``user_case="any"`` it matches the address in any ASCII
    letter case, as the alert rules key a user (``rules.USER_KEY``), without
    the index (alert links bound it to the alert's window); ``resource_type``
    and ``resource_id`` match exactly too; a partial, case-insensitive search
    is ``q``, over user_email, resource_id and reason.
    ``since`` is inclusive and ``until`` exclusive; a date-only ``until``
    means through the end of that day (UTC). ``range`` is the preset that
    produced since/until, kept so the page can show it.
    """

    action: str = ""
    category: str = ""
    status: str = ""
    per_page: int = DEFAULT_PER_PAGE
    since: datetime | None = None
    until: datetime | None = None
    range: str = ""
    user: str = ""
    user_case: str = ""
    ip: str = ""
    not_ip: str = ""
    resource_type: str = ""
    resource_id: str = ""
    q: str = ""
    cursor: Cursor | None = None

    def to_query(self) -> dict[str, str]:
        """The query-string form of the non-default values (for links)."""
        out = {k: getattr(self, k) for k in ("action", "category", "status", "user", "user_case",
                                             "ip", "not_ip", "resource_type", "resource_id", "q")}
        if self.per_page != DEFAULT_PER_PAGE:
            out["per_page"] = str(self.per_page)
        if self.range:
            out["range"] = self.range
        else:
            out["since"] = _iso(self.since) if self.since else ""
            out["until"] = _iso(self.until) if self.until else ""
        if self.cursor:
            out["cursor"] = self.cursor.encode()
        return {k: v for k, v in out.items() if v}


def _raw(args: Mapping[str, str], name: str, max_len: int) -> str:
    value = args.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FilterError(name, "must be text")
    if len(value) > max_len:
        raise FilterError(name, f"is too long (at most {max_len} characters)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise FilterError(name, "is not valid text") from None
    return value


def _text(args: Mapping[str, str], name: str, max_len: int = MAX_LEN) -> str:
    value = _raw(args, name, max_len)
    if _CONTROL_RE.search(value):
        raise FilterError(name, "contains a control character")
    return value.strip()


def _exact(args: Mapping[str, str], name: str) -> str:
    """The value of an exact-match filter, as is: a stored value may have any
    spaces or control characters (a failed sign-in records the email as typed,
    inner tabs included), so nothing is stripped and only NUL is refused."""
    value = _raw(args, name, MAX_EXACT_LEN)
    if "\x00" in value:  # see rules.filterable
        raise FilterError(name, "contains a NUL character")
    return value


def _choice(name: str, value: str, allowed, message: str) -> str:
    if value and value not in allowed:
        raise FilterError(name, message)
    return value


def _actions(value: str) -> str:
    """One catalog action, or several separated by commas (an alert's link asks
    for failed logins, MFA and magic-link checks at once)."""
    if not value:
        return ""
    actions = [a.strip() for a in value.split(",")]
    for a in actions:
        _choice("action", a, ACTIONS, "unknown action")
    return ",".join(dict.fromkeys(actions))


def _per_page(value: str) -> int:
    if not value:
        return DEFAULT_PER_PAGE
    if value not in {str(n) for n in PER_PAGE_CHOICES}:
        raise FilterError("per_page", "must be one of 25, 50, 100")
    return int(value)


def _instant(name: str, value: str, end_of_day: bool = False) -> datetime | None:
    """An ISO 8601 date or datetime as an aware UTC datetime (naive = UTC)."""
    if not value:
        return None
    try:
        if "T" not in value.upper() and " " not in value:
            d = date.fromisoformat(value)
            dt = datetime.combine(d, time(), UTC) + (timedelta(days=1) if end_of_day else timedelta())
        else:
            dt = datetime.fromisoformat(value)
            dt = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise FilterError(name, "is not an ISO 8601 date or datetime") from None
    if not MIN_INSTANT <= dt < MAX_INSTANT:
        raise FilterError(name, "is out of range")
    return dt


def _time_window(args, now: datetime) -> tuple[datetime | None, datetime | None, str]:
    preset = _choice("range", _text(args, "range"), RANGES, "must be one of " + ", ".join(RANGES))
    since = _instant("since", _text(args, "since"))
    until = _instant("until", _text(args, "until"), end_of_day=True)
    if preset:
        if since or until:
            raise FilterError("range", "cannot be combined with since or until")
        return now - RANGES[preset], None, preset
    if since and until and since >= until:
        raise FilterError("until", "must be after since")
    return since, until, ""


def _ip(value: str, field: str = "ip") -> str:
    """Normalized IP or CIDR text; see :func:`ip_bounds`."""
    if not value:
        return ""
    if "%" in value:
        raise FilterError(field, "is not an IP address or CIDR (no zone ids)")
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise FilterError(field, f"{value!r} is not an IP address or CIDR") from None
    single = net.num_addresses == 1 and "/" not in value
    return str(net.network_address) if single else str(net)


#: At most this many networks in ``not_ip`` (each at most 43 characters): an
#: alert rule's allowlist fits.
MAX_EXCLUDED_NETWORKS = MAX_ALLOW_NETWORKS


def _networks(value: str) -> str:
    """``not_ip``: comma-separated IPs or CIDRs (an alert rule's allowlist),
    normalized, without repeats."""
    nets = [_ip(part.strip(), "not_ip") for part in value.split(",") if part.strip()]
    nets = list(dict.fromkeys(nets))
    if len(nets) > MAX_EXCLUDED_NETWORKS:
        raise FilterError("not_ip", f"has more than {MAX_EXCLUDED_NETWORKS} networks")
    return ",".join(nets)


def ip_bounds(ip_filter: str) -> tuple[str, str]:
    """First and last IPv6 address of an IP/CIDR filter, IPv4 as IPv4-mapped."""
    net = ipaddress.ip_network(ip_filter, strict=False)
    lo, hi = int(net.network_address), int(net.broadcast_address)
    if net.version == 4:
        lo, hi = lo | 0xFFFF << 32, hi | 0xFFFF << 32
    return str(ipaddress.IPv6Address(lo)), str(ipaddress.IPv6Address(hi))


def parse_filters(args: Mapping[str, str], now: datetime | None = None) -> Filters:
    """Validate a query-string-like mapping. Unknown keys are ignored; an empty
    value means "no filter". Raises :class:`FilterError` naming the field."""
    now = _utc(now)
    since, until, preset = _time_window(args, now)
    cursor = _text(args, "cursor")
    return Filters(
        action=_actions(_text(args, "action")),
        category=_choice("category", _text(args, "category"), CATEGORY_BY_ID, "unknown category"),
        status=_choice("status", _text(args, "status"), STATUSES, "must be success or failure"),
        per_page=_per_page(_text(args, "per_page")),
        since=since, until=until, range=preset,
        user=_exact(args, "user"),
        user_case=_choice("user_case", _text(args, "user_case"), USER_CASES, "must be exact or any"),
        ip=_ip(_text(args, "ip")),
        not_ip=_networks(_text(args, "not_ip", max_len=44 * MAX_EXCLUDED_NETWORKS)),
        resource_type=_exact(args, "resource_type"),
        resource_id=_exact(args, "resource_id"),
        q=_text(args, "q"),
        cursor=decode_cursor(cursor) if cursor else None,
    )


# -- WHERE ---------------------------------------------------------------------

_Q_SQL = ("(positionCaseInsensitiveUTF8(user_email, {q:String}) > 0"
          " OR positionCaseInsensitiveUTF8(resource_id, {q:String}) > 0"
          " OR positionCaseInsensitiveUTF8(reason, {q:String}) > 0)")
_EQUALS = (("category", "category"), ("status", "status"),
           ("resource_type", "resource_type"), ("resource_id", "resource_id"))
#: How ``user`` matches: exactly as stored (the default), or in any ASCII letter case.
USER_CASES = ("exact", "any")


def _where(org_id: str, f: Filters) -> tuple[list[str], dict]:
    """The conditions (constant SQL) and their parameters; the org comes first."""
    if not isinstance(org_id, str) or not org_id:
        raise ValueError("org_id is required")
    conds, params = ["org_id = {org:String}"], {"org": org_id}
    if f.action:
        conds.append("action IN {action:Array(String)}")
        params["action"] = f.action.split(",")
    for field, column in _EQUALS:
        if getattr(f, field):
            conds.append(f"{column} = {{{field}:String}}")
            params[field] = getattr(f, field)
    if f.user:
        conds.append("lower(user_email) = lower({user:String})" if f.user_case == "any"
                     else "user_email = {user:String}")
        params["user"] = f.user
    if f.since:
        conds.append("timestamp >= fromUnixTimestamp64Micro({since:Int64}, 'UTC')")
        params["since"] = _micros(f.since)
    if f.until:
        conds.append("timestamp < fromUnixTimestamp64Micro({until:Int64}, 'UTC')")
        params["until"] = _micros(f.until)
    if f.ip:
        lo, hi = ip_bounds(f.ip)
        if lo == hi:  # one address: the bloom-filter index applies
            conds.append("ip = {ip:IPv6}")
            params["ip"] = lo
        else:
            conds.append("ip BETWEEN {ip_lo:IPv6} AND {ip_hi:IPv6}")
            params.update(ip_lo=lo, ip_hi=hi)
    if f.not_ip:  # what an alert rule's allowlist leaves out (see rules._allow_sql)
        bounds = [ip_bounds(net) for net in f.not_ip.split(",")]
        conds.append("NOT arrayExists((lo, hi) -> ip BETWEEN lo AND hi, "
                     "{not_ip_lo:Array(IPv6)}, {not_ip_hi:Array(IPv6)})")
        params.update(not_ip_lo=[lo for lo, _ in bounds], not_ip_hi=[hi for _, hi in bounds])
    if f.q:
        conds.append(_Q_SQL)
        params["q"] = f.q
    return conds, params


def events_query(org_id: str, f: Filters, after: Cursor | None, limit: int,
                 columns: tuple[str, ...] = COLUMNS) -> tuple[str, dict]:
    """The SELECT behind pages and exports: ``limit`` rows newest first, strictly
    after ``after``. Returned as ``(sql, parameters)`` for EXPLAIN and benchmarks."""
    conds, params = _where(org_id, f)
    if after:
        conds.append(_AFTER_CURSOR)
        params.update(cur_ts=after.ts_us, cur_id=after.event_id)
    params["limit"] = limit
    sql = (f"SELECT {_select(columns)} FROM {EVENTS_TABLE} WHERE {' AND '.join(conds)} "
           f"{_ORDER} LIMIT {{limit:UInt32}}")
    return sql, params


#: Newest-first reads first try these windows below the top of the page (the
#: cursor, ``until``, or now): a page usually fills from the newest partition
#: or two, and the bound on ``timestamp`` lets ClickHouse skip the older monthly
#: partitions, each of which would otherwise cost a read of every selected
#: column. Inside the newest two partitions the window's width costs next to
#: nothing (read in order, with the top-K filter), so the first window spans
#: them: 28 days, not 7, fills a sparse filter's page with one query
#: (docs/benchmarks.md, P2).
WINDOWS_US = (28 * _DAY_US, 168 * _DAY_US)


def _fetch(client, org_id: str, f: Filters, after: Cursor | None, limit: int,
           columns: tuple[str, ...] = COLUMNS) -> list[dict]:
    """Raw rows (timestamps in µs), see :func:`events_query`.

    Tries :data:`WINDOWS_US` first: when ``limit`` rows have a timestamp at or
    after ``top − window``, they are exactly the first ``limit`` rows of the
    unbounded query (every row left out is older than all of them); otherwise
    the next window, then the query as asked."""
    top = after.ts_us if after else _micros(f.until) if f.until else _micros(_utc(None))
    for window in WINDOWS_US:
        lower = top - window
        if f.since and _micros(f.since) >= lower:
            break  # the filter's own bound is narrower
        rows = _query_events(client, org_id, replace(f, since=_from_micros(lower)), after, limit,
                             columns)
        if len(rows) >= limit:
            return rows
    return _query_events(client, org_id, f, after, limit, columns)


def _query_events(client, org_id: str, f: Filters, after: Cursor | None, limit: int,
                  columns: tuple[str, ...]) -> list[dict]:
    sql, params = events_query(org_id, f, after, limit, columns)
    return list(client.query(sql, parameters=params).named_results())


# -- events --------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    events: list[dict]
    #: The cursor of the next (older) page, or ``None`` on the last page.
    next_cursor: str | None


def list_events(client, org_id: str, filters: Filters,
                columns: tuple[str, ...] = COLUMNS) -> Page:
    """One page of events, newest first, after ``filters.cursor``; each event
    with ``columns`` (whole events, or :data:`PAGE_COLUMNS` for the page)."""
    rows = _fetch(client, org_id, filters, filters.cursor, filters.per_page + 1, columns)
    more = len(rows) > filters.per_page
    rows = rows[:filters.per_page]
    next_cursor = _position(rows[-1]).encode() if more else None
    return Page([render_event(r, columns) for r in rows], next_cursor)


def get_event(client, org_id: str, event_id: str) -> dict | None:
    """One event of the org by id, or ``None`` (also for another org's event)."""
    if not isinstance(event_id, str) or not _UUID_RE.fullmatch(event_id):
        raise FilterError("event_id", "is not a valid event id (a UUID)")
    conds, params = _where(org_id, Filters())
    conds.append("event_id = {event_id:UUID}")
    params["event_id"] = event_id
    sql = f"SELECT {_SELECT} FROM {EVENTS_TABLE} WHERE {' AND '.join(conds)} LIMIT 1"
    rows = list(client.query(sql, parameters=params).named_results())
    return render_event(rows[0]) if rows else None


def _position(row: dict) -> Cursor:
    return Cursor(row["timestamp_us"], str(row["event_id"]))


def render_event(row: dict, columns: tuple[str, ...] = COLUMNS) -> dict:
    """A raw row as the page and the API show it (see the module docstring);
    ``columns`` are those the row was read with (``event_id``, ``timestamp``
    and ``action`` among them)."""
    event = {c: row[c] for c in columns if c not in _SELECT_EXPR}
    event["event_id"] = str(row["event_id"])
    event["timestamp"] = _iso(_from_micros(row["timestamp_us"]))
    if "received_at" in columns:
        event["received_at"] = _iso(_from_micros(row["received_at_us"]))
    if "ip" in columns:
        event["ip"] = _ip_text(row["ip"])
    if "details" in columns:
        event["details"] = dict(row["details"])
    action = ACTIONS.get(row["action"])
    event["action_label"] = action.label if action else row["action"]
    return {k: event[k] for k in (*columns, "action_label")}


def _ip_text(value) -> str:
    """IPv6 column value (the driver gives an address object) as display text."""
    addr = ipaddress.ip_address(str(value))
    if addr.version == 6 and addr.ipv4_mapped:
        return str(addr.ipv4_mapped)
    return "" if addr.is_unspecified else str(addr)


# -- summary cards ---------------------------------------------------------------

#: "Failed logins (24h)" is flagged when above max(2 × baseline, baseline + this).
FAILED_LOGIN_MARGIN = 5
BASELINE_DAYS = 7

_SUMMARY_SQL = f"""
WITH
    {{now:Int64}} - toUnixTimestamp64Micro(timestamp) AS age_us,
    if(age_us >= 0, intDiv(age_us, {_DAY_US}), -1) AS age_day,
    action = '{LOGIN_ACTION}' AND status = 'failure' AS failed_login
SELECT
    countIf(timestamp >= fromUnixTimestamp64Micro({{today_lo:Int64}}, 'UTC')
            AND timestamp < fromUnixTimestamp64Micro({{today_hi:Int64}}, 'UTC')) AS events_today,
    countIf(age_day = 0 AND action = '{LOGIN_ACTION}' AND status = 'success') AS logins_24h,
    uniqExactIf(user_email, age_day = 0) AS unique_users_24h,
    {", ".join(f"countIf(failed_login AND age_day = {k}) AS failed_{k}" for k in range(BASELINE_DAYS + 1))}
FROM {EVENTS_TABLE}
WHERE org_id = {{org:String}}
  AND timestamp >= fromUnixTimestamp64Micro({{lo:Int64}}, 'UTC')
  AND timestamp < fromUnixTimestamp64Micro({{hi:Int64}}, 'UTC')"""


def day_bounds(now: datetime, tz: str) -> tuple[datetime, datetime]:
    """[start, end) of ``now``'s calendar day in ``tz``, as UTC instants."""
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise FilterError("tz", "is not a known timezone") from None
    local = _utc(now).astimezone(zone).date()
    start = datetime.combine(local, time(), zone)
    end = datetime.combine(local + timedelta(days=1), time(), zone)
    return start.astimezone(UTC), end.astimezone(UTC)


def summary(client, org_id: str, tz: str = "UTC", now: datetime | None = None) -> dict:
    """The cards, for the org. "24h" is the window (now − 24h, now]; "today" is
    the calendar day of ``now`` in ``tz`` (an event stamped later today counts).
    Logins are ``auth.login`` events, failed logins those with status failure.
    The failed-login baseline is the median over the 7 previous 24h windows
    ((now − 48h, now − 24h] … (now − 8d, now − 7d]); the card is flagged
    (``failed_logins_elevated``) when the last 24h is above
    ``max(2 × baseline, baseline + FAILED_LOGIN_MARGIN)``, so a quiet org
    needs 6 failures and a busy one double its usual count."""
    now = _utc(now)
    today_lo, today_hi = day_bounds(now, tz)
    conds, params = _where(org_id, Filters())
    total = client.query(f"SELECT count() FROM {EVENTS_TABLE} WHERE {' AND '.join(conds)}",
                         parameters=params).result_rows[0][0]
    now_us = _micros(now)
    lo = min(now_us - (BASELINE_DAYS + 1) * _DAY_US, _micros(today_lo))
    hi = max(now_us + 1, _micros(today_hi))
    (row,) = client.query(_SUMMARY_SQL, parameters={
        "org": org_id, "now": now_us, "lo": lo, "hi": hi,
        "today_lo": _micros(today_lo), "today_hi": _micros(today_hi),
    }).named_results()
    baseline = statistics.median(row[f"failed_{k}"] for k in range(1, BASELINE_DAYS + 1))
    threshold = max(2 * baseline, baseline + FAILED_LOGIN_MARGIN)
    return {
        "total_events": int(total),
        "events_today": int(row["events_today"]),
        "logins_24h": int(row["logins_24h"]),
        "failed_logins_24h": int(row["failed_0"]),
        "unique_users_24h": int(row["unique_users_24h"]),
        "failed_logins_baseline": float(baseline),
        "failed_logins_threshold": float(threshold),
        "failed_logins_elevated": row["failed_0"] > threshold,
        "timezone": tz,
        "today_start": _iso(today_lo),
        "now": _iso(now),
    }


# -- chart -----------------------------------------------------------------------

DEFAULT_BUCKETS = 60
#: Bucket sizes the chart picks from, in seconds: the smallest giving ≤ ``buckets``.
BUCKET_STEPS = (60, 300, 900, 1800, 3600, 7200, 10800, 21600, 43200,
                86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400)


def bucket_seconds(span: timedelta, buckets: int = DEFAULT_BUCKETS) -> int:
    seconds, buckets = max(span.total_seconds(), 1), max(buckets, 1)
    for step in BUCKET_STEPS:
        if seconds / step <= buckets:
            return step
    return math.ceil(seconds / buckets / BUCKET_STEPS[-1]) * BUCKET_STEPS[-1]


def timeseries(client, org_id: str, filters: Filters, buckets: int = DEFAULT_BUCKETS,
               now: datetime | None = None) -> dict:
    """Events and failed logins (``auth.login`` failures) per bucket, under the
    filter (the cursor is ignored). From ``since`` (or the first matching
    event) to ``until`` (or now); bucket starts align to multiples of the step
    since the Unix epoch, so in UTC. Empty buckets are zeros."""
    filters = replace(filters, cursor=None)
    end = filters.until or _utc(now)
    start = filters.since or _first_event(client, org_id, filters)
    if start is None or start >= end:
        return {"bucket_seconds": None, "buckets": [], "events": [], "failed_logins": []}
    step_us = bucket_seconds(end - start, buckets) * _US
    origin = _micros(start) // step_us * step_us
    n = -(-(_micros(end) - origin) // step_us)
    counts = _bucket_counts(client, org_id, filters, origin, step_us, _micros(end))
    events, failed = [0] * n, [0] * n
    for b, total, fails in counts:
        events[b], failed[b] = total, fails
    return {
        "bucket_seconds": step_us // _US,
        "buckets": [_iso(_from_micros(origin + i * step_us)) for i in range(n)],
        "events": events,
        "failed_logins": failed,
    }


def _first_event(client, org_id: str, f: Filters) -> datetime | None:
    conds, params = _where(org_id, f)
    sql = (f"SELECT count(), toUnixTimestamp64Micro(min(timestamp)) FROM {EVENTS_TABLE} "
           f"WHERE {' AND '.join(conds)}")
    n, first = client.query(sql, parameters=params).result_rows[0]
    return _from_micros(first) if n else None


def _bucket_counts(client, org_id, f, origin: int, step_us: int, end_us: int) -> list[tuple]:
    conds, params = _where(org_id, f)
    conds.append("timestamp < fromUnixTimestamp64Micro({end:Int64}, 'UTC')")
    params.update(origin=origin, step=step_us, end=end_us)
    sql = (f"SELECT intDiv(toUnixTimestamp64Micro(timestamp) - {{origin:Int64}}, {{step:Int64}}) AS b, "
           f"count(), countIf(action = '{LOGIN_ACTION}' AND status = 'failure') "
           f"FROM {EVENTS_TABLE} WHERE {' AND '.join(conds)} GROUP BY b ORDER BY b")
    return client.query(sql, parameters=params).result_rows


# -- export ----------------------------------------------------------------------


def iter_export(client, org_id: str, filters: Filters, format: str,
                chunk_rows: int = EXPORT_CHUNK_ROWS) -> Iterator[bytes]:
    """The filtered events, newest first, as chunks of CSV or NDJSON bytes.

    ``per_page`` and ``cursor`` are ignored. Each chunk is one keyset query of
    ``chunk_rows`` rows, so memory stays flat however many rows match. The
    format is checked here, before the first chunk, so a view can answer 400.
    CSV has a header row and RFC 4180 quoting, and a cell starting with
    ``= + - @``, tab or CR gets a leading ``'`` (spreadsheet formula
    injection); NDJSON carries the values unchanged, one event per line.
    """
    if format not in EXPORT_FORMATS:
        raise FilterError("format", "must be csv or ndjson")
    _where(org_id, filters)  # fail now on a bad org, not mid-stream
    encode = _csv_chunk if format == "csv" else _ndjson_chunk
    header = _csv_lines([EVENT_FIELDS]) if format == "csv" else b""
    return _export(client, org_id, replace(filters, cursor=None), encode, header, chunk_rows)


def _export(client, org_id, filters, encode, header: bytes, chunk_rows: int) -> Iterator[bytes]:
    if header:
        yield header
    after = None
    while True:
        rows = _fetch(client, org_id, filters, after, chunk_rows)
        if rows:
            yield encode([render_event(r) for r in rows])
        if len(rows) < chunk_rows:
            return
        after = _position(rows[-1])


def csv_cell(value) -> str:
    """A CSV cell that a spreadsheet will not run as a formula."""
    text = json.dumps(value, ensure_ascii=False, sort_keys=True) if isinstance(value, dict) else str(value)
    formula = text.startswith(_FORMULA_START) or text.lstrip().startswith(_FORMULA_AFTER_BLANKS)
    return "'" + text if formula else text


def _csv_lines(rows) -> bytes:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue().encode("utf-8")


def _csv_chunk(events: list[dict]) -> bytes:
    return _csv_lines([csv_cell(event[k]) for k in EVENT_FIELDS] for event in events)


def _ndjson_chunk(events: list[dict]) -> bytes:
    return "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events).encode("utf-8")


# -- filter options ----------------------------------------------------------------


def action_options() -> list[dict]:
    """The action filter's options, grouped by category, from the catalog."""
    return [
        {"category": c.id, "label": c.label,
         "actions": [{"value": a.id, "label": a.label} for a in c.actions]}
        for c in CATEGORIES
    ]


def category_options() -> list[dict]:
    return [{"value": c.id, "label": c.label} for c in CATEGORIES]


# -- time helpers --------------------------------------------------------------------


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def _micros(dt: datetime) -> int:
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * _US + delta.microseconds


def _from_micros(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

"""The audit page's query layer (upmetr_audit.web.queries) on a real chDB store.

Seed rows go through the real path: OTLP request -> processors.to_batch ->
audit.audit_ingest -> the materialized view -> audit.audit_events. Filter
results are checked against a plain-Python oracle over the seeded specs.
"""

import base64
import csv
import io
import json
import string
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from upmetr_audit.collector import schema
from upmetr_audit.collector.processors import to_batch
from upmetr_audit.shipper import contract as c
from upmetr_audit.shipper.catalog import ACTIONS, CATEGORIES
from upmetr_audit.web import queries as Q
from upmetr_audit.web.queries import FilterError, Filters, parse_filters

from helpers import audit_attrs, otlp_request

NOW = datetime(2024, 6, 15, 12, 0, tzinfo=UTC)
USERS = ("ana@example.com", "bob@example.com", "carol@example.org")
IPS = ("203.0.113.7", "198.51.100.20", "2001:db8::5", "")
ACTION_CYCLE = ("auth.login", "auth.login", "monitor.create", "system.api_access", "team.user_create")


# -- seeding -----------------------------------------------------------------------


def spec(org="org-a", action="auth.login", ts=NOW, user=USERS[0], status="success", ip=IPS[0],
         resource_id=None, reason="", **extra) -> dict:
    """One event to seed; also the oracle's view of it."""
    rtype = ACTIONS[action].resource_type or ""
    return {"id": str(uuid.uuid4()), "org": org, "action": action, "category": action.split(".")[0],
            "ts": ts, "user": user, "status": status, "ip": ip, "resource_type": rtype,
            "resource_id": resource_id or (f"{rtype}-1" if rtype else ""), "reason": reason,
            "extra": extra}


def _record(s: dict) -> dict:
    attrs = audit_attrs(**{
        c.EVENT_ID: s["id"], c.ORG_ID: s["org"], c.USER_EMAIL: s["user"], c.STATUS: s["status"],
        c.CLIENT_ADDRESS: s["ip"] or None, c.RESOURCE_TYPE: s["resource_type"] or None,
        c.RESOURCE_ID: s["resource_id"] or None, c.REASON: s["reason"] or None, **s["extra"]})
    delta = s["ts"] - datetime(1970, 1, 1, tzinfo=UTC)
    ns = (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000
    return {"event_name": ACTIONS[s["action"]].event_name, "attrs": attrs, "time_unix_nano": ns}


def insert(store, specs) -> list[dict]:
    batch = to_batch(otlp_request([_record(s) for s in specs]))
    assert batch.rejected_total == 0, batch.rejection_message()
    store.client.insert(schema.INGEST_TABLE, batch.rows, column_names=schema.INGEST_COLUMNS)
    return list(specs)


def dataset(org="org-a", n=300) -> list[dict]:
    """``n`` events, one every 7 minutes back from NOW, cycling actions, users, IPs."""
    out = []
    for i in range(n):
        action = ACTION_CYCLE[i % len(ACTION_CYCLE)]
        failed = i % 3 == 0
        out.append(spec(
            org=org, action=action, ts=NOW - timedelta(minutes=7 * i), user=USERS[i % 3],
            status="failure" if failed else "success", ip=IPS[i % 4],
            resource_id=f"{ACTIONS[action].resource_type}-{i}" if ACTIONS[action].resource_type else None,
            reason=("wrong password" if i % 2 else "Quota exceeded") if failed else ""))
    return out


@pytest.fixture
def seeded(store):
    """The store with 300 events in org-a and 60 look-alikes in org-b."""
    specs = insert(store, dataset("org-a") + dataset("org-b", 60))
    return store, specs


def _ascii_lower(text: str) -> str:
    """ClickHouse's lower(): ASCII letters only (Python's str.lower folds others too)."""
    return text.translate(str.maketrans(string.ascii_uppercase, string.ascii_lowercase))


def oracle(specs, org: str, f: Filters) -> list[str]:
    """Expected ids, newest first (seed timestamps are distinct per org)."""
    def keep(s):
        q = f.q.lower()
        return (s["org"] == org
                and (not f.action or s["action"] == f.action)
                and (not f.category or s["category"] == f.category)
                and (not f.status or s["status"] == f.status)
                and (not f.since or s["ts"] >= f.since)
                and (not f.until or s["ts"] < f.until)
                and (not f.user or s["user"] == f.user
                     or f.user_case == "any" and _ascii_lower(s["user"]) == _ascii_lower(f.user))
                and (not f.resource_type or s["resource_type"] == f.resource_type)
                and (not f.resource_id or s["resource_id"] == f.resource_id)
                and (not q or any(q in s[k].lower() for k in ("user", "resource_id", "reason"))))
    return [s["id"] for s in sorted(filter(keep, specs), key=lambda s: s["ts"], reverse=True)]


def all_pages(client, org, f: Filters) -> list[list[dict]]:
    pages, cursor = [], None
    while True:
        page = Q.list_events(client, org, replace(f, cursor=cursor))
        pages.append(page.events)
        if page.next_cursor is None:
            return pages
        cursor = Q.decode_cursor(page.next_cursor)
        assert len(pages) < 100


def all_ids(client, org, f: Filters) -> list[str]:
    return [e["event_id"] for page in all_pages(client, org, f) for e in page]


def sql_order(store, org="org-a") -> list[str]:
    return [r[0] for r in store.client.query(
        "SELECT toString(event_id) FROM audit.audit_events WHERE org_id = {o:String} "
        "ORDER BY timestamp DESC, event_id DESC", parameters={"o": org}).result_rows]


# -- parsing -------------------------------------------------------------------------


def test_defaults_and_unknown_keys_ignored():
    assert parse_filters({}) == Filters()
    assert parse_filters({"page": "7", "sort": "x", "org_id": "org-b", "action": ""}) == Filters()
    assert Filters().per_page == 25


def test_values_are_parsed_and_normalized():
    f = parse_filters({
        "action": "auth.login", "category": "auth", "status": "failure", "per_page": "100",
        "since": "2024-06-14T20:00:00-03:00", "until": "2024-06-15", "user": "ana@example.com",
        "ip": "203.0.113.77/24", "resource_type": "monitor", "resource_id": "m-1", "q": "Quota",
    })
    assert f.since == datetime(2024, 6, 14, 23, tzinfo=UTC)
    assert f.until == datetime(2024, 6, 16, tzinfo=UTC)  # a date-only until includes that day
    assert (f.user, f.ip, f.per_page) == ("ana@example.com", "203.0.113.0/24", 100)
    assert parse_filters({"user": " ana@example.com "}).user == " ana@example.com "  # exact: as stored
    assert parse_filters(f.to_query()) == f
    naive = parse_filters({"since": "2024-06-14T20:00", "until": "2024-06-14T21:00:00.5Z"})
    assert naive.since == datetime(2024, 6, 14, 20, tzinfo=UTC)
    assert naive.until == datetime(2024, 6, 14, 21, 0, 0, 500000, tzinfo=UTC)
    assert parse_filters({"ip": "2001:DB8::1"}).ip == "2001:db8::1"
    nets = parse_filters({"not_ip": " 10.1.2.3/8, 2001:DB8::/32,10.0.0.0/8 ,, 192.0.2.1"})
    assert nets.not_ip == "10.0.0.0/8,2001:db8::/32,192.0.2.1"  # normalized, no repeats
    assert parse_filters(nets.to_query()) == nets


@pytest.mark.parametrize("preset,hours", [("1h", 1), ("24h", 24), ("7d", 168), ("30d", 720), ("90d", 2160)])
def test_range_presets(preset, hours):
    f = parse_filters({"range": preset}, now=NOW)
    assert (f.since, f.until, f.range) == (NOW - timedelta(hours=hours), None, preset)
    assert f.to_query() == {"range": preset}


BAD_INPUT = [
    ({"since": "yesterday"}, "since"),
    ({"since": "2024-02-30"}, "since"),
    ({"until": "2024-06-15T25:00"}, "until"),
    ({"since": "1969-12-31"}, "since"),
    ({"until": "9999-12-31T23:59:59-05:00"}, "until"),
    ({"since": "2024-06-02", "until": "2024-06-01"}, "until"),
    ({"range": "2h"}, "range"),
    ({"range": "24h", "since": "2024-06-01"}, "range"),
    ({"ip": "10.0.0.0/33"}, "ip"),
    ({"ip": "999.1.1.1"}, "ip"),
    ({"ip": "10.0.0.0/8/8"}, "ip"),
    ({"ip": "fe80::1%eth0"}, "ip"),
    ({"ip": "2001:db8::/129"}, "ip"),
    ({"ip": "localhost"}, "ip"),
    ({"not_ip": "10.0.0.0/8,localhost"}, "not_ip"),
    ({"not_ip": "10.0.0.0/33"}, "not_ip"),
    ({"not_ip": "fe80::1%eth0"}, "not_ip"),
    ({"not_ip": ",".join(f"10.0.{i}.0/24" for i in range(65))}, "not_ip"),  # over 64 networks
    ({"not_ip": "1" * 3000}, "not_ip"),
    ({"per_page": "30"}, "per_page"),
    ({"per_page": "025"}, "per_page"),
    ({"per_page": "25.0"}, "per_page"),
    ({"per_page": "-25"}, "per_page"),
    ({"action": "auth.teleport"}, "action"),
    ({"action": "AUTH.LOGIN"}, "action"),
    ({"category": "billing"}, "category"),
    ({"status": "ok"}, "status"),
    ({"user": "a" * 16385}, "user"),
    ({"q": "x" * 257}, "q"),
    ({"resource_id": "r" * 16385}, "resource_id"),
    ({"cursor": "c" * 257}, "cursor"),
    ({"q": "a\x00b"}, "q"),
    ({"resource_type": "a\x00b"}, "resource_type"),
    ({"user": "\ud800@x"}, "user"),
    ({"q": 5}, "q"),
    ({"cursor": "garbage!"}, "cursor"),
]


@pytest.mark.parametrize("args,field", BAD_INPUT)
def test_bad_input_names_the_field(args, field):
    with pytest.raises(FilterError) as err:
        parse_filters(args, now=NOW)
    assert err.value.field == field
    assert isinstance(err.value, ValueError) and field in str(err.value)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _forged(obj: dict, **json_kw) -> str:
    """A cursor with a correct checksum over whatever ``t`` and ``id`` hold."""
    full = {**obj, "c": Q._checksum(obj.get("t"), obj.get("id"))}
    return _b64(json.dumps(full, **({"separators": (",", ":")} | json_kw)).encode())


def _tamper(cursor: str, at: int) -> str:
    return cursor[:at] + ("A" if cursor[at] != "A" else "B") + cursor[at + 1:]


GOOD_ID = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
GOOD_CURSOR = Q.encode_cursor(1_718_452_800_000_000, GOOD_ID)
BAD_CURSORS = [
    "garbage", "!!!!", "a", "null", GOOD_CURSOR + "=", GOOD_CURSOR + "==", "x" + GOOD_CURSOR,
    GOOD_CURSOR[:-3], GOOD_CURSOR + "AA", GOOD_CURSOR.upper(),
    *[_tamper(GOOD_CURSOR, i) for i in range(0, len(GOOD_CURSOR), 3)],
    _b64(b"not json"), _b64(b"\xff\xfe"), _b64(b"[1, 2]"), _b64(b"{}"), _b64(b'"x"'),
    _b64(json.dumps({"t": 1718452800000000, "id": GOOD_ID}).encode()),  # no checksum
    _forged({"t": 1718452800000000, "id": GOOD_ID}, separators=(", ", ": ")),  # not canonical
    _forged({"t": "1718452800000000", "id": GOOD_ID}),
    _forged({"t": 1.5, "id": GOOD_ID}),
    _forged({"t": True, "id": GOOD_ID}),
    _forged({"t": None, "id": GOOD_ID}),
    _forged({"t": -1, "id": GOOD_ID}),
    _forged({"t": 10**20, "id": GOOD_ID}),
    _forged({"t": 1, "id": "' OR 1=1 --"}),
    _forged({"t": 1, "id": GOOD_ID.upper()}),
    _forged({"t": 1, "id": 5}),
    _forged({"t": 1, "id": [GOOD_ID]}),
    _forged({"t": 1}),
    _forged({"t": 1, "id": GOOD_ID, "org": "org-b"}),
]


@pytest.mark.parametrize("cursor", BAD_CURSORS)
def test_bad_cursor(cursor):
    with pytest.raises(FilterError) as err:
        parse_filters({"cursor": cursor})
    assert err.value.field == "cursor"


def test_cursor_round_trip():
    cur = parse_filters({"cursor": GOOD_CURSOR}).cursor
    assert (cur.ts_us, cur.event_id) == (1_718_452_800_000_000, GOOD_ID)
    assert cur.encode() == GOOD_CURSOR
    assert set(GOOD_CURSOR) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_action_options_come_from_the_catalog():
    opts = Q.action_options()
    assert [o["category"] for o in opts] == [cat.id for cat in CATEGORIES]
    assert [a["value"] for o in opts for a in o["actions"]] == list(ACTIONS)
    assert all(a["label"] == ACTIONS[a["value"]].label for o in opts for a in o["actions"])
    assert opts[0]["label"] == "Authentication"
    assert [o["value"] for o in Q.category_options()] == [cat.id for cat in CATEGORIES]


def test_bucket_seconds():
    assert Q.bucket_seconds(timedelta(hours=1)) == 60
    assert Q.bucket_seconds(timedelta(hours=24)) == 1800
    assert Q.bucket_seconds(timedelta(days=7)) == 3 * 3600
    assert Q.bucket_seconds(timedelta(days=30)) == 12 * 3600
    assert Q.bucket_seconds(timedelta(days=90)) == 2 * 86400
    assert Q.bucket_seconds(timedelta(days=3650)) % (30 * 86400) == 0
    assert timedelta(days=3650).total_seconds() / Q.bucket_seconds(timedelta(days=3650)) <= 60


def test_day_bounds_follow_the_timezone_and_dst():
    assert Q.day_bounds(datetime(2024, 6, 15, 2, 30, tzinfo=UTC), "America/Sao_Paulo") == (
        datetime(2024, 6, 14, 3, tzinfo=UTC), datetime(2024, 6, 15, 3, tzinfo=UTC))
    # New York's spring-forward day is 23 hours long
    start, end = Q.day_bounds(datetime(2024, 3, 10, 12, tzinfo=UTC), "America/New_York")
    assert (start, end - start) == (datetime(2024, 3, 10, 5, tzinfo=UTC), timedelta(hours=23))
    with pytest.raises(FilterError) as err:
        Q.day_bounds(NOW, "Mars/Olympus_Mons")
    assert err.value.field == "tz"


# -- events: filters --------------------------------------------------------------------

FILTER_CASES = [
    {"action": "monitor.create"},
    {"category": "auth"},
    {"category": "team"},
    {"status": "failure"},
    {"status": "success"},
    {"since": "2024-06-15T00:00:00Z"},
    {"until": "2024-06-15T00:00:00+00:00"},
    {"since": "2024-06-14T20:00:00-03:00", "until": "2024-06-15T06:00"},
    {"until": "2024-06-14"},
    {"since": "2024-06-15"},
    {"range": "1h"},
    {"range": "24h"},
    {"user": "bob@example.com"},
    {"resource_type": "monitor"},
    {"resource_id": "monitor-12"},
    {"q": "BOB@"},
    {"q": "quota"},
    {"q": "MONITOR-1"},
    {"q": "example.org"},
    {"category": "auth", "status": "failure", "user": "ana@example.com", "since": "2024-06-14T18:00Z"},
    {"action": "team.user_create", "q": "carol", "range": "24h"},
]


@pytest.mark.parametrize("args", FILTER_CASES, ids=lambda a: "&".join(f"{k}={v}" for k, v in a.items()))
def test_each_filter(seeded, args):
    store, specs = seeded
    f = parse_filters({**args, "per_page": "100"}, now=NOW)
    want = oracle(specs, "org-a", f)
    assert 0 < len(want) < 300, "the case should select some rows, not all"
    assert all_ids(store.client, "org-a", f) == want


def test_user_is_an_exact_match_and_q_a_substring(seeded):
    store, specs = seeded
    client = store.client
    assert all_ids(client, "org-a", parse_filters({"user": "bob"})) == []
    assert all_ids(client, "org-a", parse_filters({"user": "Bob@example.com"})) == []
    bobs = oracle(specs, "org-a", parse_filters({"user": "bob@example.com"}))
    assert all_ids(client, "org-a", parse_filters({"q": "bob"})) == bobs
    # Any letter case: ASCII only, as ClickHouse's lower() and the alert rules' user key.
    assert all_ids(client, "org-a", parse_filters({"user": "Bob@EXAMPLE.com", "user_case": "any"})) == bobs
    assert all_ids(client, "org-a", parse_filters({"user": "bob", "user_case": "any"})) == []
    assert parse_filters({"user": "Bob@example.com", "user_case": "any"}).to_query()["user_case"] == "any"
    with pytest.raises(FilterError) as err:
        parse_filters({"user": "bob@example.com", "user_case": "ANY"})
    assert err.value.field == "user_case"


def test_user_in_any_case_folds_ascii_letters_only(store):
    specs = insert(store, [spec(user=u, ts=NOW - timedelta(seconds=i + 1)) for i, u in enumerate(
        ["Zoë@Example.com", "zoë@example.com", "ZOË@EXAMPLE.COM", "zoe@example.com"])])
    f = parse_filters({"user": "zoë@example.com", "user_case": "any"})
    want = oracle(specs, "org-a", f)
    assert len(want) == 2  # Ë is not an ASCII letter: ZOË is another address
    assert all_ids(store.client, "org-a", f) == want


@pytest.mark.parametrize("per_page", [25, 50, 100])
@pytest.mark.parametrize("status", ["", "success", "failure"])
@pytest.mark.parametrize("action", ["auth.login", "monitor.create", "system.api_access"])
def test_action_status_per_page(seeded, action, status, per_page):
    store, specs = seeded
    f = parse_filters({"action": action, "status": status, "per_page": str(per_page)})
    want = oracle(specs, "org-a", f)
    pages = all_pages(store.client, "org-a", f)
    assert [len(p) for p in pages[:-1]] == [per_page] * (len(pages) - 1)
    assert 0 < len(pages[-1]) <= per_page
    assert [e["event_id"] for p in pages for e in p] == want
    assert all(e["action"] == action and (not status or e["status"] == status) for p in pages for e in p)


IP_EVENTS = {
    "v4a": "203.0.113.7", "v4b": "203.0.113.200", "v4c": "198.51.100.1", "ten": "10.0.0.1",
    "mapped": "::ffff:203.0.113.8", "v6a": "2001:db8::1", "v6b": "2001:db8::ffff",
    "v6c": "2001:db8:1::1", "none": "",
}


@pytest.mark.parametrize("ip,labels", [
    ("203.0.113.7", {"v4a"}),
    ("203.0.113.0/24", {"v4a", "v4b", "mapped"}),
    ("203.0.113.77/24", {"v4a", "v4b", "mapped"}),
    ("203.0.113.8", {"mapped"}),
    ("0.0.0.0/0", {"v4a", "v4b", "v4c", "ten", "mapped"}),
    ("::ffff:203.0.113.7", {"v4a"}),
    ("::ffff:203.0.113.0/120", {"v4a", "v4b", "mapped"}),
    ("2001:db8::1", {"v6a"}),
    ("2001:db8::/64", {"v6a", "v6b"}),
    ("2001:db8::/32", {"v6a", "v6b", "v6c"}),
    ("2001:db8:2::/48", set()),
    ("192.0.2.1", set()),
])
def test_ip_filter(store, ip, labels):
    insert(store, [spec(ip=addr, reason=label, ts=NOW - timedelta(seconds=i))
                   for i, (label, addr) in enumerate(IP_EVENTS.items())])
    events = Q.list_events(store.client, "org-a", parse_filters({"ip": ip})).events
    assert {e["reason"] for e in events} == labels


@pytest.mark.parametrize("not_ip,left_out", [
    ("203.0.113.0/24", {"v4a", "v4b", "mapped"}),
    ("10.0.0.1,2001:db8::/64", {"ten", "v6a", "v6b"}),
    ("0.0.0.0/0", {"v4a", "v4b", "v4c", "ten", "mapped"}),
    ("::/0", set(IP_EVENTS)),  # an event without an address is stored as ::
    ("192.0.2.0/24", set()),
])
def test_not_ip_filter_leaves_out_exactly_those_networks(store, not_ip, left_out):
    insert(store, [spec(ip=addr, reason=label, ts=NOW - timedelta(seconds=i + 1))
                   for i, (label, addr) in enumerate(IP_EVENTS.items())])
    f = parse_filters({"not_ip": not_ip})
    assert {e["reason"] for e in Q.list_events(store.client, "org-a", f).events} == \
        set(IP_EVENTS) - left_out
    assert sum(Q.timeseries(store.client, "org-a", f, now=NOW)["events"]) == \
        len(IP_EVENTS) - len(left_out)


def test_ip_is_rendered_as_text_with_ipv4_plain(store):
    insert(store, [spec(ip=addr, reason=label, ts=NOW - timedelta(seconds=i))
                   for i, (label, addr) in enumerate(IP_EVENTS.items())])
    shown = {e["reason"]: e["ip"] for e in Q.list_events(store.client, "org-a", Filters()).events}
    assert shown == {**IP_EVENTS, "mapped": "203.0.113.8", "none": ""}


# -- events: pagination ---------------------------------------------------------------


def test_keyset_pages_equal_the_full_order_with_timestamp_ties(store):
    # 4 events share each timestamp, each in another insert (part): the event id breaks the tie
    for part in range(4):
        insert(store, [spec(ts=NOW - timedelta(seconds=i), user=f"u{i}.{part}@x.com") for i in range(20)])
    pages = all_pages(store.client, "org-a", Filters())
    assert [len(p) for p in pages] == [25, 25, 25, 5]
    ids = [e["event_id"] for p in pages for e in p]
    assert ids == sql_order(store) and len(set(ids)) == 80
    stamps = [e["timestamp"] for p in pages for e in p]
    assert stamps == sorted(stamps, reverse=True)


def test_the_page_reads_its_columns_only_and_gets_the_same_events(seeded):
    store, _ = seeded
    for args in [{}, {"status": "failure", "per_page": "50"}, {"q": "example", "per_page": "100"}]:
        f, cursor = parse_filters(args), None
        while True:
            whole = Q.list_events(store.client, "org-a", replace(f, cursor=cursor))
            narrow = Q.list_events(store.client, "org-a", replace(f, cursor=cursor),
                                   columns=Q.PAGE_COLUMNS)
            assert narrow.next_cursor == whole.next_cursor
            assert narrow.events == [{k: e[k] for k in (*Q.PAGE_COLUMNS, "action_label")}
                                     for e in whole.events]
            if whole.next_cursor is None:
                break
            cursor = Q.decode_cursor(whole.next_cursor)
    sql, _ = Q.events_query("org-a", Filters(), None, 26, Q.PAGE_COLUMNS)
    assert "details" not in sql and "user_agent" not in sql


def test_the_page_template_shows_only_what_its_query_reads():
    # A field the query does not read would render as an empty cell, silently.
    import re
    from pathlib import Path

    import upmetr_audit.web as web_pkg

    template = (Path(web_pkg.__file__).parent / "templates" / "audit.html").read_text()
    table = template[template.index('<table class="events">'):template.index("</table>")]
    used = set(re.findall(r"\be\.(\w+)", table))
    assert used and used <= {*Q.PAGE_COLUMNS, "action_label"}, used


def _granules(client, sql, params) -> tuple[int, int]:
    """(selected, total) granules of the primary-key step of EXPLAIN indexes=1."""
    rows = client.query("EXPLAIN indexes=1 " + sql, parameters=params).result_rows
    plan = [r[0].strip(" │└├─") for r in rows]
    at = plan.index("PrimaryKey")
    line = next(p for p in plan[at:] if p.startswith("Granules:"))
    selected, total = line.split()[1].split("/")
    return int(selected), int(total)


def test_a_deep_page_reads_only_granules_at_or_before_the_cursor(store):
    n = 60_000  # written straight into the table: this test is about the read plan
    store.client.command(
        "INSERT INTO audit.audit_events (event_id, org_id, timestamp, category, action, status, user_email) "
        "SELECT generateUUIDv4(), 'org-a', "
        "toDateTime64('2024-06-01 00:00:00', 6, 'UTC') + toIntervalSecond(number), "
        "'auth', 'auth.login', 'success', 'a@x' FROM numbers({n:UInt32})", parameters={"n": n})
    order = sql_order(store)
    deep = Q.get_event(store.client, "org-a", order[n - 100])
    cursor = Q.Cursor(Q._micros(datetime.fromisoformat(deep["timestamp"])), deep["event_id"])
    page = Q.list_events(store.client, "org-a", Filters(cursor=cursor))
    assert [e["event_id"] for e in page.events] == order[n - 99:n - 74]
    selected, total = _granules(store.client, *Q.events_query("org-a", Filters(), cursor, 26))
    assert total >= 7 and selected == 1


def test_last_full_page_has_no_next_cursor(store):
    insert(store, [spec(ts=NOW - timedelta(seconds=i)) for i in range(50)])
    first = Q.list_events(store.client, "org-a", Filters())
    second = Q.list_events(store.client, "org-a", parse_filters({"cursor": first.next_cursor}))
    assert (len(second.events), second.next_cursor) == (25, None)
    assert Q.list_events(store.client, "org-b", Filters()) == Q.Page([], None)


def test_pages_are_stable_while_new_events_arrive(store):
    client = store.client
    insert(store, [spec(ts=NOW - timedelta(minutes=i)) for i in range(70)])
    before = sql_order(store)
    page = Q.list_events(client, "org-a", Filters())
    seen = [e["event_id"] for e in page.events]
    while page.next_cursor:
        # newer events (and same-time ones in another org) land between fetches
        insert(store, [spec(ts=NOW + timedelta(seconds=len(seen) + i)) for i in range(10)]
               + [spec(org="org-b", ts=NOW - timedelta(minutes=30))])
        page = Q.list_events(client, "org-a", parse_filters({"cursor": page.next_cursor}))
        seen += [e["event_id"] for e in page.events]
    assert seen == before
    newest = Q.list_events(client, "org-a", Filters()).events
    assert newest[0]["timestamp"] > Q._iso(NOW)  # a refresh shows the new ones first


def test_cursor_keeps_the_filters(seeded):
    store, specs = seeded
    f = parse_filters({"status": "failure", "category": "auth"})
    pages = all_pages(store.client, "org-a", f)
    assert len(pages) >= 2
    assert [e["event_id"] for p in pages for e in p] == oracle(specs, "org-a", f)


# -- events: one event, org isolation ----------------------------------------------------


def test_get_event_renders_every_field(store):
    s = spec(action="settings.update", ts=NOW + timedelta(microseconds=123456), ip="::ffff:192.0.2.10",
             reason="new plan", **{c.USER_AGENT: "curl/8", c.SESSION_ID: "sess-1", c.USER_ID: "u-1",
                                   c.ACTOR_TYPE: "user", c.CHANGES: '{"plan": {"before": "a", "after": "b"}}',
                                   "custom.key": "v"})
    insert(store, [s])
    event = Q.get_event(store.client, "org-a", s["id"])
    assert tuple(event) == Q.EVENT_FIELDS
    assert event["event_id"] == s["id"] and event["timestamp"] == "2024-06-15T12:00:00.123456Z"
    assert (event["ip"], event["user_agent"], event["session_id"], event["user_id"]) == (
        "192.0.2.10", "curl/8", "sess-1", "u-1")
    assert json.loads(event["changes"]) == {"plan": {"before": "a", "after": "b"}}
    assert event["details"] == {"custom.key": "v"}
    assert event["action_label"] == "Settings updated" and event["service_name"] == "billing-api"
    assert datetime.fromisoformat(event["received_at"]).tzinfo is not None
    assert Q.get_event(store.client, "org-a", s["id"].upper()) == event
    assert Q.list_events(store.client, "org-a", Filters()).events == [event]
    assert Q.get_event(store.client, "org-a", str(uuid.uuid4())) is None


@pytest.mark.parametrize("bad", ["", "not-a-uuid", "' OR 1=1 --", GOOD_ID + "0", "{" + GOOD_ID + "}", None])
def test_get_event_bad_id(store, bad):
    with pytest.raises(FilterError) as err:
        Q.get_event(store.client, "org-a", bad)
    assert err.value.field == "event_id"


def test_org_isolation(seeded):
    store, specs = seeded
    client = store.client
    b_ids = {s["id"] for s in specs if s["org"] == "org-b"}
    for args in [{}, {"user": "bob@example.com"}, {"q": "example"}, {"ip": "::/0"}, {"ip": "0.0.0.0/0"},
                 {"q": "org-b"}, {"user": "' OR org_id = 'org-b"}, {"resource_id": "x' OR '1'='1"}]:
        f = parse_filters({**args, "per_page": "100"})
        assert not set(all_ids(client, "org-a", f)) & b_ids
        assert all(e["org_id"] == "org-a" for p in all_pages(client, "org-a", f) for e in p)
    b_id = next(iter(b_ids))
    assert Q.get_event(client, "org-a", b_id) is None
    assert Q.get_event(client, "org-b", b_id)["org_id"] == "org-b"
    assert set(all_ids(client, "org-b", Filters())) == b_ids
    # a cursor is only a position: a cursor from org-b's pages resumes within org-a
    b_cursor = Q.list_events(client, "org-b", Filters()).next_cursor
    assert all(e["org_id"] == "org-a"
               for e in Q.list_events(client, "org-a", parse_filters({"cursor": b_cursor})).events)
    for org in ["org-a' OR '1'='1", "org-%", "", "ORG-A"]:
        if not org:
            with pytest.raises(ValueError):
                Q.list_events(client, org, Filters())
            continue
        assert Q.list_events(client, org, Filters()).events == []
        assert Q.summary(client, org, now=NOW)["total_events"] == 0


# -- attack corpus --------------------------------------------------------------------------

SQLI = [
    "'", "''", '"', "`", "\\", "\\'", "\\\\'", "' OR 1=1 --", "' OR '1'='1", "1) OR (1=1",
    "x' UNION SELECT name FROM system.tables --", "'; DROP TABLE audit.audit_events; --",
    "{org:String}", "{x:String}", "{{org}}", "{q:String}' OR 1=1", "%s", "%(org)s", "$$", "$t$ x $t$",
    "/* c */", "# c", "-- c", "org-b", "' OR org_id != '", ")", "1; SELECT 1", "ana@example.com' OR 'a'='a",
    "é ünïcødé", "😀", "\u202e\u200b", "ｓｅｌｅｃｔ", "\x00", "a\x00' OR 1=1", "\n' --", "\r\n",
    "\ud800", "a" * 300, "0x27", "char(39)", "\\x27", "%27", "'||'", "' AND sleep(3) --",
]
STRING_FIELDS = ["action", "category", "status", "per_page", "since", "until", "range", "user",
                 "user_case", "ip",
                 "not_ip", "resource_type", "resource_id", "q", "cursor"]


def test_sql_injection_corpus_is_inert(seeded):
    """Every payload in every filter is refused with a FilterError naming the
    field, or is taken as a plain value: exactly the rows the oracle expects."""
    store, specs = seeded
    client = store.client
    planted = spec(reason="'; DROP TABLE audit.audit_events --- planted", ts=NOW - timedelta(seconds=1))
    specs = specs + insert(store, [planted])
    parsed = 0
    for field in STRING_FIELDS:
        for payload in SQLI:
            try:
                f = parse_filters({field: payload}, now=NOW)
            except FilterError as err:
                assert err.field == field
                continue
            parsed += 1
            assert f.ip == f.not_ip == "" and f.cursor is None
            want = oracle(specs, "org-a", f)
            assert want in ([], [planted["id"]]), (field, payload)
            assert all_ids(client, "org-a", f) == want, (field, payload)
            assert sum(Q.timeseries(client, "org-a", f, now=NOW)["events"]) == len(want)
            assert b"".join(Q.iter_export(client, "org-a", f, "ndjson")).count(b"\n") == len(want)
    assert parsed >= 4 * 30  # the free-text fields took most payloads as plain values
    dropped = parse_filters({"q": "DROP TABLE audit.audit_events ---"})
    assert all_ids(client, "org-a", dropped) == [planted["id"]]
    assert all_ids(client, "org-a", parse_filters({"q": "'"})) == [planted["id"]]
    assert len(all_ids(client, "org-a", Filters(per_page=100))) == 301


# -- summary cards --------------------------------------------------------------------------

BASELINE_FAILS = [1, 2, 0, 3, 1, 2, 1]  # failed logins k days before the last 24h: median 1


def _baseline(org):
    return [spec(org=org, status="failure", user=USERS[1], ts=NOW - timedelta(days=k + 1, hours=1))
            for k, n in enumerate(BASELINE_FAILS) for _ in range(n)]


def test_summary_counts(store):
    org = "org-s"
    rows = _baseline(org) + [
        spec(org=org, ts=NOW - timedelta(hours=1)),
        spec(org=org, ts=NOW - timedelta(hours=2)),
        spec(org=org, ts=NOW - timedelta(hours=23, minutes=59)),
        spec(org=org, ts=NOW - timedelta(hours=24)),  # exactly 24h ago: outside (now-24h, now]
        spec(org=org, ts=NOW + timedelta(hours=1)),  # ahead of now: not in the last 24h
        *[spec(org=org, status="failure", user=USERS[1], ts=NOW - timedelta(minutes=10 * i))
          for i in (1, 2, 3, 4)],
        spec(org=org, action="mfa.verify", status="failure", ts=NOW - timedelta(minutes=5)),
        spec(org=org, action="monitor.create", user=USERS[2], ts=NOW - timedelta(hours=3)),
        spec(org=org, ts=NOW - timedelta(days=30)),
        spec(org="org-other", status="failure", ts=NOW - timedelta(minutes=1)),
    ]
    insert(store, rows)
    s = Q.summary(store.client, org, now=NOW)
    assert s["total_events"] == len(rows) - 1
    assert s["events_today"] == 2 + 1 + 4 + 1 + 1  # June 15 UTC: 10:00, 11:00, 13:00, 4 fails, mfa, 09:00
    assert s["logins_24h"] == 3
    assert s["failed_logins_24h"] == 4
    assert s["unique_users_24h"] == 3
    assert (s["failed_logins_baseline"], s["failed_logins_threshold"]) == (1.0, 6.0)
    assert s["failed_logins_elevated"] is False
    assert s["today_start"] == "2024-06-15T00:00:00.000000Z"


@pytest.mark.parametrize("fails,elevated", [(6, False), (7, True)])
def test_failed_logins_flag_against_the_baseline(store, fails, elevated):
    insert(store, _baseline("org-s") + [
        spec(org="org-s", status="failure", ts=NOW - timedelta(minutes=i + 1)) for i in range(fails)])
    s = Q.summary(store.client, "org-s", now=NOW)
    assert (s["failed_logins_24h"], s["failed_logins_elevated"]) == (fails, elevated)


def test_summary_of_an_empty_org(store):
    s = Q.summary(store.client, "nobody", tz="Asia/Tokyo", now=NOW)
    assert s["total_events"] == s["events_today"] == s["failed_logins_24h"] == 0
    assert s["failed_logins_elevated"] is False and s["failed_logins_threshold"] == 5.0


def test_events_today_follows_the_org_timezone_across_midnight(store):
    insert(store, [
        spec(ts=datetime(2024, 6, 14, 2, 59, tzinfo=UTC)),  # 13th 23:59 in São Paulo
        spec(ts=datetime(2024, 6, 14, 3, 30, tzinfo=UTC)),  # 14th 00:30
        spec(ts=datetime(2024, 6, 15, 2, 0, tzinfo=UTC)),  # 14th 23:00; 15th in UTC
        spec(ts=datetime(2024, 6, 15, 3, 10, tzinfo=UTC)),  # 15th 00:10
    ])
    client = store.client
    before = datetime(2024, 6, 15, 2, 30, tzinfo=UTC)  # 23:30 on the 14th in São Paulo
    after = datetime(2024, 6, 15, 3, 30, tzinfo=UTC)  # 00:30 on the 15th
    assert Q.summary(client, "org-a", "America/Sao_Paulo", now=before)["events_today"] == 2
    assert Q.summary(client, "org-a", "UTC", now=before)["events_today"] == 2  # 02:00 and 03:10 on the 15th
    assert Q.summary(client, "org-a", "America/Sao_Paulo", now=after)["events_today"] == 1
    assert Q.summary(client, "org-a", "America/Sao_Paulo", now=after)["today_start"] == (
        "2024-06-15T03:00:00.000000Z")
    assert Q.summary(client, "org-a", "Asia/Tokyo", now=before)["events_today"] == 2  # 15th from 14th 15:00Z
    with pytest.raises(FilterError):
        Q.summary(client, "org-a", "Nowhere/Else", now=before)


# -- chart -------------------------------------------------------------------------------


def test_timeseries(store):
    insert(store, [
        spec(status="failure", ts=NOW - timedelta(minutes=30)),
        spec(ts=NOW - timedelta(minutes=90)),
        spec(action="monitor.create", ts=NOW - timedelta(hours=5)),
        spec(ts=NOW - timedelta(hours=25)),
        spec(org="org-b", status="failure", ts=NOW - timedelta(minutes=20)),
    ])
    client = store.client
    ts = Q.timeseries(client, "org-a", parse_filters({"range": "24h"}, now=NOW), now=NOW)
    assert ts["bucket_seconds"] == 1800 and len(ts["buckets"]) == len(ts["events"]) == 48
    assert ts["buckets"][0] == "2024-06-14T12:00:00.000000Z"
    assert ts["buckets"][-1] == "2024-06-15T11:30:00.000000Z"
    assert (sum(ts["events"]), ts["events"][-1], ts["events"][-3]) == (3, 1, 1)
    assert (sum(ts["failed_logins"]), ts["failed_logins"][-1]) == (1, 1)
    all_time = Q.timeseries(client, "org-a", Filters(), now=NOW)
    assert (all_time["bucket_seconds"], sum(all_time["events"])) == (1800, 4)
    failures = Q.timeseries(client, "org-a", parse_filters({"status": "failure"}), now=NOW)
    assert sum(failures["events"]) == sum(failures["failed_logins"]) == 1
    assert Q.timeseries(client, "org-c", Filters(), now=NOW) == {
        "bucket_seconds": None, "buckets": [], "events": [], "failed_logins": []}


# -- export ------------------------------------------------------------------------------------

FORMULAS = {"user": "=HYPERLINK(\"http://evil\")@x.com", "resource_id": "+SUM(A1)",
            "reason": "-2+3", "user_agent": "@cmd|' /C calc'!A0"}


def _export_rows(store):
    rows = [spec(ts=NOW - timedelta(minutes=i), status="failure" if i % 2 else "success") for i in range(30)]
    rows += [
        spec(action="monitor.delete", user=FORMULAS["user"], resource_id=FORMULAS["resource_id"],
             reason=FORMULAS["reason"], status="failure", ts=NOW + timedelta(minutes=1),
             **{c.USER_AGENT: FORMULAS["user_agent"]}),
        spec(reason='comma, "quote"\nand newline', status="failure", ts=NOW + timedelta(minutes=2)),
        spec(org="org-b", status="failure"),
    ]
    return insert(store, rows)


@pytest.mark.parametrize("text", [" =1+1", "\n=1+1", "\u3000@SUM(A1)", "\uff1d1+1", "  \uff0bcmd"])
def test_a_formula_after_blanks_or_in_fullwidth_signs_is_neutralised(text):
    assert Q.csv_cell(text) == "'" + text
    assert Q.csv_cell("a=1") == "a=1" and Q.csv_cell(" plain") == " plain"


def test_export_csv_and_ndjson_hold_exactly_the_filtered_rows(store):
    specs = _export_rows(store)
    client = store.client
    f = parse_filters({"status": "failure", "per_page": "25"})
    want = oracle(specs, "org-a", f)
    page_events = [e for p in all_pages(client, "org-a", f) for e in p]

    ndjson = b"".join(Q.iter_export(client, "org-a", f, "ndjson")).decode()
    assert ndjson.endswith("\n")
    assert [json.loads(line) for line in ndjson.splitlines()] == page_events

    table = list(csv.reader(io.StringIO(b"".join(Q.iter_export(client, "org-a", f, "csv")).decode(),
                                        newline="")))
    assert tuple(table[0]) == Q.EVENT_FIELDS
    assert [r[0] for r in table[1:]] == want
    by_field = [dict(zip(Q.EVENT_FIELDS, r, strict=True)) for r in table[1:]]
    assert by_field[0]["reason"] == 'comma, "quote"\nand newline'
    evil = by_field[1]
    assert evil["user_email"] == "'" + FORMULAS["user"]
    assert evil["resource_id"] == "'" + FORMULAS["resource_id"]
    assert evil["reason"] == "'" + FORMULAS["reason"]
    assert evil["user_agent"] == "'" + FORMULAS["user_agent"]
    assert evil["resource_type"] == "monitor" and evil["ip"] == "203.0.113.7"
    assert not any(cell.startswith(("=", "+", "-", "@")) for r in table for cell in r)


def test_export_ignores_per_page_and_cursor(store):
    specs = _export_rows(store)
    client = store.client
    first = Q.list_events(client, "org-a", Filters())
    f = parse_filters({"per_page": "25", "cursor": first.next_cursor})
    lines = b"".join(Q.iter_export(client, "org-a", f, "ndjson")).splitlines()
    assert len(lines) == len(oracle(specs, "org-a", Filters())) == 32


def test_export_checks_the_format_before_streaming(store):
    with pytest.raises(FilterError) as err:
        Q.iter_export(store.client, "org-a", Filters(), "xlsx")  # no next(): raised at call time
    assert err.value.field == "format"
    with pytest.raises(ValueError):
        Q.iter_export(store.client, "", Filters(), "csv")
    assert list(Q.iter_export(store.client, "org-a", Filters(), "ndjson")) == []
    assert list(Q.iter_export(store.client, "org-a", Filters(), "csv")) == [
        (",".join(Q.EVENT_FIELDS) + "\r\n").encode()]


def test_large_export_streams_in_chunks(store):
    n = 20_000
    start = NOW - timedelta(days=40)  # spans two monthly partitions
    insert(store, [spec(ts=start + timedelta(minutes=3 * i), user=f"user{i % 97}@x.com") for i in range(n)])
    chunks = list(Q.iter_export(store.client, "org-a", Filters(), "ndjson"))
    assert len(chunks) == n // Q.EXPORT_CHUNK_ROWS
    assert all(chunk.count(b"\n") == Q.EXPORT_CHUNK_ROWS for chunk in chunks)
    ids = [json.loads(line)["event_id"] for chunk in chunks for line in chunk.splitlines()]
    assert ids == sql_order(store) and len(set(ids)) == n
    csv_chunks = Q.iter_export(store.client, "org-a", parse_filters({"q": "user7@"}), "csv", chunk_rows=30)
    first = next(csv_chunks)
    assert first.startswith(b"event_id,")  # the header comes before any query result is held
    rest = list(csv_chunks)
    assert len(rest) > 3 and sum(chunk.count(b"\r\n") for chunk in rest) == len(
        [i for i in range(n) if i % 97 == 7])


def test_columns_match_the_table(store):
    described = [r[0] for r in store.client.query("DESCRIBE TABLE audit.audit_events").result_rows
                 if r[0] not in schema.INTERNAL_EVENT_COLUMNS]
    assert list(Q.COLUMNS) == described


def test_every_action_with_every_status_and_page_size(store):
    """All 42 catalog actions × {all, success, failure} × {25, 50, 100}, in one
    store: every combination returns exactly its events, in pages of its size."""
    specs = []
    for k, action in enumerate(ACTIONS):
        for i in range(3 + k % 4):  # 3–6 events per action, some failures
            specs.append(spec(action=action, ts=NOW - timedelta(seconds=k * 60 + i),
                              status="failure" if i % 3 == 2 else "success",
                              user=USERS[i % 3]))
    insert(store, specs)
    for action in ACTIONS:
        for status in ("", "success", "failure"):
            for per_page in (25, 50, 100):
                f = parse_filters({"action": action, "status": status, "per_page": str(per_page)})
                page = Q.list_events(store.client, "org-a", f)
                assert [e["event_id"] for e in page.events] == oracle(specs, "org-a", f)[:per_page]

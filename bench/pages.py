"""P2 (the audit page's queries) and P3 (bytes per event) against two baselines.

The same logical queries run on the same data set (:mod:`bench.datasets`) in

* **typed**: the product, through its own query layer (``web/queries.py``)
  over ``audit.audit_events``: what ``serve`` runs for the page;
* **otel_logs**: the stock table of the OTel Collector's ClickHouse exporter
  in the same chDB, attributes read from the ``LogAttributes`` Map;
* **postgres**: PostgreSQL with a conventional table and B-tree indexes.

The parts of one page load, for the largest org (``org-000``), with "now"
the end of the data set:

* ``cards``: the 4 summary cards (total, today, logins 24h, failed logins
  24h with their 7-day baseline, unique users 24h);
* ``page_filtered``: the first page of failed logins
  (``action=auth.login&status=failure``, 25 rows, newest first);
* ``chart``: the 30-day chart series (``range=30d``: events and failed
  logins per 12-hour bucket);
* ``composite``: the three in sequence, as the page waits for them;

and separately ``page_newest`` (no filter), ``page_deep`` (after following
50 cursors) and ``user_search`` (``user=<exact email>``).

Every part's result is checked equal across the three systems (ids and
times of the rows, card values, bucket counts) before anything is timed; a
difference stops the benchmark. Warm: one untimed call, then ``repeat``
timed calls (fewer, at least 5, for a part slower than 20 s in all). Cold:
``cold`` times, the caches are dropped (ClickHouse's mark, uncompressed and
index caches; PostgreSQL restarted; the OS page cache dropped when this
process may) and the composite runs once. The figure is the
wall time of the call in this process: query, driver, and for typed the
product's rendering of the rows.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from datetime import UTC, datetime, timedelta

import psycopg

from upmetr_audit.collector.schema import EVENTS_TABLE
from upmetr_audit.shipper import contract as c
from upmetr_audit.web import queries

from .datasets import OTEL_TABLE, PG_INDEXES

ORG = "org-000"
DEEP_PAGES = 50
PER_PAGE = queries.DEFAULT_PER_PAGE
COMPOSITE = ("cards", "page_filtered", "chart")
PARTS = (*COMPOSITE, "page_newest", "page_deep", "user_search")
SYSTEMS = ("typed", "otel_logs", "postgres")
LOGIN = "auth.login"


def _iso_us(us: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _us(dt: datetime) -> int:
    return queries._micros(dt)


class Setup:
    """What every system is asked: the org, "now", the filters and cursor."""

    def __init__(self, client, end_us: int):
        self.now = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=end_us)
        self.now_us = end_us
        self.today_lo, self.today_hi = queries.day_bounds(self.now, "UTC")
        self.failed = queries.parse_filters({"action": LOGIN, "status": "failure"}, self.now)
        self.newest = queries.parse_filters({}, self.now)
        self.range30 = queries.parse_filters({"range": "30d"}, self.now)
        since, end = self.range30.since, self.now
        self.step_us = queries.bucket_seconds(end - since) * 1_000_000
        self.origin = _us(since) // self.step_us * self.step_us
        self.since_us, self.end_us = _us(since), _us(end)
        self.n_buckets = -(-(self.end_us - self.origin) // self.step_us)
        cursor = None
        for _ in range(DEEP_PAGES):
            page = queries.list_events(client, ORG, queries.parse_filters({"cursor": cursor or ""}, self.now))
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        self.deep = queries.parse_filters({"cursor": cursor or ""}, self.now)
        self.user = client.query(f"SELECT user_email FROM {EVENTS_TABLE} WHERE org_id = {{o:String}} "
                                 "ORDER BY timestamp DESC LIMIT 1", parameters={"o": ORG}).result_rows[0][0]
        self.by_user = queries.parse_filters({"user": self.user}, self.now)

    def cards_from_days(self, today, logins, users, failed_by_day, total) -> dict:
        baseline = statistics.median(failed_by_day[1:queries.BASELINE_DAYS + 1])
        return {"total_events": int(total), "events_today": int(today), "logins_24h": int(logins),
                "failed_logins_24h": int(failed_by_day[0]), "unique_users_24h": int(users),
                "failed_logins_baseline": float(baseline)}

    def series(self, rows) -> dict:
        events, failed = [0] * self.n_buckets, [0] * self.n_buckets
        for b, total, fails in rows:
            events[int(b)], failed[int(b)] = int(total), int(fails)
        return {"bucket_seconds": self.step_us // 1_000_000, "events": events, "failed_logins": failed}


# -- the product ------------------------------------------------------------------


class Typed:
    name = "typed"

    def __init__(self, client, s: Setup):
        self.client, self.s = client, s

    def _page(self, f) -> list:  # as the page reads it: only the columns its table shows
        return [(e["event_id"], e["timestamp"]) for e in queries.list_events(
            self.client, ORG, f, columns=queries.PAGE_COLUMNS).events]

    def cards(self):
        r = queries.summary(self.client, ORG, now=self.s.now)
        keys = ("total_events", "events_today", "logins_24h", "failed_logins_24h", "unique_users_24h",
                "failed_logins_baseline")
        return {k: r[k] for k in keys}

    def page_filtered(self):
        return self._page(self.s.failed)

    def chart(self):
        r = queries.timeseries(self.client, ORG, self.s.range30, now=self.s.now)
        return {k: r[k] for k in ("bucket_seconds", "events", "failed_logins")}

    def page_newest(self):
        return self._page(self.s.newest)

    def page_deep(self):
        return self._page(self.s.deep)

    def user_search(self):
        return self._page(self.s.by_user)

    def drop_caches(self):
        _drop_clickhouse_caches(self.client)


def _drop_clickhouse_caches(client) -> None:
    for cache in ("MARK", "UNCOMPRESSED", "PRIMARY INDEX", "INDEX MARK", "INDEX UNCOMPRESSED",
                  "QUERY", "SKIPPING INDEX", "PAGE"):
        try:
            client.command(f"SYSTEM DROP {cache} CACHE")
        except Exception:  # noqa: BLE001 - not every cache exists in every version
            pass


# -- the stock otel_logs table ------------------------------------------------------

_A = "LogAttributes['{}']"
_O_ORG, _O_STATUS, _O_USER, _O_ID = (_A.format(k) for k in (c.ORG_ID, c.STATUS, c.USER_EMAIL, c.EVENT_ID))
_O_LOGIN = f"EventName = 'upmetr.audit.{LOGIN}'"
_O_FAILED_LOGIN = f"({_O_LOGIN} AND {_O_STATUS} = 'failure')"
_O_CARDS = f"""
WITH {{now:Int64}} - toUnixTimestamp64Micro(Timestamp) AS age_us,
     if(age_us >= 0, intDiv(age_us, 86400000000), -1) AS age_day
SELECT
    countIf(Timestamp >= fromUnixTimestamp64Micro({{today_lo:Int64}}, 'UTC')
            AND Timestamp < fromUnixTimestamp64Micro({{today_hi:Int64}}, 'UTC')),
    countIf(age_day = 0 AND {_O_LOGIN} AND {_O_STATUS} = 'success'),
    uniqExactIf({_O_USER}, age_day = 0),
    {", ".join(f"countIf({_O_FAILED_LOGIN} AND age_day = {k})" for k in range(queries.BASELINE_DAYS + 1))}
FROM {OTEL_TABLE}
WHERE {_O_ORG} = {{org:String}}
  AND Timestamp >= fromUnixTimestamp64Micro({{lo:Int64}}, 'UTC')
  AND Timestamp < fromUnixTimestamp64Micro({{hi:Int64}}, 'UTC')"""
_O_ORDER = f"ORDER BY Timestamp DESC, toUUID({_O_ID}) DESC"
_O_AFTER = (f"Timestamp <= fromUnixTimestamp64Micro({{cur_ts:Int64}}, 'UTC') AND "
            f"(Timestamp, toUUID({_O_ID})) "
            f"< (fromUnixTimestamp64Micro({{cur_ts:Int64}}, 'UTC'), {{cur_id:UUID}})")


class _Baseline:
    """The page parts both SQL baselines build from their own ``_page``:
    ``FAILED`` and ``BY_USER`` are their conditions (``BY_USER`` takes the
    ``user`` parameter)."""

    FAILED: list[str]
    BY_USER: str

    def page_filtered(self):
        return self._page(self.FAILED, {})

    def page_newest(self):
        return self._page([], {})

    def page_deep(self):
        return self._page([], {}, self.s.deep.cursor)

    def user_search(self):
        return self._page([self.BY_USER], {"user": self.s.user})


class Otel(_Baseline):
    name = "otel_logs"
    FAILED = [_O_LOGIN, f"{_O_STATUS} = 'failure'"]
    BY_USER = f"{_O_USER} = {{user:String}}"

    def __init__(self, client, s: Setup):
        self.client, self.s = client, s

    def _lo_hi(self):
        s = self.s
        lo = min(s.now_us - (queries.BASELINE_DAYS + 1) * 86_400_000_000, _us(s.today_lo))
        return lo, max(s.now_us + 1, _us(s.today_hi))

    def cards(self):
        s = self.s
        total = self.client.query(f"SELECT count() FROM {OTEL_TABLE} WHERE {_O_ORG} = {{org:String}}",
                                  parameters={"org": ORG}).result_rows[0][0]
        lo, hi = self._lo_hi()
        row = self.client.query(_O_CARDS, parameters={
            "org": ORG, "now": s.now_us, "lo": lo, "hi": hi, "today_lo": _us(s.today_lo),
            "today_hi": _us(s.today_hi)}).result_rows[0]
        return s.cards_from_days(row[0], row[1], row[2], list(row[3:]), total)

    def _page(self, conds: list[str], params: dict, cursor=None) -> list:
        params = {"org": ORG, "limit": PER_PAGE, **params}
        conds = [f"{_O_ORG} = {{org:String}}", *conds]
        if cursor:
            conds.append(_O_AFTER)
            params.update(cur_ts=cursor.ts_us, cur_id=cursor.event_id)
        rows = self.client.query(f"SELECT * FROM {OTEL_TABLE} WHERE {' AND '.join(conds)} {_O_ORDER} "
                                 "LIMIT {limit:UInt32}", parameters=params).named_results()
        return [(r["LogAttributes"][c.EVENT_ID], r["Timestamp"].strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
                for r in rows]

    def chart(self):
        s = self.s
        rows = self.client.query(
            f"SELECT intDiv(toUnixTimestamp64Micro(Timestamp) - {{origin:Int64}}, {{step:Int64}}) AS b, "
            f"count(), countIf({_O_FAILED_LOGIN}) FROM {OTEL_TABLE} WHERE {_O_ORG} = {{org:String}} "
            "AND Timestamp >= fromUnixTimestamp64Micro({since:Int64}, 'UTC') "
            "AND Timestamp < fromUnixTimestamp64Micro({end:Int64}, 'UTC') GROUP BY b ORDER BY b",
            parameters={"org": ORG, "origin": s.origin, "step": s.step_us, "since": s.since_us,
                        "end": s.end_us}).result_rows
        return s.series(rows)

    def drop_caches(self):
        _drop_clickhouse_caches(self.client)


# -- PostgreSQL -------------------------------------------------------------------

_P_AGE = "floor(extract(epoch FROM (%(now)s::timestamptz - timestamp)) / 86400)"
_P_FAILED_LOGIN = f"action = '{LOGIN}' AND status = 'failure'"
_P_CARDS = f"""
SELECT
    count(*) FILTER (WHERE timestamp >= %(today_lo)s AND timestamp < %(today_hi)s),
    count(*) FILTER (WHERE age_day = 0 AND action = '{LOGIN}' AND status = 'success'),
    count(DISTINCT user_email) FILTER (WHERE age_day = 0),
    {", ".join(f"count(*) FILTER (WHERE {_P_FAILED_LOGIN} AND age_day = {k})"
               for k in range(queries.BASELINE_DAYS + 1))}
FROM (SELECT timestamp, action, status, user_email,
             CASE WHEN timestamp <= %(now)s THEN {_P_AGE} ELSE -1 END AS age_day
      FROM audit_events
      WHERE org_id = %(org)s AND timestamp >= %(lo)s AND timestamp < %(hi)s) AS recent"""


class Postgres(_Baseline):
    name = "postgres"
    FAILED = [f"action = '{LOGIN}'", "status = 'failure'"]
    BY_USER = "user_email = %(user)s"

    def __init__(self, pg, s: Setup):
        self.pg, self.s = pg, s
        self.conn = psycopg.connect(pg.dsn, autocommit=True)

    def close(self):
        self.conn.close()

    def _page(self, conds: list[str], params: dict, cursor=None) -> list:
        params = {"org": ORG, "limit": PER_PAGE, **params}
        conds = ["org_id = %(org)s", *conds]
        if cursor:
            conds.append("(timestamp, event_id) < (%(cur_ts)s, %(cur_id)s)")
            params.update(cur_ts=_dt(cursor.ts_us), cur_id=cursor.event_id)
        rows = self.conn.execute(f"SELECT * FROM audit_events WHERE {' AND '.join(conds)} "
                                 "ORDER BY timestamp DESC, event_id DESC LIMIT %(limit)s", params).fetchall()
        return [(str(r[0]), r[2].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")) for r in rows]

    def cards(self):
        s = self.s
        total = self.conn.execute("SELECT count(*) FROM audit_events WHERE org_id = %s", (ORG,)).fetchone()[0]
        lo = min(s.now - timedelta(days=queries.BASELINE_DAYS + 1), s.today_lo)
        hi = max(s.now + timedelta(microseconds=1), s.today_hi)
        row = self.conn.execute(_P_CARDS, {"org": ORG, "now": s.now, "lo": lo, "hi": hi,
                                           "today_lo": s.today_lo, "today_hi": s.today_hi}).fetchone()
        return s.cards_from_days(row[0], row[1], row[2], list(row[3:]), total)

    def chart(self):
        s = self.s
        rows = self.conn.execute(
            "SELECT floor((extract(epoch FROM timestamp) * 1000000 - %(origin)s) / %(step)s) AS b, "
            f"count(*), count(*) FILTER (WHERE {_P_FAILED_LOGIN}) FROM audit_events "
            "WHERE org_id = %(org)s AND timestamp >= %(since)s AND timestamp < %(end)s GROUP BY b ORDER BY b",
            {"org": ORG, "origin": s.origin, "step": s.step_us, "since": _dt(s.since_us),
             "end": _dt(s.end_us)}).fetchall()
        return s.series(rows)

    def drop_caches(self):
        self.conn.close()
        self.pg.restart()
        self.conn = psycopg.connect(self.pg.dsn, autocommit=True)


def _dt(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def drop_os_cache() -> bool:
    """Drop the OS page cache (needs root); whether it was dropped."""
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return True
    except OSError:
        return False


# -- timing ------------------------------------------------------------------------


def _ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def percentiles(ms: list[float]) -> dict:
    ms = sorted(ms)
    p95 = ms[min(len(ms) - 1, max(0, round(0.95 * len(ms)) - 1))]
    return {"p50_ms": round(statistics.median(ms), 2), "p95_ms": round(p95, 2), "n": len(ms)}


def check_equal(systems) -> dict:
    """Run every part once on every system; raise on a difference. Row counts per part."""
    counts = {}
    for part in PARTS:
        results = {s.name: getattr(s, part)() for s in systems}
        first = results[systems[0].name]
        for name, r in results.items():
            if r != first:
                raise AssertionError(f"{part}: {name} differs from {systems[0].name}:\n"
                                     f"  {systems[0].name}: {str(first)[:600]}\n  {name}: {str(r)[:600]}")
        counts[part] = len(first) if isinstance(first, list) else sum(first.get("events", [])) or 1
    return counts


#: A slow system gets fewer warm calls: at least MIN_CALLS, then until ``repeat``
#: calls or BUDGET_S seconds per part (the count is in the figures, ``n``).
MIN_CALLS = 5
BUDGET_S = 20.0


def _repeat(fn, repeat: int) -> list[float]:
    out, start = [], time.perf_counter()
    while len(out) < repeat and (len(out) < MIN_CALLS or time.perf_counter() - start < BUDGET_S):
        out.append(fn())
    return out


def time_system(system, repeat: int, cold: int) -> dict:
    warm = {}
    for part in PARTS:
        fn = getattr(system, part)
        fn()
        warm[part] = _repeat(lambda fn=fn: _ms(fn), repeat)
    composite = _repeat(lambda: sum(_ms(getattr(system, part)) for part in COMPOSITE), repeat)
    cold_parts = {part: [] for part in COMPOSITE}
    cold_total = []
    for _ in range(cold):
        system.drop_caches()
        drop_os_cache()
        times = {part: _ms(getattr(system, part)) for part in COMPOSITE}
        for part, ms in times.items():
            cold_parts[part].append(ms)
        cold_total.append(sum(times.values()))
    return {
        "warm": {"composite": percentiles(composite), **{p: percentiles(v) for p, v in warm.items()}},
        "cold": {"composite": percentiles(cold_total), **{p: percentiles(v) for p, v in cold_parts.items()}},
    }


def run_p2(run) -> dict:
    ds = run.dataset()
    s = Setup(ds.client, ds.end_us)
    pg = Postgres(ds.pg, s)
    try:
        systems = [Typed(ds.client, s), Otel(ds.client, s), pg]
        rows = check_equal(systems)
        timings = {}
        for system in systems:
            timings[system.name] = time_system(system, run.params["repeat"], run.params["cold"])
    finally:
        pg.close()
    ratios = {}
    for base in ("otel_logs", "postgres"):
        ratios[base] = {
            f"{temp}_{part}_p95": round(timings[base][temp][part]["p95_ms"]
                                        / max(timings["typed"][temp][part]["p95_ms"], 1e-6), 2)
            for temp in ("warm", "cold") for part in ("composite", *COMPOSITE)
            if part in timings[base][temp]}
    org_events = ds.client.query(f"SELECT count() FROM {EVENTS_TABLE} WHERE org_id = {{o:String}}",
                                 parameters={"o": ORG}).result_rows[0][0]
    typed_warm = timings["typed"]["warm"]
    return {
        "events": ds.events, "org": ORG, "org_events": org_events, "user": s.user,
        "results_equal": True, "rows_per_part": rows, "repeat": run.params["repeat"],
        "cold_runs": run.params["cold"], "os_cache_dropped": drop_os_cache(),
        "timings": timings, "speedup_vs": ratios, "load": ds.load_info,
        "targets": {
            "composite_p95_le_50ms": typed_warm["composite"]["p95_ms"] <= 50,
            "first_page_p95_le_10ms": typed_warm["page_filtered"]["p95_ms"] <= 10,
            "composite_10x_otel": ratios["otel_logs"]["warm_composite_p95"] >= 10,
            "composite_5x_postgres": ratios["postgres"]["warm_composite_p95"] >= 5,
        },
    }


# -- P3 --------------------------------------------------------------------------------


def run_p3(run) -> dict:
    ds = run.dataset()

    def ch_parts(database, table):
        rows, comp, uncomp, disk, parts = ds.client.query(
            "SELECT sum(rows), sum(data_compressed_bytes), sum(data_uncompressed_bytes), "
            "sum(bytes_on_disk), count() FROM system.parts WHERE database = {d:String} "
            "AND table = {t:String} AND active", parameters={"d": database, "t": table}).result_rows[0]
        return {"rows": rows, "parts": parts, "compressed_bytes": comp, "bytes_on_disk": disk,
                "bytes_per_event": round(disk / rows, 1), "compressed_bytes_per_event": round(comp / rows, 1),
                "uncompressed_bytes_per_event": round(uncomp / rows, 1)}

    typed = ch_parts("audit", "audit_events")
    typed["columns"] = {name: round(b / typed["rows"], 2) for name, b in ds.client.query(
        "SELECT name, data_compressed_bytes FROM system.columns WHERE database = 'audit' "
        "AND table = 'audit_events' ORDER BY data_compressed_bytes DESC").result_rows}
    otel = ch_parts("otel", "otel_logs")
    with psycopg.connect(ds.pg.dsn) as conn:
        total, heap, idx, n = conn.execute(
            "SELECT pg_total_relation_size('audit_events'), pg_table_size('audit_events'), "
            "pg_indexes_size('audit_events'), count(*) FROM audit_events").fetchone()
    pg = {"rows": n, "bytes_total": total, "bytes_table": heap, "bytes_indexes": idx,
          "bytes_per_event": round(total / n, 1), "table_bytes_per_event": round(heap / n, 1),
          "indexes": list(PG_INDEXES)}
    b = typed["bytes_per_event"]
    return {
        "events": ds.events, "typed": typed, "otel_logs": otel, "postgres": pg,
        "smaller_than": {"otel_logs": round(otel["bytes_per_event"] / b, 2),
                         "postgres": round(pg["bytes_per_event"] / b, 2)},
        "targets": {"le_20_bytes": b <= 20, "2x_smaller_than_otel": otel["bytes_per_event"] / b >= 2,
                    "15x_smaller_than_postgres": pg["bytes_per_event"] / b >= 15},
    }

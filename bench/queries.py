"""Query benchmark: the audit page's query layer over N events in embedded ClickHouse.

Opens a fresh temp chDB store, migrates it, and fills ``audit.audit_events``
directly with N realistic events in ``INSERT ... SELECT ... FROM numbers()``
chunks of 1M rows. Every value is a deterministic ClickHouse expression of
the row number and ``--seed`` (cityHash64), except the timestamps, which are
spread uniformly over the year up to now:

* 50 orgs, Zipf-ish: org index ``floor(50 * u**3)``, so ``org-000`` holds
  ~27% of the events; ``max(3, 400 // (index + 1))`` users per org;
* catalog actions at fixed weights (``auth.login`` ~40%, API access ~15%,
  logout ~8%, the rest spread), ~2% of logins and ~1% of the other actions
  that can fail fail, with a reason;
* IPv4-mapped IPs (a few per user), UUID v4-shaped event ids, resource
  type/id where the catalog needs them, changes on updates, details, trace
  and span ids: every column is filled.

Then, on the largest org, each query is called once to warm up and then
``--repeat`` times; the figure is the wall time of the Python call (query
layer + clickhouse-connect + ClickHouse work), p50 and p95 in ms:

* ``summary``: :func:`queries.summary` (the cards);
* ``page_first``: the first page of :func:`queries.list_events`, no filter;
* ``page_failed_logins``: first page with ``action=auth.login&status=failure``;
* ``page_deep``: the page after following 50 cursors (no filter);
* ``user_search``: first page with ``user=<exact email>``;

plus export throughput (rows/s of :func:`queries.iter_export` CSV over the
org's events, capped by ``--export-cap``), the process RSS (chDB runs in
this process: VmRSS after generating, sampled after every timed call, and
at the end; VmHWM, the process peak, is the generation's) and the table's
compressed bytes per row (``system.parts``).

    .venv/bin/python bench/queries.py --events 1000000 --json
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time

from upmetr_audit.collector import store as store_mod
from upmetr_audit.collector.schema import EVENT_COLUMNS_SQL, EVENTS_TABLE
from upmetr_audit.shipper.catalog import ACTIONS
from upmetr_audit.web import queries

CHUNK = 1_000_000
N_ORGS = 50
DEEP_PAGES = 50
YEAR_US = 365 * 86_400 * 1_000_000
#: Relative frequency of each action (others: 1).
WEIGHTS = {"auth.login": 120, "system.api_access": 45, "auth.logout": 24, "mfa.verify": 12,
           "monitor.update": 6, "incident.acknowledge": 6, "incident.resolve": 6,
           "settings.update": 3, "compute.instance_reboot": 3, "alert_rule.update": 3}
USER_AGENTS = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 Safari/605.1.15",
               "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0.0.0 Safari/537.36",
               "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
               "upmetr-cli/2.4.1 python-requests/2.32.3")
LARGEST_ORG = "org-000"
TARGET_P95_MS = 50
TARGET_RSS_MB = 600


def _sql_list(values) -> str:
    return "[" + ", ".join("'" + v.replace("'", "\\'") + "'" for v in values) + "]"


def insert_sql(seed: int, now_us: int) -> str:
    """``INSERT ... SELECT`` of rows ``{start}..{start}+{count}`` (formatted in later)."""
    bag = [a for a in ACTIONS for _ in range(WEIGHTS.get(a, 1))]
    ids = list(ACTIONS)
    rtypes = [ACTIONS[a].resource_type or "" for a in ids]
    can_fail = [a for a in ids if ACTIONS[a].can_fail]

    def h(k: int) -> str:  # an independent 64-bit hash of the row, per k
        return f"cityHash64(number, {seed}, {k})"

    def hx(k: int) -> str:  # the same as 16 lowercase hex digits
        return f"leftPad(lower(hex({h(k)})), 16, '0')"

    return f"""
INSERT INTO {EVENTS_TABLE} ({", ".join(EVENT_COLUMNS_SQL)})
SELECT
    toUUID(concat(substring(hx, 1, 8), '-', substring(hx, 9, 4), '-4', substring(hx, 14, 3), '-',
                  arrayElement(['8', '9', 'a', 'b'], 1 + {h(1)} % 4), substring(hx, 18, 3), '-',
                  substring(hx, 21, 12))) AS event_id,
    concat('org-', leftPad(toString(org_i), 3, '0')) AS org_id,
    fromUnixTimestamp64Micro(toInt64({now_us} - {h(3)} % {YEAR_US}), 'UTC') AS timestamp,
    timestamp + toIntervalMillisecond(20 + {h(4)} % 900) AS received_at,
    splitByChar('.', action)[1] AS category,
    arrayElement({_sql_list(bag)}, 1 + {h(5)} % {len(bag)}) AS action,
    CAST(if(has({_sql_list(can_fail)}, action)
            AND {h(6)} % 1000 < if(action = 'auth.login', 20, 10), 'failure', 'success'),
         'Enum8(\\'success\\' = 1, \\'failure\\' = 2)') AS status,
    concat('user', toString(user_i), '@', org_id, '.example.com') AS user_email,
    concat('u-', toString(org_i), '-', toString(user_i)) AS user_id,
    transform(action, {_sql_list(ids)}, {_sql_list(rtypes)}, '') AS resource_type,
    if(resource_type = '', '', concat(resource_type, '-', toString(1 + {h(7)} % 200))) AS resource_id,
    toIPv6(toIPv4(toUInt32(167772160 + cityHash64({seed}, org_i, user_i, {h(8)} % 3) % 16777216)))
        AS ip,
    arrayElement({_sql_list(USER_AGENTS)}, 1 + cityHash64({seed}, org_i, user_i) % {len(USER_AGENTS)})
        AS user_agent,
    concat('s-', lower(hex(cityHash64({seed}, org_i, user_i, intDiv(toUnixTimestamp(timestamp), 86400)))))
        AS session_id,
    if(action = 'system.api_access', 'api_key', 'user') AS actor_type,
    'upmetr-api' AS service_name,
    if(status = 'failure', if(action = 'auth.login', 'invalid password', 'provider error'), '') AS reason,
    if(endsWith(action, 'update'),
       concat('{{"name": {{"before": "n', toString({h(9)} % 100), '", "after": "n',
              toString({h(10)} % 100), '"}}}}'), '') AS changes,
    map('http.method', if(category IN ('auth', 'mfa', 'magic_link'), 'POST', 'PUT'),
        'http.route', concat('/api/', replaceAll(action, '.', '/'))) AS details,
    {hx(11)} || {hx(12)} AS trace_id,
    {hx(13)} AS span_id
FROM (
    SELECT number, {hx(2)} || {hx(14)} AS hx,
           toUInt32(floor({N_ORGS} * pow(({h(15)} % 1000000) / 1000000., 3))) AS org_i,
           toUInt32(cityHash64(number, {seed}, 16) % greatest(3, intDiv(400, org_i + 1))) AS user_i
    FROM numbers({{start}}, {{count}})
)"""


def generate(client, events: int, seed: int) -> None:
    sql = insert_sql(seed, time.time_ns() // 1000)
    for start in range(0, events, CHUNK):
        client.command(sql.replace("{start}", str(start)).replace("{count}", str(min(CHUNK, events - start))))


def rss_mb() -> tuple[float, float]:
    with open("/proc/self/status") as f:
        kb = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", f.read(), re.M))
    return int(kb["VmRSS"]) / 1024, int(kb["VmHWM"]) / 1024


#: VmRSS sampled after every timed call (VmHWM still holds the generation's peak).
_rss_samples: list[float] = []


def timed(fn, repeat: int) -> dict:
    fn()  # warm-up
    ms = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1000)
        _rss_samples.append(rss_mb()[0])
    ms.sort()
    p95 = ms[min(len(ms) - 1, max(0, round(0.95 * len(ms)) - 1))]
    return {"p50_ms": round(statistics.median(ms), 2), "p95_ms": round(p95, 2),
            "max_ms": round(ms[-1], 2), "n": repeat}


def export_rows(client, org: str, cap: int) -> int:
    """CSV rows exported (header excluded), stopping once ``cap`` are out."""
    rows = -1
    it = queries.iter_export(client, org, queries.Filters(), "csv")
    for chunk in it:
        rows += chunk.count(b"\n")  # the generated values hold no newline
        if rows >= cap:
            break
    it.close()
    return rows


def run(args) -> dict:
    tmp = tempfile.mkdtemp(prefix="upmetr-bench-queries-")
    store = None
    try:
        store = store_mod.open_store(f"chdb://{tmp}/db")
        client = store.client
        store_mod.migrate(client)
        t0 = time.perf_counter()
        generate(client, args.events, args.seed)
        gen_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if args.optimize:
            client.command(f"OPTIMIZE TABLE {EVENTS_TABLE} FINAL")
        optimize_s = time.perf_counter() - t0
        stored = client.query(f"SELECT count() FROM {EVENTS_TABLE}").result_rows[0][0]
        org_rows = client.query(f"SELECT count() FROM {EVENTS_TABLE} WHERE org_id = {{o:String}}",
                                parameters={"o": LARGEST_ORG}).result_rows[0][0]
        parts, comp, uncomp = client.query(
            "SELECT count(), sum(data_compressed_bytes), sum(data_uncompressed_bytes) FROM system.parts "
            "WHERE database = 'audit' AND table = 'audit_events' AND active").result_rows[0]
        gen_rss, gen_peak = rss_mb()

        org = LARGEST_ORG
        user = client.query(
            f"SELECT user_email FROM {EVENTS_TABLE} WHERE org_id = {{o:String}} "
            "ORDER BY timestamp DESC LIMIT 1", parameters={"o": org}).result_rows[0][0]
        no_filter = queries.parse_filters({})
        failed = queries.parse_filters({"action": "auth.login", "status": "failure"})
        by_user = queries.parse_filters({"user": user})
        cursor, depth = None, 0
        while depth < DEEP_PAGES:
            page = queries.list_events(client, org, queries.parse_filters({"cursor": cursor or ""}))
            depth += 1
            cursor = page.next_cursor
            if cursor is None:
                break
        deep = queries.parse_filters({"cursor": cursor or ""})
        results = {
            "summary": timed(lambda: queries.summary(client, org), args.repeat),
            "page_first": timed(lambda: queries.list_events(client, org, no_filter), args.repeat),
            "page_failed_logins": timed(lambda: queries.list_events(client, org, failed), args.repeat),
            "page_deep": timed(lambda: queries.list_events(client, org, deep), args.repeat),
            "user_search": timed(lambda: queries.list_events(client, org, by_user), args.repeat),
        }
        results["page_deep"]["depth"] = depth
        t0 = time.perf_counter()
        exported = export_rows(client, org, args.export_cap)
        export_s = time.perf_counter() - t0
        rss, peak = rss_mb()
        return {
            "events": args.events, "stored": stored, "seed": args.seed, "repeat": args.repeat,
            "generate_s": round(gen_s, 1), "optimized": args.optimize,
            "optimize_s": round(optimize_s, 1), "largest_org": org, "largest_org_events": org_rows,
            "parts": parts, "bytes_per_row": round(comp / max(stored, 1), 1),
            "uncompressed_bytes_per_row": round(uncomp / max(stored, 1), 1),
            "queries": results,
            "export_rows": exported, "export_s": round(export_s, 2),
            "export_rows_per_s": round(exported / export_s) if export_s else 0,
            "rss_after_generate_mb": round(gen_rss), "peak_rss_generate_mb": round(gen_peak),
            "rss_mb": round(rss), "peak_rss_mb": round(peak),
            "rss_max_during_queries_mb": round(max(_rss_samples)),
            "target_p95_ms": TARGET_P95_MS, "target_rss_mb": TARGET_RSS_MB,
            "summary_p95_ok": results["summary"]["p95_ms"] <= TARGET_P95_MS,
            "page_first_p95_ok": results["page_first"]["p95_ms"] <= TARGET_P95_MS,
            "rss_ok": max(rss, *_rss_samples) <= TARGET_RSS_MB,
        }
    finally:
        if store is not None:
            store.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--events", type=int, default=1_000_000, help="events generated into the store")
    p.add_argument("--seed", type=int, default=1, help="seed of the generated events")
    p.add_argument("--repeat", type=int, default=30, help="timed calls per query (after one warm-up)")
    p.add_argument("--export-cap", type=int, default=200_000, help="stop the export after this many rows")
    p.add_argument("--optimize", action="store_true",
                   help="OPTIMIZE TABLE ... FINAL after generating (one part per month, as after merges)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = p.parse_args()
    if args.events < 1 or args.repeat < 1 or args.export_cap < 1:
        p.error("--events, --repeat and --export-cap must be positive")
    r = run(args)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{r['stored']:,} events generated in {r['generate_s']} s ({r['parts']} parts, "
          f"{r['bytes_per_row']} B/row compressed); largest org {r['largest_org']}: "
          f"{r['largest_org_events']:,} events")
    for name, q in r["queries"].items():
        print(f"  {name:20s} p50 {q['p50_ms']:8.2f} ms   p95 {q['p95_ms']:8.2f} ms   "
              f"max {q['max_ms']:8.2f} ms")
    print(f"  export csv           {r['export_rows']:,} rows in {r['export_s']} s: "
          f"{r['export_rows_per_s']:,} rows/s")
    print(f"  RSS {r['rss_mb']} MB after the runs (max sampled during the queries "
          f"{r['rss_max_during_queries_mb']} MB; after generating {r['rss_after_generate_mb']} MB, "
          f"process peak {r['peak_rss_mb']} MB)")
    print(f"  targets: summary p95 ≤ {TARGET_P95_MS} ms {'met' if r['summary_p95_ok'] else 'MISSED'}, "
          f"first page p95 {'met' if r['page_first_p95_ok'] else 'MISSED'}, "
          f"RSS ≤ {TARGET_RSS_MB} MB {'met' if r['rss_ok'] else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Seal verification throughput on the embedded store (issue 8, P4).

Generates N audit events over D days for 50 orgs straight into a fresh chDB
(``INSERT ... SELECT``; the org sizes are skewed, every org active every
day), seals every hourly window, then times ``verify``: leaf hashes and
Merkle roots recomputed in ClickHouse, per-window roots streamed to Python,
every seal's hash, chain link and Ed25519 signature checked, and the digest
files compared. Reports events verified per second of wall clock.

    .venv/bin/python bench/verify.py --events 10000000 --days 14 [--json]

``run(run)`` is the entry of ``python -m bench`` (P4).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time

from upmetr_audit.collector import keys, sealing
from upmetr_audit.collector import store as store_mod
from upmetr_audit.collector import verify as verify_mod
from upmetr_audit.collector.schema import EVENT_COLUMNS_SQL, EVENTS_TABLE

HOUR_US = 3_600_000_000
N_ORGS = 50
CHUNK = 1_000_000
TARGET_EVENTS_PER_S = 1_000_000


def insert_sql(seed: int, start_us: int, span_us: int) -> str:
    def h(k: int) -> str:
        return f"cityHash64(number, {seed}, {k})"

    cols = ", ".join(EVENT_COLUMNS_SQL)
    return f"""
INSERT INTO {EVENTS_TABLE} ({cols})
SELECT
    generateUUIDv4(number) AS event_id,
    concat('org-', leftPad(toString(toUInt32(floor({N_ORGS} * pow(({h(1)} % 1000000) / 1e6, 2)))), 3, '0'))
        AS org_id,
    received_at - toIntervalMillisecond(5 + {h(2)} % 500) AS timestamp,
    fromUnixTimestamp64Micro(toInt64({start_us} + {h(3)} % {span_us}), 'UTC') AS received_at,
    splitByChar('.', action)[1] AS category,
    arrayElement(['auth.login', 'auth.login', 'auth.login', 'system.api_access', 'auth.logout',
                  'monitor.update', 'settings.update', 'mfa.verify'], 1 + {h(4)} % 8) AS action,
    CAST(if({h(5)} % 50 = 0, 'failure', 'success'), 'Enum8(\\'success\\' = 1, \\'failure\\' = 2)')
        AS status,
    concat('user', toString({h(6)} % 40), '@', org_id, '.example.com') AS user_email,
    concat('u-', toString({h(6)} % 40)) AS user_id,
    if(action = 'monitor.update', 'monitor', '') AS resource_type,
    if(action = 'monitor.update', concat('monitor-', toString({h(7)} % 200)), '') AS resource_id,
    toIPv6(toIPv4(toUInt32(167772160 + {h(8)} % 16777216))) AS ip,
    'Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0' AS user_agent,
    concat('s-', lower(hex({h(9)} % 100000))) AS session_id,
    'user' AS actor_type,
    'upmetr-api' AS service_name,
    if(status = 'failure', 'invalid password', '') AS reason,
    if(endsWith(action, 'update'), '{{"name": {{"before": "a", "after": "b"}}}}', '') AS changes,
    map('http.method', 'POST', 'http.route', concat('/api/', replaceAll(action, '.', '/'))) AS details,
    lower(hex({h(10)})) AS trace_id,
    lower(hex({h(11)})) AS span_id
FROM numbers({{start}}, {{count}})"""


def measure(events: int, days: float, seed: int = 1, tmp: str | None = None) -> dict:
    own_tmp = tmp is None
    tmp = tmp or tempfile.mkdtemp(prefix="upmetr-bench-verify-")
    store = None
    try:
        store = store_mod.open_store(f"chdb://{tmp}/verify-db")
        client = store.client
        store_mod.migrate(client)
        span = int(days * 24) * HOUR_US
        start = (time.time_ns() // 1000 - span) // HOUR_US * HOUR_US - HOUR_US
        now = start + span + HOUR_US
        t0 = time.perf_counter()
        sql = insert_sql(seed, start, span)
        for s in range(0, events, CHUNK):
            client.command(sql.replace("{start}", str(s)).replace("{count}", str(min(CHUNK, events - s))))
        client.command(f"OPTIMIZE TABLE {EVENTS_TABLE} FINAL")
        generate_s = time.perf_counter() - t0
        ring = keys.load_or_generate(f"{tmp}/keys", start)
        t0 = time.perf_counter()
        sealed = sealing.seal_once(client, ring, f"{tmp}/digests", now)
        seal_s = time.perf_counter() - t0
        public = keys.load(f"{tmp}/keys", private=False)
        t0 = time.perf_counter()
        result = verify_mod.verify(client, public, f"{tmp}/digests", now)
        verify_s = time.perf_counter() - t0
        if not result.ok or result.events_checked != events:
            raise RuntimeError(f"verify did not pass cleanly: {result.summary()}")
        return {
            "events": events, "days": days, "orgs": N_ORGS, "windows": len(sealed.seals),
            "generate_s": round(generate_s, 1), "seal_s": round(seal_s, 1),
            "seal_events_per_s": round(events / seal_s),
            "verify_s": round(verify_s, 2), "verify_events_per_s": round(events / verify_s),
            "verify_windows_per_s": round(len(sealed.seals) / verify_s),
            "target_events_per_s": TARGET_EVENTS_PER_S,
            "target_met": events / verify_s >= TARGET_EVENTS_PER_S,
        }
    finally:
        if store is not None:
            store.close()
        if own_tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def run(run) -> dict:
    """Entry of ``python -m bench``: the size's event count over 14 days (one
    day at the tiny size, so the smoke run stays short)."""
    events = run.params["events"]
    return measure(events, 14 if events >= 1_000_000 else 1, run.seed, tmp=tempfile.mkdtemp(dir=run.tmp))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--days", type=float, default=14.0, help="span of received_at")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = p.parse_args()
    if args.events < 1 or args.days < 1 / 24:
        p.error("--events must be positive and --days at least one hour")
    r = measure(args.events, args.days, args.seed)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['events']:,} events, {r['windows']:,} windows: sealed in {r['seal_s']} s; "
              f"verified in {r['verify_s']} s = {r['verify_events_per_s']:,} events/s "
              f"(target {TARGET_EVENTS_PER_S:,}: {'met' if r['target_met'] else 'missed'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Seal verification throughput on the embedded store (issue 8, P4).

Generates N audit events over D days for 50 orgs straight into a fresh chDB
(``INSERT ... SELECT``; the org sizes are skewed, every org active every
day), seals every hourly window, then times ``verify``: leaf hashes and
Merkle roots recomputed in ClickHouse, per-window roots streamed to Python,
every seal's hash, chain link and Ed25519 signature checked, and the digest
files compared. Reports events verified per second of wall clock.
``--compare N`` then seals the same events again with the older leaf version
N (1: text leaves; 2: binary leaves with the text personal commitment) and
times verify of those seals too, in the same run.

    .venv/bin/python bench/verify.py --events 10000000 --days 14 [--compare 2] [--json]

``run(run)`` is the entry of ``python -m bench`` (P4).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

from upmetr_audit.collector import keys, leafhash, sealing
from upmetr_audit.collector import store as store_mod
from upmetr_audit.collector import verify as verify_mod
from upmetr_audit.collector.schema import EVENT_COLUMNS_SQL, EVENTS_TABLE, SEAL_LEAVES_TABLE, SEALS_TABLE

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


def _seal_and_verify(client, tmp: str, ring, start: int, now: int, events: int, version: int) -> dict:
    digest_dir = f"{tmp}/digests-v{version}"
    t0 = time.perf_counter()
    sealed = sealing.seal_once(client, ring, digest_dir, now, leaf_version=version)
    seal_s = time.perf_counter() - t0
    public = keys.load(f"{tmp}/keys", private=False)
    t0, cpu0 = time.perf_counter(), os.times()
    result = verify_mod.verify(client, public, digest_dir, now)
    verify_s, cpu1 = time.perf_counter() - t0, os.times()
    if not result.ok or result.events_checked != events:
        raise RuntimeError(f"verify did not pass cleanly: {result.summary()}")
    return {"windows": len(sealed.seals), "seal_s": round(seal_s, 1),
            "verify_s": round(verify_s, 2),
            # CPU of the whole process (ClickHouse threads included) during verify
            "verify_cpu_s": round(cpu1.user + cpu1.system - cpu0.user - cpu0.system, 2)}


def measure(events: int, days: float, seed: int = 1, tmp: str | None = None,
            compare: int | None = None) -> dict:
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
        cur = _seal_and_verify(client, tmp, ring, start, now, events, leafhash.LEAF_VERSION)
        verify_s = cur["verify_s"]
        out = {
            "events": events, "days": days, "orgs": N_ORGS, "windows": cur["windows"],
            "leaf_version": leafhash.LEAF_VERSION,
            "generate_s": round(generate_s, 1), "seal_s": cur["seal_s"],
            "seal_events_per_s": round(events / cur["seal_s"]),
            "verify_s": verify_s, "verify_cpu_s": cur["verify_cpu_s"],
            "verify_events_per_s": round(events / verify_s),
            "verify_windows_per_s": round(cur["windows"] / verify_s),
            "target_events_per_s": TARGET_EVENTS_PER_S,
            "target_met": events / verify_s >= TARGET_EVENTS_PER_S,
        }
        if compare:  # the same events, sealed again with an older leaf version
            for table in (SEALS_TABLE, SEAL_LEAVES_TABLE):
                client.command(f"TRUNCATE TABLE {table}")
            old = _seal_and_verify(client, tmp, ring, start, now, events, compare)
            out["compare"] = {**old, "leaf_version": compare,
                              "verify_events_per_s": round(events / old["verify_s"])}
            out["speedup"] = round(old["verify_s"] / verify_s, 2)
        return out
    finally:
        if store is not None:
            store.close()
        if own_tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def run(run) -> dict:
    """Entry of ``python -m bench``: the size's event count over 14 days (one
    day at the tiny size, so the smoke run stays short). It needs its own
    chDB folder, and chDB allows one per process (the harness already holds
    the data set's), so it runs in a child process."""
    import subprocess
    import sys

    events = run.params["events"]
    days = 14 if events >= 1_000_000 else 1
    done = subprocess.run(
        [sys.executable, "-m", "bench.verify", "--events", str(events), "--days", str(days),
         "--seed", str(run.seed), "--tmp", tempfile.mkdtemp(dir=run.tmp), "--json"],
        capture_output=True, text=True, check=False,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if done.returncode != 0:
        raise RuntimeError(f"bench.verify failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--days", type=float, default=14.0, help="span of received_at")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--compare", type=int, choices=[v for v in leafhash.LEAF_VERSIONS
                                                   if v != leafhash.LEAF_VERSION],
                   help="also seal with this older leaf version and time its verify (same events, same run)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--tmp", default=None, help="folder for the store (default: a new temp folder, removed)")
    args = p.parse_args()
    if args.events < 1 or args.days < 1 / 24:
        p.error("--events must be positive and --days at least one hour")
    r = measure(args.events, args.days, args.seed, compare=args.compare, tmp=args.tmp)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['events']:,} events, {r['windows']:,} windows: sealed in {r['seal_s']} s; "
              f"verified in {r['verify_s']} s = {r['verify_events_per_s']:,} events/s "
              f"(target {TARGET_EVENTS_PER_S:,}: {'met' if r['target_met'] else 'missed'})")
        if "compare" in r:
            old = r["compare"]
            print(f"leaf version {old['leaf_version']}: verified in {old['verify_s']} s = "
                  f"{old['verify_events_per_s']:,} events/s; v{r['leaf_version']} is "
                  f"{r['speedup']}x faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One detector run over the benchmark data set (issue 8, P7; issue 5 §6).

The harness's data set (``Run.dataset()``: Zipf orgs, 50 of them, a year of
timestamps, bursts, ~2% failed logins) is loaded into chDB; the detector
then evaluates every rule at ``repeat`` instants spread over the last days
(each run: 6 rule queries across all orgs, the success-after query, the
open-alert reads, and the writes of whatever changed). Reported: wall time
per run (p50/p95/max, the first run separately as "cold"), per rule, and
side by side a baseline that reads the whole table once — ``SELECT count()
FILTER failed auth`` — to show the rules read a bounded slice through the
sort key instead of scanning.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta

from upmetr_audit.collector import rules as rules_mod
from upmetr_audit.collector.detector import Detector
from upmetr_audit.collector.schema import ALERTS_TABLE, EVENTS_TABLE

TARGET_S = 1.0


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def run(run) -> dict:
    ds = run.dataset()
    end = datetime.fromtimestamp(ds.end_us / 1e6, UTC)
    return measure(ds.client, end, max(3, int(run.params.get("repeat", 10))))


def measure(client, end: datetime, repeat: int) -> dict:
    client.command(f"TRUNCATE TABLE IF EXISTS {ALERTS_TABLE}")
    det = Detector(client)

    times, changes = [], 0
    for i in range(repeat):
        at = end - timedelta(minutes=13 * (repeat - i))
        t0 = time.perf_counter()
        result = det.run_once(at)
        times.append(time.perf_counter() - t0)
        changes += len(result.changes)

    per_rule = {}
    for rule_id in rules_mod.DEFAULT_RULES:
        sql = rules_mod.rule_sql(det.rules, rule_id, "{end:DateTime64(6, 'UTC')}")
        samples = []
        for i in range(repeat):
            t0 = time.perf_counter()
            client.query(sql, parameters={"end": end - timedelta(minutes=7 * i)})
            samples.append(time.perf_counter() - t0)
        per_rule[rule_id] = round(statistics.median(samples) * 1000, 1)

    scans = []
    for _ in range(3):
        t0 = time.perf_counter()
        client.command(f"SELECT count() FROM {EVENTS_TABLE} WHERE status = 'failure' "
                       "AND action IN ('auth.login', 'mfa.verify', 'magic_link.verify')")
        scans.append(time.perf_counter() - t0)
    scan = statistics.median(scans)
    warm = times[1:]
    events = int(client.command(f"SELECT count() FROM {EVENTS_TABLE}"))
    orgs = int(client.command(f"SELECT uniqExact(org_id) FROM {EVENTS_TABLE}"))
    p95 = _pct(warm, 0.95)
    return {
        "events": events, "orgs": orgs, "runs": repeat, "alert_changes": changes,
        "cold_run_ms": round(times[0] * 1000, 1),
        "run_p50_ms": round(statistics.median(warm) * 1000, 1),
        "run_p95_ms": round(p95 * 1000, 1),
        "run_max_ms": round(max(warm) * 1000, 1),
        "rule_median_ms": per_rule,
        "full_scan_baseline_ms": round(scan * 1000, 1),
        "run_p50_vs_full_scan": round(statistics.median(warm) / scan, 3),
        "target_met": p95 <= TARGET_S,
    }


def main() -> int:
    """Standalone: N events over a year for 50 skewed orgs, generated inside chDB."""
    from upmetr_audit.collector import store as store_mod

    from . import verify

    p = argparse.ArgumentParser(description="P7: one detector run over N events, 50 orgs.")
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-detector-")
    store = store_mod.open_store(f"chdb://{tmp}/chdb")
    try:
        store_mod.migrate(store.client)
        span_us = 365 * 24 * verify.HOUR_US
        end_us = int(time.time() * 1e6) // verify.HOUR_US * verify.HOUR_US
        sql = verify.insert_sql(args.seed, end_us - span_us, span_us)
        t0 = time.perf_counter()
        for s in range(0, args.events, verify.CHUNK):
            store.client.command(sql.replace("{start}", str(s))
                                 .replace("{count}", str(min(verify.CHUNK, args.events - s))))
        store.client.command(f"OPTIMIZE TABLE {EVENTS_TABLE} FINAL")
        result = {"load_s": round(time.perf_counter() - t0, 1),
                  **measure(store.client, datetime.fromtimestamp(end_us / 1e6, UTC), args.repeat)}
        print(json.dumps(result, indent=1))
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

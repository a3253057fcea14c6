"""The benchmarks run at tiny size, so the harness cannot rot. (Their figures
are not asserted: speed lives in docs/benchmarks.md, not in unit tests.)"""

import json
import os
import subprocess
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def run(script, *args):
    r = subprocess.run([sys.executable, os.path.join(BENCH, script), *args, "--json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_ingest_benchmark_commits_every_event():
    result = run("ingest.py", "--events", "2000", "--batch", "500", "--connections", "2")
    assert result["committed"] == result["events"] == 2000


def test_shipper_benchmark_delivers_every_event_in_our_modes():
    results = run("shipper.py", "--events", "300", "--threads", "1")
    assert {r["mode"] for r in results} == {"stock", "durable", "fast"}
    assert all(r["delivered"] == 300 for r in results if r["mode"] != "stock")


def test_query_benchmark_reports_every_measurement():
    result = run("queries.py", "--events", "20000", "--repeat", "3")
    assert result["stored"] == 20000
    assert set(result["queries"]) == {"summary", "page_first", "page_failed_logins", "page_deep",
                                      "user_search"}
    for q in result["queries"].values():
        assert q["n"] == 3 and 0 < q["p50_ms"] <= q["p95_ms"]
    assert result["export_rows"] == result["largest_org_events"] > 0
    assert result["export_rows_per_s"] > 0
    assert result["bytes_per_row"] > 0
    assert result["rss_mb"] > 0 and result["rss_max_during_queries_mb"] > 0

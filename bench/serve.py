"""P6: ``upmetr-audit serve`` RSS with the data set stored, while it ingests
and serves the audit page.

1. A subprocess loads the shared data set into a fresh data dir's embedded
   store (chDB allows one store per process) and creates a superadmin of
   ``org-000`` with the ``audit_logs`` module.
2. ``upmetr-audit serve`` starts on that data dir (collector, writer, web
   page and failed-login detector in one process) with its sealer off
   (``--seal-interval 0``): on a bulk-loaded store it would first seal the
   whole year of history, which a running server seals as it arrives
   (sealing is P4's subject).
3. For ``serve_seconds``: 4 connections send OTLP/HTTP requests of 500 new
   events (the workload with another seed), paced at ``serve_rate`` events/s
   in all; another thread signs in and loads the page
   (``/audit?action=auth.login&status=failure``: cards, first page, chart)
   twice a second; the serve process's VmRSS is sampled every 0.25 s.

Figures: the RSS maximum and at the end, the process peak (VmHWM), the
achieved ingest rate and the page loads served.
"""

from __future__ import annotations

import http.cookiejar
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

from . import baselines, ingest

ORG = "org-000"
EMAIL = "bench-admin@org-000.example.com"
PASSWORD = "bench-password-0123456789"
BATCH = 500
#: Concurrent OTLP connections sharing the ingest rate, and page loads per second.
SENDERS = 4
PAGES_PER_S = 2.0
TARGET_MB = 600


def load_store(data_dir: str, paths: list[str]) -> None:
    """(In its own process.) Fill ``<data_dir>/clickhouse`` and create the page's account."""
    from upmetr_audit.collector import store as store_mod
    from upmetr_audit.web import accounts

    from . import datasets
    store = store_mod.open_store(store_mod.default_url(data_dir))
    try:
        datasets.load_typed(store.client, paths)
        accounts.set_module(store.client, ORG, "audit_logs", True)
        accounts.create_user(store.client, EMAIL, ORG, "superadmin", PASSWORD)
    finally:
        store.close()


def _pace(port: int, bodies, rate: float, stop: threading.Event, sent: list, failures: list) -> None:
    headers = {"Authorization": f"Bearer {baselines.TOKEN}", "Content-Type": "application/x-protobuf"}
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    start = time.perf_counter()
    n = 0
    for records, body in bodies:
        if stop.is_set():
            break
        wait = start + n / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)  # pacing to the asked rate
        conn.request("POST", "/v1/logs", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status == 200:
            n += records
        else:
            failures.append(resp.status)
    sent.append((n, time.perf_counter() - start))
    conn.close()


def _pages(port: int, stop: threading.Event, latencies: list, failures: list) -> None:
    """Sign in, then load the page PAGES_PER_S times a second (or as fast as it answers)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    base = f"http://127.0.0.1:{port}"
    form = opener.open(f"{base}/login", timeout=30).read().decode()
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    data = urllib.parse.urlencode({"csrf_token": token, "email": EMAIL, "password": PASSWORD}).encode()
    opener.open(f"{base}/login", data=data, timeout=30).read()
    start = time.perf_counter()
    while not stop.is_set():
        wait = start + len(latencies) / PAGES_PER_S - time.perf_counter()
        if wait > 0 and stop.wait(wait):  # pacing
            break
        t0 = time.perf_counter()
        with opener.open(f"{base}/audit?action=auth.login&status=failure", timeout=60) as resp:
            body = resp.read()
            if resp.status != 200 or b"audit" not in body:
                failures.append(resp.status)
        latencies.append((time.perf_counter() - t0) * 1000)


def run(run) -> dict:
    params = run.params
    paths = run.parquet()
    data_dir = tempfile.mkdtemp(prefix="upmetr-bench-serve-")
    try:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "bench.serve", data_dir, *paths], check=True)
        load_s = time.perf_counter() - t0
        seconds, rate = params["serve_seconds"], params["serve_rate"]
        # live events: timestamps over the run, as they happen
        span = int(seconds * 1.2 * 1_000_000)
        bodies = ingest.build_bodies(int(rate * seconds * 1.2) + BATCH, run.seed + 1,
                                     time.time_ns() // 1000 + span, BATCH, span_us=span)
        with baselines.collector(data_dir, "serve", extra=("--seal-interval", "0")) as srv:
            stop = threading.Event()
            sent, ingest_failures, latencies, page_failures = [], [], [], []
            before = srv.accepted()
            threads = [threading.Thread(target=_pace, args=(srv.http_port, bodies[i::SENDERS], rate / SENDERS,
                                                            stop, sent, ingest_failures))
                       for i in range(SENDERS)]
            threads.append(threading.Thread(target=_pages, args=(srv.web_port, stop, latencies,
                                                                 page_failures)))
            samples = []
            for t in threads:
                t.start()
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                samples.append(baselines.rss_mb(srv.proc.pid)[0])
                time.sleep(0.25)  # sampling interval
            stop.set()
            for t in threads:
                t.join()
            rss, peak = baselines.rss_mb(srv.proc.pid)
            committed = srv.accepted() - before
        if ingest_failures or page_failures or not latencies:
            raise RuntimeError(f"serve: ingest failures {ingest_failures[:3]}, page failures "
                               f"{page_failures[:3]}, {len(latencies)} pages")
        n, elapsed = sum(x[0] for x in sent), max(x[1] for x in sent)
        latencies.sort()
        rss_max = max(samples + [rss])
        return {"store_events": params["events"], "load_s": round(load_s, 1), "rate": rate,
                "achieved_rate": round(n / elapsed), "committed": committed, "pages": len(latencies),
                "page_p50_ms": round(latencies[len(latencies) // 2], 1),
                "page_p95_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))], 1),
                "rss_max_mb": round(rss_max), "rss_end_mb": round(rss), "rss_peak_mb": round(peak),
                "seconds": seconds, "targets": {"rss_le_600mb": rss_max <= TARGET_MB}}
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    load_store(sys.argv[1], sys.argv[2:])

"""Shipper benchmark: emit throughput and per-emit latency, side by side in
one process, of

* the stock OTel SDK path (``BatchLogRecordProcessor`` + ``OTLPLogExporter``),
  which is not durable: it drops on a full queue or a failed export;
* our durable mode (``emit`` returns once the event is fsynced in the spool);
* our fast mode (in memory, like the stock path, but never drops).

All three send to the same local OTLP/HTTP sink (a subprocess that answers
200 and counts the records it received), so delivery is checked too.

    .venv/bin/python bench/shipper.py --events 20000 --threads 1 4
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from workload import event_attributes

from upmetr_audit.shipper import AuditLogger
from upmetr_audit.shipper import contract as c
from upmetr_audit.shipper.catalog import EVENT_NAME_PREFIX

SINK = r"""
import http.server, sys, threading
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
count = 0
lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        global count
        body = self.rfile.read(int(self.headers["Content-Length"]))
        req = ExportLogsServiceRequest.FromString(body)
        n = sum(len(sl.log_records) for rl in req.resource_logs for sl in rl.scope_logs)
        with lock:
            count += n
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def do_GET(self):
        body = str(count).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


class Sink:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}/v1/logs"

    def count(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=10) as r:
            return int(r.read())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def workload(n: int, seed: int) -> list[tuple[str, dict]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        action = rng.choice(["auth.login", "auth.logout", "monitor.update", "incident.resolve"])
        out.append((action, event_attributes(rng, action, f"org-{i % 20}", f"user{i % 97}@x.test")))
    return out


def emit_stock(logger, action, attrs):
    attrs = dict(attrs, **{c.EVENT_ID: str(uuid.uuid4())})
    logger.emit(event_name=EVENT_NAME_PREFIX + action, timestamp=time.time_ns(), attributes=attrs)


def emit_ours(audit, action, attrs):
    kw = {"org": attrs[c.ORG_ID], "user": attrs[c.USER_EMAIL], "status": attrs[c.STATUS],
          "ip": attrs[c.CLIENT_ADDRESS], "reason": attrs.get(c.REASON),
          "changes": attrs.get(c.CHANGES), "user_agent": attrs[c.USER_AGENT]}
    if c.RESOURCE_ID in attrs:
        kw["resource"] = attrs[c.RESOURCE_ID]
    audit.emit(action, **kw)


def drive(emit, target, events, threads: int) -> tuple[float, list[float]]:
    """Emit ``events`` from ``threads`` threads; (wall seconds, per-emit latencies)."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    chunks = [events[i::threads] for i in range(threads)]

    def run(k):
        lat = latencies[k]
        for action, attrs in chunks[k]:
            t = time.perf_counter()
            emit(target, action, attrs)
            lat.append(time.perf_counter() - t)

    workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - start, [x for lat in latencies for x in lat]


def measure(mode: str, sink: Sink, events, threads: int, tmp: str) -> dict:
    before = sink.count()
    if mode == "stock":
        provider = LoggerProvider(resource=Resource.create({"service.name": "bench"}))
        provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=sink.url)))
        target, emit = provider.get_logger(c.SCOPE_NAME), emit_stock
    else:
        target = AuditLogger(service_name="bench", endpoint=sink.url, mode=mode,
                             spool_dir=os.path.join(tmp, f"{mode}-{threads}"))
        emit = emit_ours
    wall, lat = drive(emit, target, events, threads)
    if mode == "stock":
        provider.force_flush()
        provider.shutdown()
    else:
        target.flush(120)
        target.shutdown(10)
    lat.sort()
    return {"mode": mode, "threads": threads, "events": len(events),
            "emits_per_s": round(len(events) / wall), "p50_us": round(lat[len(lat) // 2] * 1e6, 1),
            "p99_us": round(lat[int(len(lat) * 0.99)] * 1e6, 1),
            "delivered": sink.count() - before}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--events", type=int, default=20000, help="events per mode and run")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4], help="emitting threads")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    events = workload(args.events, args.seed)
    sink, tmp = Sink(), tempfile.mkdtemp(prefix="upmetr-bench-shipper-")
    results = []
    try:
        for threads in args.threads:
            for mode in ("stock", "durable", "fast"):
                results.append(measure(mode, sink, events, threads, tmp))
    finally:
        sink.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"{'mode':<8} {'threads':>7} {'emits/s':>9} {'p50 µs':>8} {'p99 µs':>8} "
          f"{'delivered':>9} {'vs stock':>8}")
    for r in results:
        stock = next(x for x in results if x["mode"] == "stock" and x["threads"] == r["threads"])
        print(f"{r['mode']:<8} {r['threads']:>7} {r['emits_per_s']:>9,} {r['p50_us']:>8} "
              f"{r['p99_us']:>8} {r['delivered']:>9} {r['emits_per_s'] / stock['emits_per_s']:>7.2f}x")
    bad = [r for r in results if r["mode"] != "stock" and r["delivered"] != r["events"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())


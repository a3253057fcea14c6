"""Shipper benchmark: emit throughput and per-emit latency, side by side in
one process, of

* the stock OTel SDK path (``BatchLogRecordProcessor`` + ``OTLPLogExporter``),
  which is not durable: it drops on a full queue or a failed export;
* our durable mode (``emit`` returns once the event is fsynced in the spool);
* our crash-safe mode (``emit`` returns once the event is written to the
  spool file, which a crash of the process cannot undo; fsynced every 0.1 s);
* our fast mode (in memory, like the stock path, but never drops);
* and, for context, the stock path with a queue large enough to hold every
  event of the run (``stock-no-drop``): with the SDK's default queue of
  2,048 records, several emitting threads fill it and the stock path drops
  most events, which makes its ``emit`` cheap. The targets stay against the
  default stock path.

All three send to the same local OTLP/HTTP sink (a subprocess that answers
200 and counts the records it received), so delivery is checked too. The
events are the first ones of the shared workload (``bench.workload``).

Each (mode, threads) runs ``shipper_rounds`` times, the modes interleaved
within a round, and the figures are the median of the rounds (emits/s,
p50, p99 and delivered each on its own), so that one scheduling accident
on this shared 2-core machine does not decide a ratio.
"""

from __future__ import annotations

import os
import shutil
import statistics
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

from upmetr_audit.shipper import AuditLogger
from upmetr_audit.shipper import contract as c
from upmetr_audit.shipper.catalog import EVENT_NAME_PREFIX

from . import workload

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


def emits(n: int, seed: int, end_us: int) -> list[tuple[str, dict]]:
    """``(action, attributes)`` of the first ``n`` events of the shared workload."""
    rows = next(workload.generate(n, seed, end_us)).to_pylist()
    return [(row["action"], workload.event_attributes(row)) for row in rows]


def emit_stock(logger, action, attrs):
    attrs = dict(attrs, **{c.EVENT_ID: str(uuid.uuid4())})
    logger.emit(event_name=EVENT_NAME_PREFIX + action, timestamp=time.time_ns(), attributes=attrs)


_OWN = {c.ORG_ID, c.USER_EMAIL, c.STATUS, c.CLIENT_ADDRESS, c.REASON, c.CHANGES, c.RESOURCE_ID,
        c.RESOURCE_TYPE, c.EVENT_ID}


def emit_ours(audit, action, attrs):
    extra = {k: v for k, v in attrs.items() if k not in _OWN}  # user.id, session.id, details: as sent
    audit.emit(action, org=attrs[c.ORG_ID], user=attrs[c.USER_EMAIL], status=attrs[c.STATUS],
               ip=attrs[c.CLIENT_ADDRESS], reason=attrs.get(c.REASON), changes=attrs.get(c.CHANGES),
               resource=attrs.get(c.RESOURCE_ID), **extra)


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


def measure(mode: str, sink: Sink, events, threads: int, tmp: str, round_: int = 0) -> dict:
    before = sink.count()
    if mode.startswith("stock"):
        provider = LoggerProvider(resource=Resource.create({"service.name": "bench"}))
        queue = {"max_queue_size": max(len(events), 2048)} if mode == "stock-no-drop" else {}
        provider.add_log_record_processor(
            BatchLogRecordProcessor(OTLPLogExporter(endpoint=sink.url), **queue))
        target, emit = provider.get_logger(c.SCOPE_NAME), emit_stock
    else:
        target = AuditLogger(service_name="bench", endpoint=sink.url, mode=mode,
                             spool_dir=os.path.join(tmp, f"{mode}-{threads}-{round_}"))
        emit = emit_ours
    wall, lat = drive(emit, target, events, threads)
    if mode.startswith("stock"):
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


MODES = ("stock", "durable", "crash-safe", "fast", "stock-no-drop")


def _median(rs: list[dict]) -> dict:
    """The median of each figure over the rounds of one (mode, threads)."""
    out = dict(rs[0])
    for key in ("emits_per_s", "p50_us", "p99_us", "delivered"):
        out[key] = statistics.median(r[key] for r in rs)
    out["emits_per_s_rounds"] = [r["emits_per_s"] for r in rs]
    return out


def run(run) -> dict:
    events = emits(run.params["shipper_events"], run.seed, run.end_us)
    sink, tmp = Sink(), tempfile.mkdtemp(prefix="upmetr-bench-shipper-")
    rounds = run.params.get("shipper_rounds", 1)
    runs: dict[tuple[str, int], list[dict]] = {}
    try:
        for threads in run.params["shipper_threads"]:
            for k in range(rounds):
                for mode in MODES:
                    runs.setdefault((mode, threads), []).append(
                        measure(mode, sink, events, threads, tmp, k))
    finally:
        sink.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    lost = [r for (mode, _), rs in runs.items() if mode != "stock" for r in rs
            if r["delivered"] != r["events"]]  # stock-no-drop included: its queue holds them all
    if lost:
        raise RuntimeError(f"our shipper lost events: {lost}")
    results = [_median(rs) for rs in runs.values()]
    for r in results:
        stock = next(x for x in results if x["mode"] == "stock" and x["threads"] == r["threads"])
        r["vs_stock"] = round(r["emits_per_s"] / stock["emits_per_s"], 2)
    targets = {}
    for mode in ("durable", "crash-safe"):
        mine = [r for r in results if r["mode"] == mode]
        targets[f"{mode}_0.5x_stock"] = min(r["vs_stock"] for r in mine) >= 0.5
        targets[f"{mode}_p99_le_1ms"] = max(r["p99_us"] for r in mine) <= 1000
    return {"events": len(events), "rounds": rounds, "results": results, "targets": targets}

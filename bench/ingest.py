"""P1, ingest: OTLP/HTTP protobuf → collector → committed rows, against rotel.

The events of the shared workload, their timestamps moved into the last
hour (live traffic), become ``ExportLogsServiceRequest`` bodies, built
before timing starts: one request per ``batch`` records, with
a ``resource_logs`` per emitting service (its SDK resource) and scope
``upmetr.audit``. The same bodies go, over ``connections`` keep-alive
connections (one sender thread each), to

* ``upmetr-audit collector`` on a fresh data dir: every answer must be 200
  and ``upmetr_audit_records_accepted_total`` must grow by exactly the events
  sent (a 200 means committed);
* rotel's agent with its blackhole exporter: the native ceiling of receiving
  and decoding OTLP (it answers once the request is queued, not stored).

Figures: events per CPU-second of the receiving process (utime + stime of
all its threads from ``/proc/<pid>/stat``, sampled just before the first send
and after the last answer) and events/s of wall clock. The load generator's
own CPU is reported to show it is not the bottleneck; on a shared 2-core
machine it competes with the receiver, which is why CPU-seconds are the
figure to compare.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from upmetr_audit.shipper import contract as c
from upmetr_audit.shipper.catalog import EVENT_NAME_PREFIX

from . import baselines, workload

#: (records per request, connections): the OTel SDK's default batch, and the
#: batch the ClickHouse exporter's README recommends.
CONFIGS = ((512, 4), (5000, 4))
RESOURCE = {"service.version": "2026.11.3", "deployment.environment.name": "production",
            "telemetry.sdk.language": "python", "telemetry.sdk.name": "opentelemetry",
            "telemetry.sdk.version": "1.45.2"}


#: Live traffic: the workload's year of timestamps is squeezed into the last hour.
LIVE_SPAN_US = 3600 * 1_000_000


def build_bodies(events: int, seed: int, end_us: int, batch: int,
                 span_us: int = LIVE_SPAN_US) -> list[tuple[int, bytes]]:
    """``(records, serialized request)`` per request, from the shared workload,
    its timestamps moved into ``[end − span, end]`` (a collector receives
    recent events: one partition, not the whole year's)."""
    scale = span_us / workload.YEAR_US
    bodies = []
    for table in workload.generate(events, seed, end_us):
        rows = table.to_pylist()
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            req = ExportLogsServiceRequest()
            scopes = {}
            for row in chunk:
                service = row["service_name"]
                sl = scopes.get(service)
                if sl is None:
                    rl = req.resource_logs.add()
                    for k, v in {"service.name": service, "host.name": f"{service}-1", **RESOURCE}.items():
                        rl.resource.attributes.add(key=k).value.string_value = v
                    sl = scopes[service] = rl.scope_logs.add()
                    sl.scope.name = c.SCOPE_NAME
                rec = sl.log_records.add()
                rec.event_name = EVENT_NAME_PREFIX + row["action"]
                ts_us = int(row["timestamp"].timestamp() * 1_000_000)
                ts = (end_us - int((end_us - ts_us) * scale)) * 1000
                rec.time_unix_nano = ts
                rec.observed_time_unix_nano = ts + 1_000_000
                rec.severity_number, rec.severity_text = 9, "INFO"
                if row["trace_id"]:
                    rec.trace_id, rec.span_id = bytes.fromhex(row["trace_id"]), bytes.fromhex(row["span_id"])
                    rec.flags = 1
                for k, v in workload.event_attributes(row).items():
                    rec.attributes.add(key=k).value.string_value = v
            bodies.append((len(chunk), req.SerializeToString()))
    return bodies


def send_all(port: int, bodies: list[tuple[int, bytes]], failures: list) -> None:
    """One keep-alive connection; POST every body, record non-200 answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Authorization": f"Bearer {baselines.TOKEN}", "Content-Type": "application/x-protobuf"}
    try:
        for _, body in bodies:
            conn.request("POST", "/v1/logs", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                failures.append(resp.status)
    except Exception as exc:  # noqa: BLE001 - counted and reported
        failures.append(repr(exc))
    finally:
        conn.close()


def drive(pid: int, port: int, bodies: list[tuple[int, bytes]], connections: int) -> dict:
    """Send ``bodies`` over ``connections``; CPU of ``pid`` and wall clock."""
    failures: list = []
    shares = [bodies[i::connections] for i in range(connections)]
    threads = [threading.Thread(target=send_all, args=(port, s, failures)) for s in shares]
    gen0, cpu0, wall0 = time.process_time(), baselines.cpu_seconds(pid), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - wall0
    cpu, gen = baselines.cpu_seconds(pid) - cpu0, time.process_time() - gen0
    events = sum(n for n, _ in bodies)
    rss, peak = baselines.rss_mb(pid)
    return {"events": events, "failures": len(failures), "first_failures": failures[:3],
            "wall_s": round(wall, 3), "events_per_s": round(events / wall),
            "cpu_s": round(cpu, 2), "events_per_cpu_s": round(events / cpu) if cpu else 0,
            "cores_busy": round(cpu / wall, 2), "generator_cpu_s": round(gen, 2),
            "collector_rss_mb": round(rss), "collector_peak_rss_mb": round(peak)}


def measure_collector(warmup, bodies, connections: int) -> dict:
    with baselines.collector() as col:
        failures: list = []
        send_all(col.http_port, [warmup], failures)
        if failures:
            raise RuntimeError(f"warm-up batch failed: {failures}")
        before = col.accepted()
        r = drive(col.proc.pid, col.http_port, bodies, connections)
        r["committed"] = col.accepted() - before
    if r["failures"] or r["committed"] != r["events"]:
        raise RuntimeError(f"collector: {r['failures']} failed requests {r['first_failures']}, "
                           f"{r['committed']} of {r['events']} committed")
    return r


def measure_rotel(warmup, bodies, connections: int) -> dict:
    with baselines.rotel() as rot:
        failures: list = []
        send_all(rot.http_port, [warmup], failures)
        r = drive(rot.proc.pid, rot.http_port, bodies, connections)
        r["version"] = rot.version
    if failures or r["failures"]:
        raise RuntimeError(f"rotel: failed requests {failures[:3]} {r['first_failures']}")
    return r


def costs(events: int, seed: int, end_us: int, batch: int) -> dict:
    """The per-step breakdown (``bench.ingest_costs``), in a process of its own."""
    args = [sys.executable, "-m", "bench.ingest_costs", "--events", str(events), "--batch", str(batch),
            "--seed", str(seed), "--end-us", str(end_us)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=1800)
    if out.returncode:
        raise RuntimeError(f"bench.ingest_costs failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def run(run) -> dict:
    events = run.params["ingest_events"]
    out = {"events_per_config": events, "configs": []}
    for batch, connections in CONFIGS:
        t0 = time.perf_counter()
        bodies = build_bodies(events + batch, run.seed, run.end_us, batch)
        build_s = time.perf_counter() - t0
        warmup, bodies = bodies[0], bodies[1:]  # the warm-up has its own event ids
        out["bytes_per_event"] = round(sum(len(b) for _, b in bodies) / events)
        cfg = {"batch": batch, "connections": connections, "events": sum(n for n, _ in bodies),
               "requests": len(bodies), "build_s": round(build_s, 1)}
        cfg["collector"] = ours = measure_collector(warmup, bodies, connections)
        try:
            cfg["rotel"] = rot = measure_rotel(warmup, bodies, connections)
            if rot["events_per_cpu_s"]:  # 0: too little CPU to see (clock ticks of 10 ms)
                cfg["cpu_ratio_vs_rotel"] = round(ours["events_per_cpu_s"] / rot["events_per_cpu_s"], 3)
        except baselines.Unavailable as exc:
            cfg["rotel"], cfg["rotel_skipped"] = None, str(exc)
        cfg["costs"] = costs(events, run.seed, run.end_us, batch)
        out["configs"].append(cfg)
    best = max(cfg["collector"]["events_per_cpu_s"] for cfg in out["configs"])
    ratios = [cfg["cpu_ratio_vs_rotel"] for cfg in out["configs"] if "cpu_ratio_vs_rotel" in cfg]
    out["targets"] = {"50k_events_per_cpu_s": best >= 50_000,
                      "0.2x_rotel_per_cpu_s": bool(ratios) and max(ratios) >= 0.2}
    return out

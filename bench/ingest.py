"""Ingest benchmark: OTLP/HTTP protobuf → collector → embedded ClickHouse.

Starts ``upmetr-audit collector`` (which migrates the schema on start) as a
subprocess on a fresh temp data dir and free ports, pre-builds
``ExportLogsServiceRequest`` bodies of valid audit events, sends them over
keep-alive connections (one per sender thread) and reports:

* events/s, wall clock from the first send to the last acknowledgement;
* events per collector CPU-second (utime+stime of the collector process,
  from /proc/<pid>/stat, sampled just before the first send and after the
  last acknowledgement);
* the collector's RSS, and the load generator's own CPU time, to show it
  is not the bottleneck.

Every acknowledged event must be committed: the collector's
``upmetr_audit_records_accepted_total`` must grow by exactly the events sent.

    .venv/bin/python bench/ingest.py --events 500000 --batch 512 --connections 4
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from workload import event_attributes

from upmetr_audit.shipper import contract as c
from upmetr_audit.shipper.catalog import ACTIONS, EVENT_NAME_PREFIX

TOKEN = "bench-token"
CLK_TCK = os.sysconf("SC_CLK_TCK")
RESOURCE = {"service.name": "upmetr-api", "service.version": "2026.11.3",
            "deployment.environment.name": "production", "host.name": "api-7f9c",
            "telemetry.sdk.language": "python", "telemetry.sdk.name": "opentelemetry",
            "telemetry.sdk.version": "1.45.2"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_bodies(n_events: int, batch: int, seed: int) -> list[tuple[int, bytes]]:
    """``(events, serialized request)`` per batch; deterministic for a seed
    (except timestamps, which must be recent to be accepted)."""
    rng = random.Random(seed)
    orgs = {f"org-{i:03d}": [f"user{j}@org-{i:03d}.test" for j in range(rng.randint(2, 12))]
            for i in range(50)}
    org_ids = list(orgs)
    action_ids = ["auth.login"] * 6 + list(ACTIONS)
    now = time.time_ns()
    bodies = []
    for start in range(0, n_events, batch):
        req = ExportLogsServiceRequest()
        rl = req.resource_logs.add()
        for k, v in RESOURCE.items():
            rl.resource.attributes.add(key=k).value.string_value = v
        sl = rl.scope_logs.add()
        sl.scope.name = c.SCOPE_NAME
        n = min(batch, n_events - start)
        for _ in range(n):
            org = rng.choice(org_ids)
            action_id = rng.choice(action_ids)
            attrs = event_attributes(rng, action_id, org, rng.choice(orgs[org]))
            attrs[c.EVENT_ID] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            attrs[c.CLIENT_ADDRESS] = f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            attrs[c.SESSION_ID] = f"s-{rng.getrandbits(48):012x}"
            rec = sl.log_records.add()
            rec.event_name = EVENT_NAME_PREFIX + action_id
            rec.time_unix_nano = rec.observed_time_unix_nano = now - rng.randint(0, 60 * 10**9)
            rec.severity_number, rec.severity_text = 9, "INFO"
            rec.trace_id, rec.span_id = rng.randbytes(16), rng.randbytes(8)
            rec.flags = 1
            for k, v in attrs.items():
                rec.attributes.add(key=k).value.string_value = v
        bodies.append((n, req.SerializeToString()))
    return bodies


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def rss_mb(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/status") as f:
        kb = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", f.read(), re.M))
    return int(kb["VmRSS"]) / 1024, int(kb["VmHWM"]) / 1024


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def accepted(port: int) -> int:
    status, body = get(port, "/metrics")
    m = re.search(rb"^upmetr_audit_records_accepted_total (\S+)$", body, re.M)
    if status != 200 or not m:
        raise RuntimeError("cannot read upmetr_audit_records_accepted_total from /metrics")
    return int(float(m.group(1)))


def wait_ready(proc: subprocess.Popen, port: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"collector exited with code {proc.returncode} during start")
        try:
            if get(port, "/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)  # poll interval, not a fixed wait
    raise RuntimeError(f"collector not ready after {timeout_s:g}s")


def send_all(port: int, bodies: list[tuple[int, bytes]], failures: list) -> None:
    """One keep-alive connection; POST every body, count non-200 answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-protobuf"}
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


def run(args) -> dict:
    exe = os.path.join(os.path.dirname(sys.executable), "upmetr-audit")
    t0 = time.perf_counter()
    bodies = build_bodies(args.events + args.batch, args.batch, args.seed)
    warmup, bodies = bodies[0], bodies[1:]  # the warm-up batch has its own event ids
    build_s = time.perf_counter() - t0
    tmp = tempfile.mkdtemp(prefix="upmetr-bench-")
    http_port, grpc_port = free_port(), free_port()
    proc = log = profiler = None
    try:
        log = open(os.path.join(tmp, "collector.log"), "w")  # noqa: SIM115 - closed in finally
        proc = subprocess.Popen(
            [exe, "collector", "--data-dir", tmp, "--otlp-http-addr", f"127.0.0.1:{http_port}",
             "--otlp-grpc-addr", f"127.0.0.1:{grpc_port}", "--ingest-tokens", TOKEN,
             "--summary-interval", "0", "--log-level", "WARNING"],
            stdout=log, stderr=subprocess.STDOUT)
        wait_ready(proc, http_port)
        failures: list = []
        send_all(http_port, [warmup], failures)
        if failures:
            raise RuntimeError(f"warm-up batch failed: {failures}")
        before = accepted(http_port)
        shares = [bodies[i::args.connections] for i in range(args.connections)]
        threads = [threading.Thread(target=send_all, args=(http_port, s, failures)) for s in shares]
        if args.profile:
            profiler = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "py-spy"),
                                         "record", "-p", str(proc.pid), "-o", args.profile,
                                         "--format", "speedscope", "-r", "50"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)  # let py-spy attach
        gen_cpu0, cpu0, wall0 = time.process_time(), cpu_seconds(proc.pid), time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - wall0
        cpu, gen_cpu = cpu_seconds(proc.pid) - cpu0, time.process_time() - gen_cpu0
        if profiler:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            profiler.wait(60)
        rss, peak = rss_mb(proc.pid)
        committed = accepted(http_port) - before
        return {
            "events": args.events, "batch": args.batch, "connections": args.connections,
            "requests": len(bodies),
            "bytes_per_event": round(sum(len(b) for _, b in bodies) / args.events),
            "failures": len(failures), "committed": committed,
            "ok": not failures and committed == args.events,
            "wall_s": round(wall, 3), "events_per_s": round(args.events / wall),
            "collector_cpu_s": round(cpu, 2),
            "events_per_cpu_s": round(args.events / cpu) if cpu else 0,
            "collector_cores_busy": round(cpu / wall, 2), "generator_cpu_s": round(gen_cpu, 2),
            "collector_rss_mb": round(rss), "collector_peak_rss_mb": round(peak),
            "build_s": round(build_s, 1), "first_failures": failures[:3],
        }
    except BaseException:
        if log is not None:
            log.flush()
            with open(log.name) as f:
                sys.stderr.write("collector output (tail):\n" + "".join(f.readlines()[-20:]))
        raise
    finally:
        if profiler is not None and profiler.poll() is None:
            profiler.kill()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if log is not None:
            log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--events", type=int, default=200_000, help="events in the timed run")
    p.add_argument("--batch", type=int, default=512, help="log records per export request")
    p.add_argument("--connections", type=int, default=2, help="concurrent keep-alive connections")
    p.add_argument("--seed", type=int, default=1, help="random seed of the generated events")
    p.add_argument("--profile", metavar="FILE",
                   help="record a py-spy speedscope profile of the collector during the timed run "
                        "(slows the collector; figures are then not representative)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = p.parse_args()
    if args.events < 1 or args.batch < 1 or args.connections < 1:
        p.error("--events, --batch and --connections must be positive")
    r = run(args)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['events']} events in {r['requests']} requests of {r['batch']} over "
              f"{r['connections']} connections (~{r['bytes_per_event']} B/event protobuf)")
        print(f"  wall clock     {r['wall_s']:.2f} s: {r['events_per_s']:,} events/s")
        print(f"  collector CPU  {r['collector_cpu_s']:.2f} s: {r['events_per_cpu_s']:,} events/CPU-s "
              f"({r['collector_cores_busy']} cores busy)")
        print(f"  generator CPU  {r['generator_cpu_s']:.2f} s;  collector RSS {r['collector_rss_mb']} MB "
              f"(peak {r['collector_peak_rss_mb']} MB)")
        print(f"  committed      {r['committed']} / {r['events']}, failed requests {r['failures']} "
              f"{r['first_failures'] or ''}: {'OK' if r['ok'] else 'FAILED'}")
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

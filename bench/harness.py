"""The benchmark harness: ``python -m bench [--only NAME ...] [--size tiny|1M|10M]``.

Benchmarks are a registry (:data:`REGISTRY`): a name, a title, the function
that runs it (given the :class:`Run`), its targets. The harness runs the
selected ones at one size, then writes

* the raw figures into a JSON file (``docs/benchmarks.json``), merged with
  what it already held for other benchmarks and sizes;
* ``docs/benchmarks.md``: the generated part (between the two ``generated``
  markers) is rewritten from that JSON, a table per benchmark; the
  hand-written notes outside the markers are kept.

Everything it starts (PostgreSQL, rotel, collectors, temp folders) is
stopped and removed on the way out, on an error, Ctrl-C or SIGTERM too.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata

from . import baselines, report, workload

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SIZES: dict[str, dict] = {
    "tiny": {"events": 20_000, "ingest_events": 2_000, "repeat": 3, "cold": 1, "shipper_events": 300,
             "shipper_threads": (1, 4), "serve_seconds": 3.0, "serve_rate": 1_000},
    "1M": {"events": 1_000_000, "ingest_events": 200_000, "repeat": 30, "cold": 5,
           "shipper_events": 20_000, "shipper_threads": (1, 4, 8), "shipper_rounds": 3,
           "serve_seconds": 30.0,
           "serve_rate": 10_000},
    "10M": {"events": 10_000_000, "ingest_events": 500_000, "repeat": 30, "cold": 5,
            "shipper_events": 30_000, "shipper_threads": (1, 4, 8), "shipper_rounds": 3,
            "serve_seconds": 60.0,
            "serve_rate": 10_000},
}


@dataclass
class Benchmark:
    name: str
    title: str
    #: "module:function" run with the :class:`Run`; returns a JSON-able dict.
    entry: str
    targets: str
    #: Whether it uses the run's shared data set (``Run.dataset()``, a chDB
    #: store open in this process until the run ends). Those run last, so a
    #: benchmark that opens a chDB store of its own can (one per process).
    shared_dataset: bool = False

    def load(self) -> Callable:
        module, func = self.entry.split(":")
        return getattr(importlib.import_module(module), func)


REGISTRY: dict[str, Benchmark] = {}


def register(b: Benchmark) -> None:
    REGISTRY[b.name] = b


register(Benchmark("P1", "Ingest: OTLP/HTTP protobuf to committed rows, vs rotel", "bench.ingest:run",
                   "≥ 50k events per collector CPU-second; ≥ 0.2× rotel's events per CPU-second"))
register(Benchmark("P2", "The audit page's queries, vs otel_logs and PostgreSQL", "bench.pages:run_p2",
                   "composite p95 ≤ 50 ms at 10M; ≥ 10× faster than otel_logs, ≥ 5× than PostgreSQL at "
                   "10M; first page ≤ 10 ms p95", shared_dataset=True))
register(Benchmark("P3", "Storage: bytes per event, vs otel_logs and PostgreSQL", "bench.pages:run_p3",
                   "≤ 20 B/event; ≥ 2× smaller than otel_logs; ≥ 15× smaller than PostgreSQL",
                   shared_dataset=True))
register(Benchmark("P5", "Shipper: durable emit vs the stock BatchLogRecordProcessor", "bench.shipper:run",
                   "durable ≥ 0.5× stock emits/s; p99 ≤ 1 ms"))
register(Benchmark("P6", "serve RSS while ingesting and serving the page", "bench.serve:run",
                   "≤ 600 MB at 10M events, ingesting 10k events/s and serving page queries"))


def _optional(name, title, entry, targets, shared_dataset=False):
    """Benchmarks other engineers build: registered when their module exists."""
    module = entry.split(":")[0]
    if importlib.util.find_spec(module) is not None:
        register(Benchmark(name, title, entry, targets, shared_dataset))


_optional("P4", "Seal verification throughput", "bench.verify:run", "≥ 1M events/s")
_optional("P7", "Detector run over 10M events, 50 orgs", "bench.detector:run", "≤ 1 s", shared_dataset=True)


@dataclass
class Dataset:
    events: int
    end_us: int
    paths: list[str]
    client: object
    pg: baselines.PostgreSQL
    load_info: dict


@dataclass
class Run:
    """One harness run: the size, its parameters, what was started."""

    size: str
    seed: int
    stack: contextlib.ExitStack
    tmp: str
    params: dict = field(default_factory=dict)
    end_us: int = 0
    _dataset: Dataset | None = None

    def parquet(self) -> list[str]:
        folder = os.path.join(self.tmp, "parquet")
        if not os.path.isdir(folder):
            workload.write_parquet(self.params["events"], self.seed, self.end_us, folder)
        return sorted(os.path.join(folder, f) for f in os.listdir(folder))

    def dataset(self) -> Dataset:
        """The generated data set loaded into chDB (typed + otel_logs) and
        PostgreSQL, once per run (P2 and P3 share it)."""
        if self._dataset is None:
            import psycopg

            from upmetr_audit.collector import store as store_mod

            from . import datasets
            info = {}
            t0 = time.perf_counter()
            paths = self.parquet()
            info["generate_s"] = round(time.perf_counter() - t0, 1)
            store = store_mod.open_store(f"chdb://{self.tmp}/chdb")
            self.stack.callback(store.close)
            t0 = time.perf_counter()
            datasets.load_typed(store.client, paths)
            info["load_typed_s"] = round(time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            info["otel_index_kind"] = datasets.load_otel(store.client)
            info["load_otel_s"] = round(time.perf_counter() - t0, 1)
            pg = self.stack.enter_context(baselines.postgresql())
            t0 = time.perf_counter()
            with psycopg.connect(pg.dsn) as conn:
                datasets.load_postgres(conn, paths)
            info["load_postgres_s"] = round(time.perf_counter() - t0, 1)
            info["postgres_settings"] = baselines.PG_SETTINGS
            info["postgres_version"] = pg.version
            self._dataset = Dataset(self.params["events"], self.end_us, paths, store.client, pg, info)
        return self._dataset


def machine() -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    load1, load5, _ = os.getloadavg()
    versions = {}
    for pkg in ("chdb", "chdb-core", "clickhouse-connect", "protobuf", "waitress", "opentelemetry-sdk",
                "psycopg", "rotel"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gb": round(mem_kb / 1024 / 1024, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "loadavg_at_start": [round(load1, 2), round(load5, 2)], "versions": versions}


def _save(path: str, store: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(store, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(path + ".tmp", path)


def _sigterm(_signum, _frame):
    raise SystemExit("terminated")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", action="append", metavar="NAME", choices=sorted(REGISTRY),
                   help="run only this benchmark (repeatable)")
    p.add_argument("--size", choices=SIZES, default="1M", help="data set size")
    p.add_argument("--seed", type=int, default=1, help="seed of the generated data set")
    p.add_argument("--json", dest="json_path", default=os.path.join(ROOT, "docs", "benchmarks.json"),
                   help="raw figures file (read, merged, written)")
    p.add_argument("--md", dest="md_path", default=os.path.join(ROOT, "docs", "benchmarks.md"),
                   help="report to (re)generate")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    names = sorted(args.only or REGISTRY, key=lambda n: REGISTRY[n].shared_dataset)  # stable
    try:
        with open(args.json_path) as f:
            store = json.load(f)
    except FileNotFoundError:
        store = {"runs": {}}
    failed = []
    tmp = tempfile.mkdtemp(prefix="upmetr-bench-")
    try:
        with contextlib.ExitStack() as stack:
            now_us = time.time_ns() // 1000
            run = Run(args.size, args.seed, stack, tmp, dict(SIZES[args.size]),
                      end_us=now_us - now_us % 1_000_000)
            for name in names:
                b = REGISTRY[name]
                print(f"== {name}: {b.title} ({args.size})", file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                entry = {"benchmark": name, "title": b.title, "targets": b.targets, "size": args.size,
                         "seed": args.seed, "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                         "machine": machine()}
                try:
                    entry["result"] = b.load()(run)
                except baselines.Unavailable as exc:
                    entry["skipped"] = str(exc)
                    print(f"   skipped: {exc}", file=sys.stderr)
                except Exception as exc:  # noqa: BLE001 - reported, the other benchmarks still run
                    traceback.print_exc()
                    entry["error"] = f"{type(exc).__name__}: {exc}"
                    failed.append(name)
                entry["seconds"] = round(time.perf_counter() - t0, 1)
                entry["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()[:2]]
                store["runs"].setdefault(name, {})[args.size] = entry
                _save(args.json_path, store)  # after each benchmark: a crash keeps what ran
                print(f"   {name} done in {entry['seconds']} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _save(args.json_path, store)
    report.write(args.md_path, store, REGISTRY)
    print(f"wrote {args.json_path} and {args.md_path}", file=sys.stderr)
    return 1 if failed else 0

"""Processes the harness starts and always stops: PostgreSQL, rotel, our collector.

Each is a context manager: the process is stopped and its temp folder
removed on the way out, whatever happened inside (an exception, Ctrl-C, or
SIGTERM, which ``python -m bench`` turns into ``SystemExit``).
"""

from __future__ import annotations

import glob
import http.client
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")

#: PostgreSQL settings for the baseline (recorded in the report): memory for a
#: 24 GB machine shared with other work, SSD costs, no durability cost at load
#: (the benchmarks measure reads and storage, not commits).
PG_SETTINGS = {
    "shared_buffers": "2GB", "effective_cache_size": "8GB", "work_mem": "64MB",
    "maintenance_work_mem": "1GB", "random_page_cost": "1.1", "effective_io_concurrency": "200",
    "max_wal_size": "8GB", "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
    "jit": "off", "max_parallel_workers_per_gather": "2",
}


class Unavailable(RuntimeError):
    """A baseline's binary is not installed here (the message says how to install it)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all threads (``/proc/<pid>/stat`` fields 14, 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int | str = "self") -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB."""
    with open(f"/proc/{pid}/status") as f:
        kb = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", f.read(), re.M))
    return int(kb["VmRSS"]) / 1024, int(kb["VmHWM"]) / 1024


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} during start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)  # poll interval
    raise RuntimeError(f"{what} not listening on {port} after {timeout_s:g}s")


def _stop(proc: subprocess.Popen | None, timeout_s: float = 60) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- PostgreSQL -----------------------------------------------------------------


def pg_bindir() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        raise Unavailable("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    return os.path.dirname(found[-1])


@dataclass
class PostgreSQL:
    bindir: str
    datadir: str
    port: int
    version: str
    _as: list[str]

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=bench dbname=bench"

    def ctl(self, *args: str) -> None:
        subprocess.run([*self._as, os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, *args],
                       check=True, capture_output=True, text=True)

    def restart(self) -> None:
        """Stop and start the server: its shared buffers are empty afterwards."""
        self.ctl("-m", "fast", "-w", "stop")
        self.start()

    def start(self) -> None:
        # -l: the server must not inherit our pipes, or waiting for pg_ctl hangs
        self.ctl("-l", os.path.join(os.path.dirname(self.datadir), "server.log"), "-w", "start")

    def server_pids(self) -> list[int]:
        with open(os.path.join(self.datadir, "postmaster.pid")) as f:
            main = int(f.readline())
        kids = subprocess.run(["pgrep", "-P", str(main)], capture_output=True, text=True).stdout.split()
        return [main, *map(int, kids)]


@contextmanager
def postgresql() -> Iterator[PostgreSQL]:
    """A private PostgreSQL cluster in a temp folder on a free port (trust auth,
    loopback only). As root it runs as the ``postgres`` user (``runuser``)."""
    bindir = pg_bindir()
    tmp = tempfile.mkdtemp(prefix="upmetr-bench-pg-")
    run_as: list[str] = []
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise Unavailable("as root, PostgreSQL runs as the postgres user: apt-get install postgresql") \
                from None
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    datadir = os.path.join(tmp, "data")
    port = free_port()
    pg = None
    try:
        subprocess.run([*run_as, os.path.join(bindir, "initdb"), "-D", datadir, "-U", "bench",
                        "--auth=trust", "-E", "UTF8", "--locale=C"],
                       check=True, capture_output=True, text=True)
        with open(os.path.join(datadir, "postgresql.conf"), "a") as f:
            f.write(f"\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{tmp}'\n")
            f.writelines(f"{k} = '{v}'\n" for k, v in PG_SETTINGS.items())
        version = subprocess.run([os.path.join(bindir, "postgres"), "--version"], check=True,
                                 capture_output=True, text=True).stdout.strip()
        pg = PostgreSQL(bindir, datadir, port, version, run_as)
        pg.start()
        subprocess.run([*run_as, os.path.join(bindir, "createdb"), "-h", "127.0.0.1", "-p", str(port),
                        "-U", "bench", "bench"], check=True, capture_output=True, text=True)
        yield pg
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"PostgreSQL: {' '.join(exc.cmd)} failed: {exc.stderr}") from None
    finally:
        if pg is not None:
            try:
                pg.ctl("-m", "immediate", "-w", "stop")
            except subprocess.CalledProcessError:
                pass  # not running
        shutil.rmtree(tmp, ignore_errors=True)


# -- rotel ----------------------------------------------------------------------


def rotel_binary() -> str:
    try:
        import rotel
    except ImportError:
        raise Unavailable("rotel is not installed (pip install '.[bench]')") from None
    path = os.path.join(os.path.dirname(rotel.__file__), "rotel-agent")
    if not os.access(path, os.X_OK):
        raise Unavailable(f"rotel's agent binary is missing at {path}")
    return path


@dataclass
class Rotel:
    proc: subprocess.Popen
    http_port: int
    version: str


@contextmanager
def rotel() -> Iterator[Rotel]:
    """rotel's agent (Rust OTLP collector) receiving OTLP/HTTP into its blackhole exporter."""
    exe = rotel_binary()
    tmp = tempfile.mkdtemp(prefix="upmetr-bench-rotel-")
    http_port, grpc_port = free_port(), free_port()
    proc = None
    try:
        version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
        log = open(os.path.join(tmp, "rotel.log"), "w")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [exe, "start", "--otlp-http-endpoint", f"127.0.0.1:{http_port}",
             "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}", "--exporter", "blackhole",
             "--pid-file", os.path.join(tmp, "rotel.pid"), "--log-file", os.path.join(tmp, "agent.log")],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        _wait_port(http_port, proc, "rotel")
        yield Rotel(proc, http_port, version)
    finally:
        _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


# -- our collector ----------------------------------------------------------------

TOKEN = "bench-token"


def _get(port: int, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@dataclass
class Collector:
    proc: subprocess.Popen
    http_port: int
    data_dir: str
    web_port: int | None = None

    def accepted(self) -> int:
        status, body = _get(self.http_port, "/metrics")
        m = re.search(rb"^upmetr_audit_records_accepted_total (\S+)$", body, re.M)
        if status != 200 or not m:
            raise RuntimeError("cannot read upmetr_audit_records_accepted_total from /metrics")
        return int(float(m.group(1)))


@contextmanager
def collector(data_dir: str | None = None, command: str = "collector",
              extra: tuple[str, ...] = ()) -> Iterator[Collector]:
    """``upmetr-audit collector`` (or ``serve``) as a subprocess on free ports,
    ready (``/readyz``) when entered. A temp data dir unless ``data_dir`` is given."""
    exe = os.path.join(os.path.dirname(sys.executable), "upmetr-audit")
    own = data_dir is None
    data_dir = data_dir or tempfile.mkdtemp(prefix="upmetr-bench-collector-")
    http_port, grpc_port = free_port(), free_port()
    web_port = free_port() if command == "serve" else None
    args = [exe, command, "--data-dir", data_dir, "--otlp-http-addr", f"127.0.0.1:{http_port}",
            "--otlp-grpc-addr", f"127.0.0.1:{grpc_port}", "--ingest-tokens", TOKEN,
            "--summary-interval", "0", "--log-level", "WARNING", *extra]
    if web_port:
        args += ["--web-addr", f"127.0.0.1:{web_port}"]
    log_path = os.path.join(tempfile.gettempdir(), f"upmetr-bench-{command}-{http_port}.log")
    proc = None
    try:
        with open(log_path, "w") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{command} exited with code {proc.returncode} during start")
            try:
                if _get(http_port, "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command} not ready after 300 s")
            time.sleep(0.05)  # poll interval
        if web_port:  # serve starts the page after the collector is ready
            _wait_port(web_port, proc, command, timeout_s=120)
        yield Collector(proc, http_port, data_dir, web_port)
    except BaseException:
        with open(log_path) as f:
            sys.stderr.write(f"{command} output (tail):\n" + "".join(f.readlines()[-20:]))
        raise
    finally:
        _stop(proc)
        os.unlink(log_path)
        if own:
            shutil.rmtree(data_dir, ignore_errors=True)

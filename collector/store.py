"""Opening the ClickHouse store, and keeping its schema and retention right.

There is one code path for both kinds of store: clickhouse-connect, opened
from one URL. ``chdb:///path`` is the embedded engine (in-process ClickHouse,
one process per folder), ``http(s)://user:pass@host:8123`` a server.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from upmetr_audit.shipper.catalog import ACTIONS, CATEGORY_BY_ID

from . import schema
from .errors import ConfigError, RetentionError, SchemaError, StoreLocked

log = logging.getLogger(__name__)

LOCK_FILE = "upmetr-audit.lock"

#: Seconds between two ``SYSTEM JEMALLOC PURGE`` of an embedded store. chDB's
#: allocator keeps freed pages (parts written, merges, query blocks) for a few
#: seconds before giving them back; under steady ingest that is tens of MB of
#: RSS. Its caches are not the issue: at 10M events they hold a few MB.
PURGE_INTERVAL_S = 1.0

#: chDB's cache of decompressed blocks (ClickHouse's uncompressed cache, off by
#: default). A page of 25 events decompresses a few granules of every column
#: (~7 MB at 10M events); with the cache, a page load that reads the same
#: blocks again skips that (first filtered page at 10M: p50 16 → 10 ms,
#: docs/benchmarks.md P2). Queries reading more than ~1M rows bypass it, so
#: exports and verify do not evict the page's blocks. Sized against serve's
#: memory target (P6); ``UPMETR_AUDIT_UNCOMPRESSED_CACHE_MB`` overrides it
#: (0 turns the cache off).
UNCOMPRESSED_CACHE_BYTES = 32 * 1024 * 1024
CACHE_ENV = "UPMETR_AUDIT_UNCOMPRESSED_CACHE_MB"


def uncompressed_cache_bytes(environ=None) -> int:
    """The embedded store's uncompressed cache size. Raises :class:`ConfigError`."""
    value = (os.environ if environ is None else environ).get(CACHE_ENV)
    if value is None or value == "":
        return UNCOMPRESSED_CACHE_BYTES
    if not value.isdigit() or int(value) > 65536:
        raise ConfigError(f"{CACHE_ENV} must be a whole number of MB from 0 to 65536, "
                          f"not {value!r}")
    return int(value) * 1024 * 1024


def default_url(data_dir: str) -> str:
    return "chdb://" + os.path.join(os.path.abspath(data_dir), "clickhouse")


@dataclass
class Store:
    """An open store: ``client`` is a clickhouse-connect client."""

    url: str
    client: object
    embedded: bool
    _lock_fd: int | None = None
    _stop_purging: threading.Event | None = field(default=None, repr=False)
    _purger: threading.Thread | None = field(default=None, repr=False)

    def start_purging(self, interval: float = PURGE_INTERVAL_S) -> None:
        """(Embedded store.) Give the allocator's freed pages back every ``interval`` seconds."""
        if self._purger is not None or not self.embedded or interval <= 0:
            return
        self._stop_purging = threading.Event()

        def purge() -> None:
            while not self._stop_purging.wait(interval):
                try:
                    self.client.command("SYSTEM JEMALLOC PURGE")
                except Exception as exc:  # memory housekeeping: never worth failing the store for
                    log.debug("jemalloc purge failed: %s", exc)

        self._purger = threading.Thread(target=purge, name="chdb-purge", daemon=True)
        self._purger.start()

    def close(self) -> None:
        try:
            if self._purger is not None:
                self._stop_purging.set()
                self._purger.join()
                self._purger = None
            self.client.close()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None


def _lock_embedded(path: str) -> int:
    os.makedirs(path, exist_ok=True)
    lock_path = os.path.join(path, LOCK_FILE)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            pid = int(os.pread(fd, 32, 0).decode().strip() or 0) or None
        except ValueError:
            pid = None
        os.close(fd)
        raise StoreLocked(path, pid) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _pid_from_status(path: str) -> int | None:
    """ClickHouse writes ``PID: n`` into ``<path>/status`` while it runs."""
    try:
        with open(os.path.join(path, "status")) as f:
            m = re.search(r"PID:\s*(\d+)", f.read())
    except OSError:
        return None
    return int(m.group(1)) if m else None


def open_store(url: str) -> Store:
    """Open the store at ``url``. Raises :class:`StoreLocked` or :class:`ConfigError`."""
    import clickhouse_connect  # the [server] extra; imported here so the CLI loads without it

    parts = urlsplit(url)
    if parts.scheme == "chdb":
        path = parts.path if not parts.netloc else os.path.join(parts.netloc, parts.path.lstrip("/"))
        if not path:
            raise ConfigError(f"chdb URL {url!r} has no folder; use chdb:///absolute/path")
        path = os.path.abspath(path)
        cache = uncompressed_cache_bytes()
        fd = _lock_embedded(path)
        try:
            client = clickhouse_connect.get_client(
                dsn=f"chdb://{path}", settings={"use_uncompressed_cache": int(cache > 0)},
                chdb_options={"uncompressed_cache_size": cache})
        except Exception as exc:
            os.close(fd)
            if "lock" in str(exc).lower():
                raise StoreLocked(path, _pid_from_status(path)) from None
            raise
        return Store(url=f"chdb://{path}", client=client, embedded=True, _lock_fd=fd)
    if parts.scheme in ("http", "https"):
        if parts.path.strip("/") not in ("", schema.DATABASE):
            raise ConfigError(
                f"the database is always {schema.DATABASE!r}; remove {parts.path!r} from the URL"
            )
        try:
            client = clickhouse_connect.get_client(
                host=parts.hostname, port=parts.port or (8443 if parts.scheme == "https" else 8123),
                username=parts.username or "default", password=parts.password or "",
                secure=parts.scheme == "https",
            )
        except Exception as exc:
            raise ConfigError(f"cannot reach ClickHouse at {parts.hostname}: {exc}") from None
        return Store(url=url, client=client, embedded=False)
    raise ConfigError(
        f"unsupported ClickHouse URL {url!r}: use chdb:///path (embedded) or http(s)://host:8123"
    )


# -- schema -------------------------------------------------------------------


def applied_versions(client) -> list[int]:
    exists = client.command(f"EXISTS TABLE {schema.MIGRATIONS_TABLE}")
    if not int(exists):
        return []
    rows = client.query(f"SELECT DISTINCT version FROM {schema.MIGRATIONS_TABLE} ORDER BY version")
    return [r[0] for r in rows.result_rows]


def migrate(client) -> list[int]:
    """Apply every migration not yet recorded, then re-sync the catalog table.

    Idempotent: every statement is ``IF NOT EXISTS``, and a migration is
    recorded only after all its statements ran. Returns the versions applied.
    """
    for stmt in schema.BOOTSTRAP:
        client.command(stmt)
    done = set(applied_versions(client))
    if done and max(done) > schema.LATEST_VERSION:
        raise SchemaError(
            f"the database is at schema version {max(done)}, newer than this program "
            f"({schema.LATEST_VERSION}); upgrade upmetr-audit"
        )
    applied = []
    for m in schema.MIGRATIONS:
        if m.version in done:
            continue
        for stmt in m.statements:
            client.command(stmt)
        client.insert(schema.MIGRATIONS_TABLE, [[m.version, m.name]], column_names=["version", "name"])
        applied.append(m.version)
        log.info("applied migration", extra={"version": m.version, "migration": m.name})
    sync_catalog(client)
    return applied


def catalog_rows() -> list[list]:
    return [
        [a.id, a.category, CATEGORY_BY_ID[a.category].label, a.label, a.resource_type or "", a.can_fail]
        for a in ACTIONS.values()
    ]


def sync_catalog(client) -> None:
    """Make ``audit.catalog_actions`` equal the catalog, swapping it in atomically
    so the materialized views never see a half-filled table."""
    want = sorted(tuple(r) for r in catalog_rows())
    have = sorted(tuple(r) for r in client.query(
        f"SELECT action, category, category_label, label, resource_type, can_fail "
        f"FROM {schema.CATALOG_TABLE}").result_rows)
    if have == want:
        return
    staging = schema.CATALOG_TABLE + "_staging"
    client.command(f"DROP TABLE IF EXISTS {staging}")
    client.command(f"CREATE TABLE {staging} AS {schema.CATALOG_TABLE}")
    client.insert(staging, catalog_rows(), column_names=[
        "action", "category", "category_label", "label", "resource_type", "can_fail"])
    client.command(f"EXCHANGE TABLES {staging} AND {schema.CATALOG_TABLE}")
    client.command(f"DROP TABLE {staging}")


def require_current_schema(client) -> None:
    versions = applied_versions(client)
    if not versions:
        raise SchemaError("the audit schema is not installed; run `upmetr-audit db migrate`")
    if max(versions) != schema.LATEST_VERSION:
        raise SchemaError(
            f"the audit schema is at version {max(versions)}, this program needs "
            f"{schema.LATEST_VERSION}; run `upmetr-audit db migrate`"
        )


# -- retention ----------------------------------------------------------------


#: Engines that keep every row: no replacing, collapsing or summing on merge.
KEEPING_ENGINES = ("MergeTree", "ReplicatedMergeTree", "SharedMergeTree")


@dataclass(frozen=True)
class TableState:
    name: str
    engine: str
    create_query: str
    rows: int

    @property
    def ttl(self) -> str | None:
        """The TTL clause(s) of the table or any of its columns, or ``None``."""
        found = re.findall(r"\bTTL\s+(.+?)(?=\s+SETTINGS\b|,\s*`|\)\s*ENGINE\b|$)",
                           self.create_query)
        return "; ".join(f.strip() for f in found) or None

    @property
    def problem(self) -> str | None:
        if self.engine not in KEEPING_ENGINES:
            return (f"{self.name} has engine {self.engine}, not a plain MergeTree "
                    f"(one that never replaces or collapses rows)")
        if self.ttl:
            return f"{self.name} has a TTL ({self.ttl}), which would delete audit records"
        return None


def table_states(client) -> list[TableState]:
    rows = client.query(
        "SELECT name, engine, create_table_query, toUInt64(ifNull(total_rows, 0)) "
        "FROM system.tables WHERE database = {db:String} ORDER BY name",
        parameters={"db": schema.DATABASE},
    ).result_rows
    return [TableState(*r) for r in rows]


def check_retention(client) -> None:
    """Raise :class:`RetentionError` unless every retained table is a MergeTree with no TTL."""
    states = {t.name: t for t in table_states(client)}
    for name in schema.RETAINED_TABLES:
        if name not in states:
            raise SchemaError(f"table {schema.DATABASE}.{name} is missing; run `upmetr-audit db migrate`")
        problem = states[name].problem
        if problem:
            raise RetentionError(
                f"refusing to start: {schema.DATABASE}.{problem}. Audit retention is indefinite; "
                f"remove it with `ALTER TABLE {schema.DATABASE}.{name} REMOVE TTL` "
                f"(a column TTL: `MODIFY COLUMN <column> REMOVE TTL`)"
            )

"""The schema as DDL text: for one server (what ``migrate`` runs) and for a
ClickHouse cluster (replicated, sharded by org), derived from ``schema.MIGRATIONS``.

The cluster form is a rewrite of the same statements, so a new migration is
covered without touching this module; a statement of a shape it does not
know raises :class:`ClusterSchemaError` (and the tests, which rewrite every
migration, fail) instead of being passed through unchanged.

Where each table goes on a cluster:

* **sharded**: a plain MergeTree with an ``org_id`` column (audit data:
  events, rejects, and any later per-org table). ``<name>_local`` is the
  Replicated engine on every shard, ``<name>`` a Distributed table over it,
  sharded by ``cityHash64(org_id)``: one org lives on one shard.
* **ingest**: the Null table. ``audit_ingest_local`` (Null) and the
  materialized views exist on every shard; ``audit_ingest`` is Distributed,
  sharded by the hash of the same org expression the views store as
  ``org_id``, so a row's view writes into the local table of the shard that
  owns its org.
* **everywhere**: every other MergeTree-family table (no ``org_id``: the
  catalog the views read, ``schema_migrations``; or rows that are replaced,
  not appended: the accounts, read with FINAL) is replicated to every node
  under its own name. These tables are small; the views and FINAL then read
  a complete local copy.

Replicated engines need ClickHouse Keeper, so the cluster DDL cannot be run
here; the tests parse it with ClickHouse's own parser (chDB) instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import schema
from .errors import UpmetrAuditError
from .store import catalog_rows

DB = schema.DATABASE
LOCAL_SUFFIX = "_local"
#: The server's default replica path shape; ``{uuid}`` is the same on every
#: replica because every CREATE runs ON CLUSTER (Atomic database).
SHARD_PATH = "/clickhouse/tables/{uuid}/{shard}"
#: One replication group across all shards: every node holds the whole table,
#: so replica names must be unique across shards.
EVERYWHERE_PATH = "/clickhouse/tables/{uuid}/all"
SHARDED, INGEST, EVERYWHERE = "sharded", "ingest", "everywhere"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CREATE_TABLE = re.compile(
    rf"\s*CREATE TABLE IF NOT EXISTS {DB}\.(?P<name>\w+) \((?P<body>.*)\) "
    r"ENGINE = (?P<engine>\w+)(?:\((?P<params>[^()]*)\))?(?P<rest>.*)", re.S)
_CREATE_VIEW = re.compile(
    rf"\s*CREATE MATERIALIZED VIEW IF NOT EXISTS {DB}\.(?P<name>\w+) TO {DB}\.(?P<target>\w+) "
    r"AS(?P<select>.*)", re.S)
_ALTER = re.compile(rf"\s*ALTER TABLE {DB}\.(?P<name>\w+) (?P<action>.+)", re.S)
#: ALTERs that change the columns also apply to the Distributed table; the
#: others (indexes, MATERIALIZE, mutations) only to the shards' local tables.
_COLUMN_ALTER = re.compile(r"(ADD|MODIFY|DROP|RENAME|COMMENT) COLUMN\b")
_CREATE_DB = f"CREATE DATABASE IF NOT EXISTS {DB}"


class ClusterSchemaError(UpmetrAuditError):
    """A statement has no cluster form, or an option is invalid."""


@dataclass(frozen=True)
class Table:
    name: str
    engine: str
    params: str
    columns: tuple[str, ...]
    placement: str
    body: str  # the column list, as the migration spells it
    rest: str  # after the engine: PARTITION BY, ORDER BY, SETTINGS


def plain_statements() -> list[str]:
    """Exactly what ``store.migrate`` runs, in order (the one source)."""
    out = list(schema.BOOTSTRAP)
    for m in schema.MIGRATIONS:
        out.extend(m.statements)
    return out


def _columns(body: str) -> tuple[str, ...]:
    names = []
    for line in body.split(",\n"):
        word = line.strip().split(" ", 1)[0]
        if word and word not in ("INDEX", "PROJECTION", "CONSTRAINT"):
            names.append(word.strip("`"))
    return tuple(names)


def _placement(name: str, engine: str, columns: tuple[str, ...]) -> str:
    if engine == "Null":
        if f"{DB}.{name}" != schema.INGEST_TABLE:
            raise ClusterSchemaError(f"{DB}.{name}: a Null table other than the ingest table")
        return INGEST
    if not engine.endswith("MergeTree"):
        raise ClusterSchemaError(f"{DB}.{name}: engine {engine} has no replicated form")
    if engine == "MergeTree" and "org_id" in columns:
        return SHARDED
    return EVERYWHERE


def tables() -> list[Table]:
    """Every table the migrations create, with where it goes on a cluster."""
    out = []
    for stmt in plain_statements():
        m = _CREATE_TABLE.fullmatch(stmt)
        if m:
            cols = _columns(m["body"])
            out.append(Table(m["name"], m["engine"], (m["params"] or "").strip(), cols,
                             _placement(m["name"], m["engine"], cols), m["body"], m["rest"]))
    return out


def views() -> set[str]:
    """The names of the materialized views the migrations create."""
    return {m["name"] for stmt in plain_statements() if (m := _CREATE_VIEW.fullmatch(stmt))}


def ingest_sharding_key() -> str:
    """The org of an ingest row, exactly as the view stores it in ``org_id``."""
    return f"cityHash64({schema.EVENT_COLUMNS_SQL['org_id']})"


SHARDING_KEY = "cityHash64(org_id)"


def check_cluster_name(cluster: str) -> str:
    if not _NAME.fullmatch(cluster or ""):
        raise ClusterSchemaError(
            f"invalid cluster name {cluster!r}: letters, digits and _ only, as in remote_servers")
    return cluster


def _replicated(engine: str, params: str, path: str, replica: str) -> str:
    args = ", ".join(a for a in (f"'{path}'", f"'{replica}'", params) if a)
    return f"Replicated{engine}({args})"


class _Rewriter:
    def __init__(self, cluster: str):
        self.cluster = check_cluster_name(cluster)
        self.on = f"ON CLUSTER {self.cluster}"
        self.tables = {t.name: t for t in tables()}
        self.views = views()
        local = [n for n, t in self.tables.items() if t.placement in (SHARDED, INGEST)]
        self._local_ref = (re.compile(rf"\b{DB}\.({'|'.join(map(re.escape, local))})(?!\w)")
                           if local else None)

    def localize(self, sql: str) -> str:
        """Inside a shard, a sharded table is its ``_local`` half."""
        if self._local_ref is None:
            return sql
        return self._local_ref.sub(lambda m: f"{DB}.{m[1]}{LOCAL_SUFFIX}", sql)

    def distributed(self, name: str, key: str) -> str:
        return (f"CREATE TABLE IF NOT EXISTS {DB}.{name} {self.on} AS {DB}.{name}{LOCAL_SUFFIX}\n"
                f"ENGINE = Distributed({self.cluster}, {DB}, {name}{LOCAL_SUFFIX}, {key})")

    def table(self, m: re.Match) -> list[str]:
        t = self.tables[m["name"]]
        if t.placement == INGEST:
            return [f"CREATE TABLE IF NOT EXISTS {DB}.{t.name}{LOCAL_SUFFIX} {self.on} ({t.body}) "
                    "ENGINE = Null",
                    self.distributed(t.name, ingest_sharding_key())]
        if t.placement == SHARDED:
            return [self.create(t, t.name + LOCAL_SUFFIX, SHARD_PATH, "{replica}"),
                    self.distributed(t.name, SHARDING_KEY)]
        return [self.create(t, t.name, EVERYWHERE_PATH, "{shard}_{replica}")]

    def create(self, t: Table, name: str, path: str, replica: str, exists: str = "IF NOT EXISTS ") -> str:
        engine = _replicated(t.engine, t.params, path, replica)
        return f"CREATE TABLE {exists}{DB}.{name} {self.on} ({t.body}) ENGINE = {engine}{t.rest}"

    def view(self, m: re.Match) -> list[str]:
        target = self.localize(f"{DB}.{m['target']}")
        return [f"CREATE MATERIALIZED VIEW IF NOT EXISTS {DB}.{m['name']} {self.on} TO {target} "
                f"AS{self.localize(m['select'])}"]

    def alter(self, m: re.Match) -> list[str]:
        if m["name"] in self.views:  # MODIFY QUERY: the views exist on every shard
            return [f"ALTER TABLE {DB}.{m['name']} {self.on} {self.localize(m['action'])}"]
        t = self.tables.get(m["name"])
        if t is None:
            raise ClusterSchemaError(f"ALTER of unknown table {DB}.{m['name']}")
        if t.placement == EVERYWHERE:
            names = [t.name]
        elif _COLUMN_ALTER.match(m["action"]):
            names = [t.name + LOCAL_SUFFIX, t.name]
        else:
            names = [t.name + LOCAL_SUFFIX]
        return [f"ALTER TABLE {DB}.{n} {self.on} {m['action']}" for n in names]

    def statement(self, stmt: str) -> list[str]:
        if stmt.strip() == _CREATE_DB:
            return [f"{_CREATE_DB} {self.on}"]
        for pattern, fn in ((_CREATE_TABLE, self.table), (_CREATE_VIEW, self.view),
                            (_ALTER, self.alter)):
            m = pattern.fullmatch(stmt)
            if m:
                return fn(m)
        first = stmt.strip().splitlines()[0] if stmt.strip() else ""
        raise ClusterSchemaError(f"no cluster form for the statement {first!r}")


def literal(value) -> str:
    """A ClickHouse literal for a catalog value (str, bool or int)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    raise TypeError(f"no literal for {type(value).__name__}")


def _catalog_load(rw: _Rewriter) -> list[str]:
    """The catalog swap of ``store.sync_catalog``, cluster-wide: the views never
    see a half-filled catalog."""
    cat = rw.tables[schema.CATALOG_TABLE.split(".", 1)[1]]
    staging = f"{cat.name}_staging"
    values = ",\n".join("(" + ", ".join(literal(v) for v in row) + ")" for row in catalog_rows())
    return [
        f"DROP TABLE IF EXISTS {DB}.{staging} {rw.on} SYNC",
        rw.create(cat, staging, EVERYWHERE_PATH, "{shard}_{replica}", exists=""),
        f"INSERT INTO {DB}.{staging} ({', '.join(cat.columns)}) VALUES\n{values}",
        f"SYSTEM SYNC REPLICA {rw.on} {DB}.{staging}",
        f"EXCHANGE TABLES {DB}.{staging} AND {schema.CATALOG_TABLE} {rw.on}",
        f"DROP TABLE {DB}.{staging} {rw.on} SYNC",
    ]


def cluster_statements(cluster: str) -> list[str]:
    """Every migration rewritten for ``cluster``, then the migration records and
    the catalog, so that ``upmetr-audit web`` and ``db check`` see a current schema."""
    rw = _Rewriter(cluster)
    out = []
    for stmt in plain_statements():
        out.extend(rw.statement(stmt))
    for m in schema.MIGRATIONS:
        out.append(f"INSERT INTO {schema.MIGRATIONS_TABLE} (version, name) "
                   f"SELECT {m.version}, {literal(m.name)} WHERE {m.version} NOT IN "
                   f"(SELECT version FROM {schema.MIGRATIONS_TABLE})")
    out.extend(_catalog_load(rw))
    return out


def render(statements: list[str], header: str) -> str:
    body = "\n\n".join(s.strip() + ";" for s in statements)
    return f"{header}\n\n{body}\n"

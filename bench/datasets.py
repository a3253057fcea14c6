"""Loading one generated data set into the three stores the page benchmarks compare.

* the product's ``audit.audit_events`` (typed columns) in chDB, loaded from
  the Parquet files of :mod:`bench.workload`;
* the stock ``otel_logs`` table of the OpenTelemetry Collector's ClickHouse
  exporter (its current template for ClickHouse ≥ 26.2) in the same chDB,
  filled from ``audit_events`` with the rows that exporter would write for the
  same OTLP records (attributes in ``LogAttributes``, the event name in
  ``EventName``, the SDK resource in ``ResourceAttributes``);
* a conventional ``audit_events`` table in PostgreSQL, copied from the same
  Parquet files, with the B-tree indexes a competent user would add.

Each is left in its steady state before anything is timed: ``OPTIMIZE TABLE
… FINAL`` in ClickHouse (the parts background merges converge to),
``VACUUM ANALYZE`` in PostgreSQL.
"""

from __future__ import annotations

import io

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from upmetr_audit.collector import store as store_mod
from upmetr_audit.collector.schema import EVENT_COLUMNS_SQL, EVENTS_TABLE
from upmetr_audit.shipper import contract as c

OTEL_TABLE = "otel.otel_logs"

#: SELECT list turning the Parquet columns into ``audit.audit_events`` values.
_TYPED_SELECT = """
    toUUID(event_id), org_id, timestamp, received_at, category, action,
    CAST(status, 'Enum8(\\'success\\' = 1, \\'failure\\' = 2)'), user_email, user_id, resource_type,
    resource_id, toIPv6(ip), user_agent, session_id, actor_type, service_name, reason, changes,
    JSONExtract(details_json, 'Map(String, String)'), trace_id, span_id"""


def load_typed(client, parquet_paths: list[str], optimize: bool = True) -> None:
    """Migrate and fill the product's table (one INSERT per Parquet file)."""
    store_mod.migrate(client)
    for path in parquet_paths:
        client.command(f"INSERT INTO {EVENTS_TABLE} ({', '.join(EVENT_COLUMNS_SQL)}) "
                       f"SELECT {_TYPED_SELECT} FROM file('{path}', Parquet)",
                       settings={"schema_inference_make_columns_nullable": 0})
    if optimize:
        client.command(f"OPTIMIZE TABLE {EVENTS_TABLE} FINAL")


_MAT_KEYS = ("k8s.cluster.name", "k8s.container.name", "k8s.deployment.name", "k8s.namespace.name",
             "k8s.node.name", "k8s.pod.name", "k8s.pod.uid", "deployment.environment.name")


def otel_ddl(text_indexes: bool) -> str:
    """The exporter's logs table (shared/reference: internal/sqltemplates/logs_table.sql),
    without TTL; text indexes on ClickHouse ≥ 26.2, bloom filters before."""
    mat = ",\n".join(
        f"    `__otel_materialized_{k}` LowCardinality(String) MATERIALIZED ResourceAttributes['{k}'] "
        "CODEC(ZSTD(1))" for k in _MAT_KEYS)
    if text_indexes:
        idx = """
    INDEX idx_trace_id TraceId TYPE text(tokenizer = 'array'),
    INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE text(tokenizer = 'array'),
    INDEX idx_res_attr_value mapValues(ResourceAttributes) TYPE text(tokenizer = 'array'),
    INDEX idx_scope_attr_key mapKeys(ScopeAttributes) TYPE text(tokenizer = 'array'),
    INDEX idx_scope_attr_value mapValues(ScopeAttributes) TYPE text(tokenizer = 'array'),
    INDEX idx_log_attr_key mapKeys(LogAttributes) TYPE text(tokenizer = 'array'),
    INDEX idx_log_attr_value mapValues(LogAttributes) TYPE text(tokenizer = 'array'),
    INDEX idx_lower_body lower(Body) TYPE text(tokenizer = 'splitByNonAlpha')"""
    else:
        idx = """
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_res_attr_value mapValues(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_scope_attr_key mapKeys(ScopeAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_scope_attr_value mapValues(ScopeAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_log_attr_key mapKeys(LogAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_log_attr_value mapValues(LogAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_lower_body lower(Body) TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 8"""
    return f"""
CREATE TABLE IF NOT EXISTS {OTEL_TABLE} (
    Timestamp DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    TraceId String CODEC(ZSTD(1)),
    SpanId String CODEC(ZSTD(1)),
    TraceFlags UInt8,
    SeverityText LowCardinality(String) CODEC(ZSTD(1)),
    SeverityNumber UInt8,
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    Body String CODEC(ZSTD(1)),
    ResourceSchemaUrl LowCardinality(String) CODEC(ZSTD(1)),
    ResourceAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    ScopeSchemaUrl LowCardinality(String) CODEC(ZSTD(1)),
    ScopeName String CODEC(ZSTD(1)),
    ScopeVersion LowCardinality(String) CODEC(ZSTD(1)),
    ScopeAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    LogAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    EventName String CODEC(ZSTD(1)),
{mat},{idx}
) ENGINE = MergeTree
PARTITION BY toDate(Timestamp)
ORDER BY (toStartOfFiveMinutes(Timestamp), ServiceName, Timestamp)
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1"""


def _attr(key: str, column: str) -> str:
    return f"'{key}', {column}"


#: The exporter's row for each stored event: what the shipper's OTLP record becomes.
_OTEL_SELECT = f"""
    toDateTime64(timestamp, 9) AS Timestamp, trace_id AS TraceId, span_id AS SpanId,
    toUInt8(trace_id != '') AS TraceFlags, 'INFO' AS SeverityText, 9 AS SeverityNumber,
    service_name AS ServiceName, '' AS Body, '' AS ResourceSchemaUrl,
    map('service.name', service_name, 'service.version', '2026.11.3',
        'deployment.environment.name', 'production',
        'host.name', concat(service_name, '-', toString(cityHash64(session_id) % 4)),
        'telemetry.sdk.language', 'python', 'telemetry.sdk.name', 'opentelemetry',
        'telemetry.sdk.version', '1.45.2') AS ResourceAttributes,
    '' AS ScopeSchemaUrl, '{c.SCOPE_NAME}' AS ScopeName, '' AS ScopeVersion, map() AS ScopeAttributes,
    mapUpdate(mapFilter((k, v) -> v != '', map(
        {_attr(c.EVENT_ID, 'toString(event_id)')}, {_attr(c.ORG_ID, 'org_id')},
        {_attr(c.USER_EMAIL, 'user_email')}, {_attr(c.STATUS, 'toString(status)')},
        {_attr(c.RESOURCE_TYPE, 'resource_type')}, {_attr(c.RESOURCE_ID, 'resource_id')},
        {_attr(c.CLIENT_ADDRESS, "replaceOne(IPv6NumToString(ip), '::ffff:', '')")},
        {_attr(c.USER_ID, 'user_id')}, {_attr(c.USER_AGENT, 'user_agent')},
        {_attr(c.SESSION_ID, 'session_id')}, {_attr(c.ACTOR_TYPE, 'actor_type')},
        {_attr(c.REASON, 'reason')}, {_attr(c.CHANGES, 'changes')})), details) AS LogAttributes,
    concat('upmetr.audit.', action) AS EventName"""


def load_otel(client, optimize: bool = True) -> str:
    """Create and fill ``otel.otel_logs`` from ``audit.audit_events``; the index kind used."""
    client.command("CREATE DATABASE IF NOT EXISTS otel")
    try:
        client.command(otel_ddl(text_indexes=True))
        kind = "text"
    except Exception:  # noqa: BLE001 - an older ClickHouse: the template's other branch
        client.command(otel_ddl(text_indexes=False))
        kind = "bloom_filter"
    cols = ("Timestamp, TraceId, SpanId, TraceFlags, SeverityText, SeverityNumber, ServiceName, Body, "
            "ResourceSchemaUrl, ResourceAttributes, ScopeSchemaUrl, ScopeName, ScopeVersion, "
            "ScopeAttributes, LogAttributes, EventName")
    months = [r[0] for r in client.query(
        f"SELECT DISTINCT toYYYYMM(timestamp) FROM {EVENTS_TABLE}").result_rows]
    for m in months:  # one month per INSERT: bounded memory
        client.command(f"INSERT INTO {OTEL_TABLE} ({cols}) SELECT {_OTEL_SELECT} FROM {EVENTS_TABLE} "
                       f"WHERE toYYYYMM(timestamp) = {int(m)}",
                       settings={"max_partitions_per_insert_block": 1000})
    if optimize:
        client.command(f"OPTIMIZE TABLE {OTEL_TABLE} FINAL")
    return kind


PG_DDL = """
CREATE TABLE audit_events (
    event_id uuid NOT NULL,
    org_id text NOT NULL,
    timestamp timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    category text NOT NULL,
    action text NOT NULL,
    status text NOT NULL CHECK (status IN ('success', 'failure')),
    user_email text NOT NULL,
    user_id text NOT NULL,
    resource_type text NOT NULL,
    resource_id text NOT NULL,
    ip inet NOT NULL,
    user_agent text NOT NULL,
    session_id text NOT NULL,
    actor_type text NOT NULL,
    service_name text NOT NULL,
    reason text NOT NULL,
    changes jsonb,
    details jsonb NOT NULL,
    trace_id text NOT NULL,
    span_id text NOT NULL
)"""

#: Built after the load (faster than maintaining them row by row).
PG_INDEXES = (
    "ALTER TABLE audit_events ADD PRIMARY KEY (event_id)",
    "CREATE INDEX audit_events_org_time ON audit_events (org_id, timestamp DESC, event_id DESC)",
    "CREATE INDEX audit_events_org_user_time ON audit_events (org_id, user_email, timestamp DESC)",
)


def load_postgres(conn, parquet_paths: list[str]) -> None:
    """Create, COPY (CSV, from the same Parquet files), index, VACUUM ANALYZE."""
    conn.execute(PG_DDL)
    copy_sql = ("COPY audit_events FROM STDIN WITH (FORMAT csv, HEADER true, FORCE_NULL (changes))")
    for path in parquet_paths:
        table = pq.read_table(path)
        table = table.rename_columns([n if n != "details_json" else "details" for n in table.column_names])
        buf = io.BytesIO()
        pacsv.write_csv(table, buf)
        with conn.cursor().copy(copy_sql) as copy:
            view = buf.getbuffer()
            for i in range(0, len(view), 1 << 20):
                copy.write(view[i:i + (1 << 20)])
        conn.commit()
    for stmt in PG_INDEXES:
        conn.execute(stmt)
    conn.commit()
    conn.autocommit = True
    conn.execute("VACUUM ANALYZE audit_events")

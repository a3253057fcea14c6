"""The ClickHouse schema: the one place its DDL lives.

Data path inside ClickHouse::

    INSERT ─► audit.audit_ingest (ENGINE = Null, the OTel exporter's columns)
                 ├─ MV audit_ingest_to_events  ─► audit.audit_events  (valid records)
                 └─ MV audit_ingest_to_rejects ─► audit.audit_rejects (refused records)

Both our collector and the official OTel Collector's ClickHouse exporter
write the exporter's column shape into ``audit_ingest``, so the OTLP→row
mapping below exists once, in SQL. The acceptance rules are the SQL form of
:func:`upmetr_audit.shipper.contract.reject_reason`, in the same order.

Migrations are versioned and append-only: never edit an applied one, add a
new one. ``audit.catalog_actions`` is derived data, re-synced from the
catalog on every migrate.
"""

from __future__ import annotations

from dataclasses import dataclass

from upmetr_audit.shipper import contract as c
from upmetr_audit.shipper.catalog import EVENT_NAME_PREFIX

DATABASE = "audit"
EVENTS_TABLE = f"{DATABASE}.audit_events"
INGEST_TABLE = f"{DATABASE}.audit_ingest"
REJECTS_TABLE = f"{DATABASE}.audit_rejects"
CATALOG_TABLE = f"{DATABASE}.catalog_actions"
MIGRATIONS_TABLE = f"{DATABASE}.schema_migrations"

#: Columns of the ingest table, in the order the contrib ClickHouse exporter
#: INSERTs them (internal/sqltemplates/logs_insert.sql, EventName last).
INGEST_COLUMNS: tuple[str, ...] = (
    "Timestamp", "TraceId", "SpanId", "TraceFlags", "SeverityText", "SeverityNumber",
    "ServiceName", "Body", "ResourceSchemaUrl", "ResourceAttributes", "ScopeSchemaUrl",
    "ScopeName", "ScopeVersion", "ScopeAttributes", "LogAttributes", "EventName",
)


def _attr(name: str) -> str:
    return f"LogAttributes['{name}']"


def _regex(pattern: str) -> str:
    """An RE2 pattern as an SQL string literal."""
    return "'" + pattern.replace("\\", "\\\\").replace("'", "\\'") + "'"


#: The dotted quad at the end of an IPv6 address (``::ffff:1.2.3.4``).
_EMBEDDED_IPV4 = _regex(r":((?:[0-9]+\.){3}[0-9]+)$")
#: An octet with a leading zero, which Python's ipaddress refuses.
_LEADING_ZERO_OCTET = _regex(r"(^|\.)0[0-9]")
#: A JSON string, to be removed before counting the brackets outside strings.
_JSON_STRING = _regex(r'"(?:[^"\\]|\\.)*"')
_BRACKET = _regex(r"[\[\]{}]")


def _json_depth(text: str) -> str:
    """How deeply objects and arrays nest in valid JSON ``text`` (contract.json_depth)."""
    brackets = f"extractAll(replaceRegexpAll({text}, {_JSON_STRING}, ''), {_BRACKET})"
    return f"arrayMax(arrayCumSum(arrayMap(b -> if(b IN ('{{', '['), 1, -1), {brackets})))"


_ACTION = f"substring(EventName, {len(EVENT_NAME_PREFIX) + 1})"
_NEEDS_RESOURCE = f"{_ACTION} IN (SELECT action FROM {CATALOG_TABLE} WHERE resource_type != '')"

#: (reason, SQL condition) in the order of contract.reject_reason.
REJECT_RULES: tuple[tuple[str, str], ...] = (
    (c.Reason.UNKNOWN_ACTION, f"{_ACTION} NOT IN (SELECT action FROM {CATALOG_TABLE})"),
    (c.Reason.MISSING_EVENT_ID, f"{_attr(c.EVENT_ID)} = ''"),
    (c.Reason.INVALID_EVENT_ID, f"NOT match({_attr(c.EVENT_ID)}, '{c.UUID_PATTERN}')"),
    (c.Reason.MISSING_ORG, f"{_attr(c.ORG_ID)} = ''"),
    (c.Reason.MISSING_USER, f"{_attr(c.USER_EMAIL)} = ''"),
    (c.Reason.MISSING_STATUS, f"{_attr(c.STATUS)} = ''"),
    (c.Reason.INVALID_STATUS, f"{_attr(c.STATUS)} NOT IN {c.STATUSES!r}"),
    (c.Reason.MISSING_RESOURCE,
     f"{_NEEDS_RESOURCE} AND ({_attr(c.RESOURCE_ID)} = '' OR {_attr(c.RESOURCE_TYPE)} = '')"),
    (c.Reason.WRONG_RESOURCE_TYPE,
     f"{_NEEDS_RESOURCE} AND ({_ACTION}, {_attr(c.RESOURCE_TYPE)}) NOT IN "
     f"(SELECT action, resource_type FROM {CATALOG_TABLE})"),
    (c.Reason.MALFORMED_IP,
     f"{_attr(c.CLIENT_ADDRESS)} != '' AND (NOT (isIPv4String({_attr(c.CLIENT_ADDRESS)})"
     f" OR isIPv6String({_attr(c.CLIENT_ADDRESS)})) OR match(extract("
     f"{_attr(c.CLIENT_ADDRESS)}, {_EMBEDDED_IPV4}), {_LEADING_ZERO_OCTET}))"),
    (c.Reason.ABSURD_TIMESTAMP,
     f"Timestamp < fromUnixTimestamp64Nano(toInt64({c.MIN_TIMESTAMP_NS}), 'UTC') OR "
     f"Timestamp > now64(9) + toIntervalNanosecond({c.MAX_FUTURE_NS})"),
    (c.Reason.INVALID_CHANGES,
     f"{_attr(c.CHANGES)} != '' AND NOT (isValidJSON({_attr(c.CHANGES)})"
     f" AND JSONType({_attr(c.CHANGES)}) = 'Object'"
     f" AND NOT startsWith({_attr(c.CHANGES)}, '\\xEF\\xBB\\xBF')"  # a byte order mark
     f" AND {_json_depth(_attr(c.CHANGES))} <= {c.MAX_CHANGES_DEPTH})"),
)


def reject_reason_sql() -> str:
    """One SQL expression: the first broken rule's reason, or '' if none."""
    args = ", ".join(f"{cond}, '{reason}'" for reason, cond in REJECT_RULES)
    return f"multiIf({args}, '')"


_IS_AUDIT = f"startsWith(EventName, '{EVENT_NAME_PREFIX}')"
_KNOWN_KEYS = "(" + ", ".join(f"'{k}'" for k in c.ATTRIBUTES) + ")"

#: The OTLP→row mapping: audit_events column -> SQL over the ingest columns.
EVENT_COLUMNS_SQL: dict[str, str] = {
    "event_id": f"toUUID({_attr(c.EVENT_ID)})",
    "org_id": _attr(c.ORG_ID),
    "timestamp": "toDateTime64(Timestamp, 6, 'UTC')",
    "received_at": "now64(6, 'UTC')",
    "category": f"splitByChar('.', {_ACTION})[1]",
    "action": _ACTION,
    "status": f"CAST({_attr(c.STATUS)}, 'Enum8(\\'success\\' = 1, \\'failure\\' = 2)')",
    "user_email": _attr(c.USER_EMAIL),
    "user_id": _attr(c.USER_ID),
    "resource_type": _attr(c.RESOURCE_TYPE),
    "resource_id": _attr(c.RESOURCE_ID),
    "ip": f"toIPv6OrZero({_attr(c.CLIENT_ADDRESS)})",
    "user_agent": _attr(c.USER_AGENT),
    "session_id": _attr(c.SESSION_ID),
    "actor_type": _attr(c.ACTOR_TYPE),
    "service_name": "ServiceName",
    "reason": _attr(c.REASON),
    "changes": _attr(c.CHANGES),
    "details": f"mapUpdate(mapFilter((k, v) -> k NOT IN {_KNOWN_KEYS}, "
               "CAST(LogAttributes, 'Map(String, String)')), "
               "if(Body = '', map(), map('body', Body)))",
    "trace_id": "TraceId",
    "span_id": "SpanId",
}


def _ingest_ddl() -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {INGEST_TABLE} (
    Timestamp DateTime64(9),
    TraceId String,
    SpanId String,
    TraceFlags UInt8,
    SeverityText LowCardinality(String),
    SeverityNumber UInt8,
    ServiceName LowCardinality(String),
    Body String,
    ResourceSchemaUrl LowCardinality(String),
    ResourceAttributes Map(LowCardinality(String), String),
    ScopeSchemaUrl LowCardinality(String),
    ScopeName String,
    ScopeVersion LowCardinality(String),
    ScopeAttributes Map(LowCardinality(String), String),
    LogAttributes Map(LowCardinality(String), String),
    EventName String
) ENGINE = Null"""


_EVENTS_DDL = f"""
CREATE TABLE IF NOT EXISTS {EVENTS_TABLE} (
    event_id UUID,
    org_id LowCardinality(String),
    timestamp DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    received_at DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    category LowCardinality(String),
    action LowCardinality(String),
    status Enum8('success' = 1, 'failure' = 2),
    user_email String CODEC(ZSTD(1)),
    user_id String CODEC(ZSTD(1)),
    resource_type LowCardinality(String),
    resource_id String CODEC(ZSTD(1)),
    ip IPv6,
    user_agent String CODEC(ZSTD(1)),
    session_id String CODEC(ZSTD(1)),
    actor_type LowCardinality(String),
    service_name LowCardinality(String),
    reason String CODEC(ZSTD(1)),
    changes String CODEC(ZSTD(1)),
    details Map(String, String) CODEC(ZSTD(1)),
    trace_id String CODEC(ZSTD(1)),
    span_id String CODEC(ZSTD(1)),
    INDEX idx_user_email user_email TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_ip ip TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_event_id event_id TYPE bloom_filter(0.001) GRANULARITY 4,
    INDEX idx_action action TYPE set(256) GRANULARITY 4
) ENGINE = MergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (org_id, timestamp, event_id)"""

_REJECTS_DDL = f"""
CREATE TABLE IF NOT EXISTS {REJECTS_TABLE} (
    received_at DateTime64(6, 'UTC'),
    reason LowCardinality(String),
    event_name String,
    org_id String,
    event_id String,
    raw String CODEC(ZSTD(3))
) ENGINE = MergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (received_at, reason)"""

_CATALOG_DDL = f"""
CREATE TABLE IF NOT EXISTS {CATALOG_TABLE} (
    action String,
    category LowCardinality(String),
    category_label String,
    label String,
    resource_type LowCardinality(String),
    can_fail Bool
) ENGINE = MergeTree ORDER BY action"""


EVENTS_VIEW = f"{DATABASE}.audit_ingest_to_events"
REJECTS_VIEW = f"{DATABASE}.audit_ingest_to_rejects"


def _events_mv_select() -> str:
    cols = ",\n    ".join(f"{sql} AS {name}" for name, sql in EVENT_COLUMNS_SQL.items())
    return f"""
SELECT
    {cols}
FROM {INGEST_TABLE}
WHERE {_IS_AUDIT} AND {reject_reason_sql()} = ''"""


def _rejects_mv_select() -> str:
    raw = "formatRowNoNewline('JSONEachRow', " + ", ".join(INGEST_COLUMNS) + ")"
    return f"""
SELECT
    now64(6, 'UTC') AS received_at,
    reason,
    EventName AS event_name,
    {_attr(c.ORG_ID)} AS org_id,
    {_attr(c.EVENT_ID)} AS event_id,
    {raw} AS raw
FROM (SELECT *, {reject_reason_sql()} AS reason FROM {INGEST_TABLE} WHERE {_IS_AUDIT})
WHERE reason != ''"""


def _events_mv_ddl() -> str:
    return (f"\nCREATE MATERIALIZED VIEW IF NOT EXISTS {EVENTS_VIEW} TO {EVENTS_TABLE} AS"
            + _events_mv_select())


def _rejects_mv_ddl() -> str:
    return (f"\nCREATE MATERIALIZED VIEW IF NOT EXISTS {REJECTS_VIEW} TO {REJECTS_TABLE} AS"
            + _rejects_mv_select())


# The views judge with the rules as they are now. When the rules change, a
# migration replaces both views' queries in place (MODIFY QUERY: a concurrent
# INSERT runs the old query or the new one, never neither or both).
_VIEWS_WITH_CURRENT_RULES = (
    f"ALTER TABLE {EVENTS_VIEW} MODIFY QUERY" + _events_mv_select(),
    f"ALTER TABLE {REJECTS_VIEW} MODIFY QUERY" + _rejects_mv_select(),
)


ORGS_TABLE = f"{DATABASE}.orgs"
USERS_TABLE = f"{DATABASE}.users"

# Accounts of the audit page. Not audit records: a new version of a row
# replaces the old one (read with FINAL), which is what an account wants.
_ORGS_DDL = f"""
CREATE TABLE IF NOT EXISTS {ORGS_TABLE} (
    org_id String,
    timezone String DEFAULT 'UTC',
    modules Array(LowCardinality(String)),
    version UInt64
) ENGINE = ReplacingMergeTree(version) ORDER BY org_id"""

_USERS_DDL = f"""
CREATE TABLE IF NOT EXISTS {USERS_TABLE} (
    email String,
    org_id String,
    role Enum8('superadmin' = 1, 'admin' = 2, 'viewer' = 3),
    password_hash String,
    disabled Bool,
    version UInt64
) ENGINE = ReplacingMergeTree(version) ORDER BY email"""


TOKENS_TABLE = f"{DATABASE}.api_tokens"

_TOKENS_DDL = f"""
CREATE TABLE IF NOT EXISTS {TOKENS_TABLE} (
    token_sha256 FixedString(64),
    email String,
    created_at DateTime64(6, 'UTC'),
    revoked Bool,
    version UInt64
) ENGINE = ReplacingMergeTree(version) ORDER BY token_sha256"""


ALERTS_TABLE = f"{DATABASE}.audit_alerts"

# Spike alerts (collector/detector.py). Every state change of an alert is a new
# row with the next version, so the table is the alert's full history; the
# current state is the newest version (rules.CURRENT_ALERTS_SQL). Rows are
# deterministic for one evaluation, so two detectors writing the same change
# write the same row, and readers take one per (alert_id, version).
_ALERTS_DDL = f"""
CREATE TABLE IF NOT EXISTS {ALERTS_TABLE} (
    alert_id UUID,
    version UInt32,
    change Enum8('opened' = 1, 'updated' = 2, 'escalated' = 3, 'acknowledged' = 4, 'resolved' = 5),
    changed_at DateTime64(6, 'UTC'),
    changed_by String,
    org_id LowCardinality(String),
    rule LowCardinality(String),
    key_type Enum8('user' = 1, 'ip' = 2, 'org' = 3),
    key String,
    state Enum8('firing' = 1, 'acknowledged' = 2, 'resolved' = 3),
    severity Enum8('warning' = 1, 'critical' = 2, 'emergency' = 3),
    value Float64,
    threshold Float64,
    failures UInt64,
    first_seen DateTime64(6, 'UTC'),
    last_seen DateTime64(6, 'UTC'),
    window_start DateTime64(6, 'UTC'),
    window_end DateTime64(6, 'UTC'),
    last_fired_at DateTime64(6, 'UTC'),
    samples Array(String)
) ENGINE = MergeTree
ORDER BY (org_id, alert_id, version)"""


SEALS_TABLE = f"{DATABASE}.audit_seals"
SEAL_LEAVES_TABLE = f"{DATABASE}.audit_seal_leaves"
ERASURES_TABLE = f"{DATABASE}.audit_erasures"

# Tamper evidence (collector/sealing.py, docs/integrity.md). Every event gets a
# random 16-byte salt when it is stored; its leaf hash commits to the personal
# fields only through SHA-256(salt, fields), so erasing a person zeroes the salt
# (crypto-shredding) and keeps the seals verifiable. The migration fills the
# salt of events stored before it once; never MATERIALIZE this column again:
# that would draw new salts and break every seal.
#: Columns of audit_events that are not event data (never shown or exported).
INTERNAL_EVENT_COLUMNS: tuple[str, ...] = ("pii_salt",)

_EVENTS_SALT = (
    f"ALTER TABLE {EVENTS_TABLE} ADD COLUMN IF NOT EXISTS pii_salt FixedString(16) "
    "DEFAULT randomFixedString(16) CODEC(NONE)",
    f"ALTER TABLE {EVENTS_TABLE} MATERIALIZE COLUMN pii_salt SETTINGS mutations_sync = 2",
    # Seals read windows of received_at; it follows timestamp closely, so a
    # minmax index skips most granules.
    f"ALTER TABLE {EVENTS_TABLE} ADD INDEX IF NOT EXISTS idx_received_at received_at "
    "TYPE minmax GRANULARITY 1",
    f"ALTER TABLE {EVENTS_TABLE} MATERIALIZE INDEX idx_received_at SETTINGS mutations_sync = 2",
)

# One row per sealed window (a rerun or a second sealer writes an identical
# row; readers take one per (org_id, window_start, seal_hash)).
_SEALS_DDL = f"""
CREATE TABLE IF NOT EXISTS {SEALS_TABLE} (
    org_id LowCardinality(String),
    window_start DateTime64(6, 'UTC'),
    window_end DateTime64(6, 'UTC'),
    event_count UInt64,
    merkle_root String,
    leaf_version UInt8,
    prev_seal_hash String,
    seal_hash String,
    key_id String,
    signature String,
    sealed_at DateTime64(6, 'UTC')
) ENGINE = MergeTree
ORDER BY (org_id, window_start)"""

# The leaves of each sealed window, so that verify can name the events a
# modified window differs in. Self-authenticating: their Merkle root must
# equal the signed one before they are believed.
_SEAL_LEAVES_DDL = f"""
CREATE TABLE IF NOT EXISTS {SEAL_LEAVES_TABLE} (
    org_id LowCardinality(String),
    window_start DateTime64(6, 'UTC'),
    received_at DateTime64(6, 'UTC'),
    event_id UUID,
    leaf FixedString(32) CODEC(NONE)
) ENGINE = MergeTree
ORDER BY (org_id, window_start, event_id)"""

# The personal-data commitment of each erased event, kept after its salt and
# values are gone; the list of each erasure is signed in the digest files.
_ERASURES_DDL = f"""
CREATE TABLE IF NOT EXISTS {ERASURES_TABLE} (
    erasure_id String,
    org_id LowCardinality(String),
    event_id UUID,
    commitment String,
    erased_at DateTime64(6, 'UTC')
) ENGINE = MergeTree
ORDER BY (org_id, event_id)"""


#: Shown when a writer INSERTs into the ingest table without EventName.
NO_EVENT_NAME_ERROR = (
    "audit_ingest: this writer sent no EventName column (a clickhouse exporter or rotel from "
    "before EventName support): upgrade it. The batch is refused, not stored without its name")

# A writer older than EventName support INSERTs the other 15 columns; EventName
# would default to '' and the views would silently discard every row. The
# default is evaluated only for an INSERT that omits the column, and fails it:
# the official Collector then keeps the batch in its persistent queue and
# retries, logging this message, until it is upgraded.
_INGEST_EVENT_NAME_GUARD = (
    f"ALTER TABLE {INGEST_TABLE} MODIFY COLUMN EventName String "
    f"DEFAULT toString(throwIf(Timestamp = Timestamp, '{NO_EVENT_NAME_ERROR}'))")


# Storage of audit_events (benchmark P3, docs/benchmarks.md): each choice measured
# on a copy of the 1M-event benchmark set. `details` values and `user_agent` repeat
# (route, method, a few agents per user), so they are dictionary-encoded; the
# values of `details` may also be high-cardinality (request ids): LowCardinality
# with ZSTD stays no larger than String with ZSTD there (measured), only slower
# to insert. The type changes are one mutation that rewrites those two columns,
# values unchanged (leaf hashes identical); the codec changes apply as parts are
# written or merged. Not worth it (measured, no gain or worse): ZSTD(3) on
# session_id, trace_id, span_id, resource_id, changes; DoubleDelta or T64 on the
# timestamps; LowCardinality for session_id. Emails and user ids stay String:
# their cardinality is the number of people.
_EVENTS_STORAGE = (
    f"ALTER TABLE {EVENTS_TABLE} "
    "MODIFY COLUMN details Map(LowCardinality(String), LowCardinality(String)) CODEC(ZSTD(1)), "
    "MODIFY COLUMN user_agent LowCardinality(String) CODEC(ZSTD(1)) "
    "SETTINGS mutations_sync = 2",
    f"ALTER TABLE {EVENTS_TABLE} "
    "MODIFY COLUMN event_id UUID CODEC(ZSTD(6)), "
    "MODIFY COLUMN ip IPv6 CODEC(ZSTD(1)), "
    "MODIFY COLUMN user_email String CODEC(ZSTD(3)), "
    "MODIFY COLUMN user_id String CODEC(ZSTD(3)), "
    "MODIFY COLUMN category LowCardinality(String) CODEC(ZSTD(1)), "
    "MODIFY COLUMN action LowCardinality(String) CODEC(ZSTD(1)), "
    "MODIFY COLUMN resource_type LowCardinality(String) CODEC(ZSTD(1)), "
    "MODIFY COLUMN actor_type LowCardinality(String) CODEC(ZSTD(1)), "
    "MODIFY COLUMN service_name LowCardinality(String) CODEC(ZSTD(1)) "
    "SETTINGS mutations_sync = 2",
)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "audit events, ingest mapping, rejects, catalog", (
        _CATALOG_DDL,
        _EVENTS_DDL,
        _REJECTS_DDL,
        _ingest_ddl(),
        _events_mv_ddl(),
        _rejects_mv_ddl(),
    )),
    Migration(2, "accounts of the audit page: orgs and users", (_ORGS_DDL, _USERS_DDL)),
    Migration(3, "personal API tokens (stored as SHA-256)", (_TOKENS_DDL,)),
    Migration(4, "failed-login spike alerts and their history", (_ALERTS_DDL,)),
    Migration(5, "tamper evidence: event salts, seals, seal leaves, erasures", (
        *_EVENTS_SALT, _SEALS_DDL, _SEAL_LEAVES_DDL, _ERASURES_DDL)),
    Migration(6, "refuse ingest writers that send no EventName", (_INGEST_EVENT_NAME_GUARD,)),
    Migration(7, "smaller audit_events: dictionary-encoded details and user_agent, ZSTD codecs",
              _EVENTS_STORAGE),
    Migration(8, "web sessions issued before sessions_valid_after (sign-out, new password) end", (
        f"ALTER TABLE {USERS_TABLE} ADD COLUMN IF NOT EXISTS sessions_valid_after "
        "DateTime64(6, 'UTC') DEFAULT toDateTime64(0, 6, 'UTC')",)),
    Migration(9, "parity of the SQL and Python rules: an IPv4 octet with a leading zero "
                 "inside an IPv6 address, changes with a byte order mark or nested over 64 levels",
              _VIEWS_WITH_CURRENT_RULES),
)

LATEST_VERSION = MIGRATIONS[-1].version

_MIGRATIONS_DDL = f"""
CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
    version UInt32,
    name String,
    applied_at DateTime64(6, 'UTC') DEFAULT now64(6, 'UTC')
) ENGINE = MergeTree ORDER BY version"""

BOOTSTRAP: tuple[str, ...] = (f"CREATE DATABASE IF NOT EXISTS {DATABASE}", _MIGRATIONS_DDL)

#: Tables whose retention must stay indefinite: MergeTree family, no TTL.
RETAINED_TABLES: tuple[str, ...] = ("audit_events", "audit_rejects", "audit_alerts",
                                   "audit_seals", "audit_seal_leaves", "audit_erasures")

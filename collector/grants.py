"""Least-privilege ClickHouse users for a server or cluster deployment.

One role per application, one user per role (``upmetr_<app>``, with the role as
its default). Only SELECT and INSERT are ever granted: no application user
can ALTER, DELETE, TRUNCATE or DROP, so the database itself keeps audit rows
immutable. Migrations and account administration (``db migrate``, ``users``,
``tokens``, ``orgs``) run as the operator's admin user.

The tables come from ``cluster.tables()`` (the migrations), so a new table is
covered by the rules below without editing this module: every reader sees it
(the accounts excepted), and only the application named here may write it.
Passwords come from the environment (``UPMETR_AUDIT_DB_PASSWORD_<APP>``) and
are printed only as salted SHA-256. Roles and users are created OR REPLACE:
re-applying sets exactly this matrix (and the current passwords), dropping
any grant added by hand.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass

from . import cluster, schema
from .errors import ConfigError

DB = schema.DATABASE


def _name(table: str) -> str:
    return table.split(".", 1)[1]


#: Password hashes and token hashes: only the web app (sign-in) reads them.
ACCOUNT_TABLES = tuple(_name(t) for t in (schema.USERS_TABLE, schema.TOKENS_TABLE, schema.ORGS_TABLE))
INGEST = _name(schema.INGEST_TABLE)
SEALS = (_name(schema.SEALS_TABLE), _name(schema.SEAL_LEAVES_TABLE))
ALERTS = _name(schema.ALERTS_TABLE)
USERS = _name(schema.USERS_TABLE)


@dataclass(frozen=True)
class App:
    name: str
    reads_accounts: bool | None  # None: reads nothing
    inserts: tuple[str, ...]
    why: str
    #: Role settings: shard pruning by org for readers, and acknowledged
    #: inserts that are on the shards (not in a local Distributed queue).
    settings: tuple[str, ...] = ()

    @property
    def role(self) -> str:
        return f"upmetr_audit_{self.name}"

    @property
    def user(self) -> str:
        return f"upmetr_{self.name}"

    @property
    def password_env(self) -> str:
        return f"UPMETR_AUDIT_DB_PASSWORD_{self.name.upper()}"


_READ = ("optimize_skip_unused_shards = 1",)
_WRITE = ("distributed_foreground_insert = 1",)

APPS: tuple[App, ...] = (
    App("collector", None, (INGEST,),
        "the OpenTelemetry Collector's clickhouse exporter: INSERT into the ingest table only",
        _WRITE),
    App("web", True, (ALERTS, USERS),
        "the audit page: reads; its own events go through the collector; acknowledging an "
        "alert appends a state change to audit_alerts; signing out appends the user's row "
        "with a new sessions_valid_after (ending the user's sessions everywhere)",
        # the page re-reads the same few granules: keep them decompressed (deploy.md)
        _READ + _WRITE + ("use_uncompressed_cache = 1",)),
    App("sealer", False, SEALS, "reads events, appends seals and their leaves", _READ + _WRITE),
    App("detector", False, (ALERTS,), "reads events, appends alert state changes", _READ + _WRITE),
    App("grafana", False, (), "dashboards: read-only, no account tables", _READ),
)


def _targets(table: cluster.Table, clustered: bool) -> list[str]:
    """A sharded table is also read and written as its ``_local`` half on the
    shards (with an inter-server secret, remote shards check the initial user)."""
    names = [table.name]
    if clustered and table.placement in (cluster.SHARDED, cluster.INGEST):
        names.append(table.name + cluster.LOCAL_SUFFIX)
    return [f"{DB}.{n}" for n in names]


def _password_hash(password: str) -> tuple[str, str]:
    salt = secrets.token_hex(16)
    return hashlib.sha256((password + salt).encode()).hexdigest(), salt


def grant_statements(cluster_name: str | None = None, environ=None) -> list[str]:
    """Roles, GRANTs and users. Raises :class:`ConfigError` when a password is missing."""
    environ = os.environ if environ is None else environ
    missing = [a.password_env for a in APPS if not environ.get(a.password_env)]
    if missing:
        raise ConfigError(f"set the database passwords first: {', '.join(missing)}")
    on = f" ON CLUSTER {cluster.check_cluster_name(cluster_name)}" if cluster_name else ""
    tables = cluster.tables()
    out = []
    for app in APPS:
        settings = f" SETTINGS {', '.join(app.settings)}" if app.settings else ""
        out.append(f"CREATE ROLE OR REPLACE {app.role}{on}{settings}")
        for t in tables:
            for target in _targets(t, bool(cluster_name)):
                if app.reads_accounts is not None and t.placement != cluster.INGEST and (
                        app.reads_accounts or t.name not in ACCOUNT_TABLES):
                    out.append(f"GRANT{on} SELECT ON {target} TO {app.role}")
                if t.name in app.inserts:
                    out.append(f"GRANT{on} INSERT ON {target} TO {app.role}")
        digest, salt = _password_hash(environ[app.password_env])
        out.append(f"CREATE USER OR REPLACE {app.user}{on} IDENTIFIED WITH sha256_hash "
                   f"BY '{digest}' SALT '{salt}'")
        out.append(f"GRANT{on} {app.role} TO {app.user}")
        out.append(f"ALTER USER {app.user}{on} DEFAULT ROLE {app.role}")
    return out


def header(cluster_name: str | None) -> str:
    lines = ["-- Upmetr Audit: ClickHouse roles, grants and users"
             + (f" (cluster {cluster_name})" if cluster_name else ""),
             "-- Only SELECT and INSERT are granted; no user may ALTER, DELETE, TRUNCATE or DROP."]
    lines += [f"--   {a.user}: {a.why}" for a in APPS]
    return "\n".join(lines)

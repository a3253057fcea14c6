"""The ``upmetr-audit`` command line.

Library code raises :mod:`errors`; this module alone turns them into exit
codes and one-line messages.
"""

from __future__ import annotations

import functools
import os
import secrets
import signal
import threading

import click

from . import logs, schema
from . import store as store_mod
from .errors import UpmetrAuditError
from .settings import SETTINGS, default_map_for, load_config, options


def _fail_cleanly(f):
    """Turn library errors into ``Error: <one line>`` and exit 1."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except (UpmetrAuditError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
    return wrapper


def _resolve_url(data_dir: str, clickhouse_url: str | None) -> str:
    return clickhouse_url or store_mod.default_url(data_dir)


def _load_config(ctx: click.Context, _param, path):
    if path:
        ctx.default_map = default_map_for(ctx.command, load_config(path))
    return path


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=False,
              callback=_load_config, envvar="UPMETR_AUDIT_CONFIG", show_envvar=True,
              help="TOML file of settings (keys as the option names, e.g. data_dir).")
@click.version_option(package_name="upmetr-audit")
def cli():
    """Upmetr Audit: an audit log on OpenTelemetry and ClickHouse."""


# -- db -------------------------------------------------------------------------


@cli.group()
def db():
    """Schema migrations and health of the ClickHouse store."""


@db.command()
@options("data_dir", "clickhouse_url")
@_fail_cleanly
def migrate(data_dir, clickhouse_url):
    """Apply pending schema migrations (idempotent)."""
    store = store_mod.open_store(_resolve_url(data_dir, clickhouse_url))
    try:
        applied = store_mod.migrate(store.client)
    finally:
        store.close()
    if applied:
        click.echo(f"applied migrations {', '.join(map(str, applied))}; "
                   f"schema version {schema.LATEST_VERSION}")
    else:
        click.echo(f"schema is up to date (version {schema.LATEST_VERSION})")


@db.command()
@options("data_dir", "clickhouse_url")
@_fail_cleanly
def check(data_dir, clickhouse_url):
    """Report the schema version, the table engines and the retention state.

    Exits 1 when the schema is behind or a retained table could lose data.
    """
    store = store_mod.open_store(_resolve_url(data_dir, clickhouse_url))
    try:
        versions = store_mod.applied_versions(store.client)
        states = store_mod.table_states(store.client) if versions else []
    finally:
        store.close()
    current = max(versions) if versions else 0
    click.echo(f"store: {store.url}")
    click.echo(f"schema version: {current} (this program: {schema.LATEST_VERSION})")
    problems = []
    if current != schema.LATEST_VERSION:
        problems.append("schema is not current; run `upmetr-audit db migrate`")
    for t in states:
        retained = t.name in schema.RETAINED_TABLES
        retention = ("TTL " + t.ttl) if t.ttl else ("indefinite" if retained else "-")
        click.echo(f"  {t.name:<28} {t.engine:<18} rows={t.rows:<10} retention={retention}")
        if retained and t.problem:
            problems.append(t.problem)
    if problems:
        raise click.ClickException("; ".join(problems))
    if versions:
        click.echo("retention: indefinite (MergeTree, no TTL) on " + ", ".join(schema.RETAINED_TABLES))


# -- collector and serve --------------------------------------------------------


def _tokens(ingest_tokens: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in ingest_tokens.split(",") if t.strip())


def _embedded_token(data_dir: str) -> str:
    """The token ``serve`` generates into the data dir on first start (mode 0600)."""
    path = os.path.join(data_dir, "ingest-token")
    try:
        with open(path) as f:
            token = f.read().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    os.makedirs(data_dir, exist_ok=True)
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def _run_collector(*, url, settings, log_level, summary_interval, demo=False):
    from .app import Collector
    from .sample import SampleTraffic

    logs.setup(log_level)
    if settings.insecure_no_auth and not settings.ingest_tokens:
        click.secho("WARNING: --insecure-no-auth: anyone who can reach the OTLP ports can "
                    "write audit records", fg="yellow", err=True)
    store = store_mod.open_store(url)
    try:
        store_mod.migrate(store.client)
        collector = Collector(store, settings)
        collector.start()
    except BaseException:
        store.close()
        raise
    http_url = f"http://{settings.otlp_http_addr.rsplit(':', 1)[0]}:{collector.http.port}"
    click.echo(f"store      {store.url}")
    click.echo(f"OTLP/HTTP  {http_url}/v1/logs   (metrics {http_url}/metrics)")
    click.echo(f"OTLP/gRPC  {settings.otlp_grpc_addr.rsplit(':', 1)[0]}:{collector.grpc.port}")
    if settings.ingest_tokens:
        click.echo(f"send with  Authorization: Bearer {settings.ingest_tokens[0]}")
    sample = None
    if demo:
        token = settings.ingest_tokens[0] if settings.ingest_tokens else None
        sample = SampleTraffic(f"{http_url}/v1/logs", token)
        sample.start()
        click.echo("demo       sending sample audit events through the OTel SDK")

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    last = None
    while not stop.wait(summary_interval or None):
        now = collector.summary()
        if now != last:
            click.echo("ingest     " + " ".join(f"{k}={v}" for k, v in now.items()))
            last = now
    click.echo("shutting down: finishing in-flight batches")
    if sample:
        sample.stop()
    drained = collector.shutdown()
    store.close()
    click.echo("ingest     " + " ".join(f"{k}={v}" for k, v in collector.summary().items()))
    if not drained:
        raise click.ClickException("shutdown timed out before every batch was committed")


def _collector_settings(ingest_tokens, insecure_no_auth, otlp_http_addr, otlp_grpc_addr,
                        max_body_bytes, queue_size_records):
    from .app import CollectorSettings
    return CollectorSettings(
        otlp_http_addr=otlp_http_addr, otlp_grpc_addr=otlp_grpc_addr,
        ingest_tokens=_tokens(ingest_tokens), insecure_no_auth=insecure_no_auth,
        max_body_bytes=max_body_bytes, queue_size_records=queue_size_records,
    )


_COLLECTOR_OPTIONS = ("data_dir", "clickhouse_url", "otlp_http_addr", "otlp_grpc_addr",
                      "ingest_tokens", "insecure_no_auth", "max_body_bytes",
                      "queue_size_records", "summary_interval", "log_level")


@cli.command()
@options(*_COLLECTOR_OPTIONS, "web_addr")
@click.option("--demo", is_flag=True, envvar="UPMETR_AUDIT_DEMO", show_envvar=True,
              help="Also send sample audit events through the OTel SDK to this collector.")
@_fail_cleanly
def serve(data_dir, clickhouse_url, ingest_tokens, insecure_no_auth, summary_interval,
          log_level, web_addr, demo, **collector_opts):
    """Run everything in one process: the OTLP receivers and the ClickHouse writer.

    With the embedded store (the default) this is the only way to run: a chDB
    folder can be opened by one process. Without tokens it generates one into
    the data dir and prints it. Stops cleanly on Ctrl-C or SIGTERM.
    """
    if not _tokens(ingest_tokens) and not insecure_no_auth:
        ingest_tokens = _embedded_token(data_dir)
    settings = _collector_settings(ingest_tokens, insecure_no_auth, **collector_opts)
    _run_collector(url=_resolve_url(data_dir, clickhouse_url), settings=settings,
                   log_level=log_level, summary_interval=summary_interval, demo=demo)


@cli.command()
@options(*_COLLECTOR_OPTIONS)
@_fail_cleanly
def collector(data_dir, clickhouse_url, ingest_tokens, insecure_no_auth, summary_interval,
              log_level, **collector_opts):
    """Run only the OTLP collector, for server mode (a ClickHouse server URL).

    Events are de-duplicated by id inside one collector process; run one
    collector per ClickHouse database until the cluster issue adds more.
    """
    settings = _collector_settings(ingest_tokens, insecure_no_auth, **collector_opts)
    _run_collector(url=_resolve_url(data_dir, clickhouse_url), settings=settings,
                   log_level=log_level, summary_interval=summary_interval)


def main() -> None:
    cli(prog_name="upmetr-audit")


__all__ = ["cli", "main", "SETTINGS"]

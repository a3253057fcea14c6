"""The ``upmetr-audit`` command line.

Library code raises :mod:`errors`; this module alone turns them into exit
codes and one-line messages.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
import time

import click

from . import logs, schema, secret
from . import store as store_mod
from .errors import UpmetrAuditError
from .settings import ALERT_OPTIONS, SETTINGS, default_map_for, load_config, options


def _fail_cleanly(f):
    """Turn library errors and unusable paths into ``Error: <one line>`` and exit 1."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except (UpmetrAuditError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:  # a missing, unwritable or wrong-kind path
            where = f"{exc.filename}: " if exc.filename is not None else ""
            raise click.ClickException(f"{where}{exc.strerror or exc}") from None
        except ImportError as exc:
            raise click.ClickException(
                f"this command needs the server extra ({exc.name} is missing): "
                f"pip install 'upmetr-audit[server]'") from None
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


@db.command("schema")
@click.option("--cluster", default=None, envvar="UPMETR_AUDIT_CLUSTER", show_envvar=True,
              help="Cluster name (remote_servers): replicated, sharded DDL with ON CLUSTER. "
              "Without it: exactly what `db migrate` runs.")
@click.option("--shards-by", type=click.Choice(["org"]), default="org", show_default=True,
              envvar="UPMETR_AUDIT_SHARDS_BY", show_envvar=True,
              help="Sharding key of the Distributed tables (with --cluster).")
@_fail_cleanly
def db_schema(cluster, shards_by):
    """Print the DDL of every table, view and migration."""
    from . import cluster as cluster_mod
    if cluster is None:
        click.echo(cluster_mod.render(cluster_mod.plain_statements(),
                                      f"-- Upmetr Audit schema version {schema.LATEST_VERSION}: "
                                      "what `upmetr-audit db migrate` runs"), nl=False)
        return
    statements = cluster_mod.cluster_statements(cluster)
    click.echo(cluster_mod.render(statements, (
        f"-- Upmetr Audit schema version {schema.LATEST_VERSION} for cluster {cluster}, "
        f"sharded by {shards_by} (cityHash64(org_id)).\n"
        "-- Run once on any node with clickhouse-client --multiquery (needs ClickHouse Keeper).")),
        nl=False)


@db.command("grants")
@click.option("--cluster", default=None, envvar="UPMETR_AUDIT_CLUSTER", show_envvar=True,
              help="Cluster name: ON CLUSTER, and grants on the _local tables too.")
@click.option("--apply", is_flag=True, envvar="UPMETR_AUDIT_APPLY", show_envvar=True,
              help="Run the statements against --clickhouse-url (an admin user) instead of printing.")
@options("clickhouse_url")
@_fail_cleanly
def db_grants(cluster, apply, clickhouse_url):
    """Print (or apply) the roles, GRANTs and users of the applications.

    Passwords come from UPMETR_AUDIT_DB_PASSWORD_{COLLECTOR,WEB,SEALER,DETECTOR,GRAFANA}.
    """
    from . import grants
    from .cluster import render
    statements = grants.grant_statements(cluster)
    if not apply:
        click.echo(render(statements, grants.header(cluster)), nl=False)
        return
    if not clickhouse_url or not clickhouse_url.startswith(("http://", "https://")):
        raise click.ClickException("--apply needs --clickhouse-url http(s)://admin:pass@host:8123 "
                                   "(chDB has no users or grants)")
    store = store_mod.open_store(clickhouse_url)
    try:
        for stmt in statements:
            store.client.command(stmt)
    finally:
        store.close()
    click.echo(f"applied {len(statements)} statements: users "
               + ", ".join(a.user for a in grants.APPS))


# -- collector and serve --------------------------------------------------------


def _tokens(ingest_tokens: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in ingest_tokens.split(",") if t.strip())


def _embedded_token(data_dir: str) -> str:
    """The token ``serve`` generates into the data dir on first start (mode 0600)."""
    return secret.read_or_create(os.path.join(data_dir, "ingest-token"), 24)


def _run_collector(*, url, settings, log_level, summary_interval, demo_dir=None, web=None,
                   alerting=None, seal_interval=None):
    from .app import Collector

    logs.setup(log_level)
    # Handlers first: a SIGTERM during start-up still means a graceful stop.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if settings.insecure_no_auth and not settings.ingest_tokens:
        click.secho("WARNING: --insecure-no-auth: anyone who can reach the OTLP ports can "
                    "write audit records", fg="yellow", err=True)
    if seal_interval:  # a bad keys folder fails before the store is opened or anything is shown
        from . import keys
        keys.load_or_generate(keys.keys_dir_for(web["data_dir"]), time.time_ns() // 1000)
    # Every part started is stopped again, in reverse order, if a later one fails to start.
    with contextlib.ExitStack() as started:
        store = store_mod.open_store(url)
        started.callback(store.close)
        store_mod.migrate(store.client)
        if store.embedded:  # this process alone has the folder: undo what a killed `erase` left
            from .erasure import clear_leftovers
            clear_leftovers(store.client)
        store.start_purging()  # long-running: keep chDB's freed pages from piling up in RSS
        collector = Collector(store, settings)
        collector.start()
        started.callback(collector.shutdown)
        http_url = f"http://{settings.otlp_http_addr.rsplit(':', 1)[0]}:{collector.http.port}"
        click.echo(f"store      {store.url}")
        web_server = None
        if web is not None:  # before the endpoints: a busy web port fails before they are shown
            web_server = _start_web(store, collector, settings, http_url, **web)
            started.callback(web_server.shutdown)
        click.echo(f"OTLP/HTTP  {http_url}/v1/logs   (metrics {http_url}/metrics)")
        click.echo(f"OTLP/gRPC  {settings.otlp_grpc_addr.rsplit(':', 1)[0]}:{collector.grpc.port}")
        if settings.ingest_tokens:
            click.echo(f"send with  Authorization: Bearer {settings.ingest_tokens[0]}")
        detector = None
        if alerting is not None:
            from .alerts_cli import DetectorThread, describe
            detector = DetectorThread(store.client, web["data_dir"], alerting)
            detector.start()
            started.callback(detector.stop)
            click.echo("detector   " + describe(alerting))
        sealer = None
        if seal_interval:
            from .integrity_job import IntegrityJob
            sealer = IntegrityJob(store.client, web["data_dir"], interval_s=seal_interval)
            sealer.start()
            started.callback(sealer.stop)
            click.echo(f"sealer     every {seal_interval:g}s: hourly windows, Ed25519 keys and "
                       f"digests under {web['data_dir']}")
        demo = None
        if demo_dir:
            token = settings.ingest_tokens[0] if settings.ingest_tokens else None
            backfill = 7 if not store.client.command("SELECT count() FROM audit.audit_events") else 0
            demo = _LiveDemo(f"{http_url}/v1/logs", token, demo_dir, backfill_days=backfill)
            click.echo("demo       live audit traffic through the shipper"
                       + (f", after {backfill} days of history" if backfill else ""))
        started.pop_all()  # all started: from here on the shutdown below stops them

    last = None
    while not stop.wait(summary_interval or None):
        now = collector.summary()
        if now != last:
            click.echo("ingest     " + " ".join(f"{k}={v}" for k, v in now.items()))
            last = now
    click.echo("shutting down: finishing in-flight batches")
    if demo:
        demo.stop()
    if detector:
        detector.stop()
    if sealer:
        sealer.stop()
    if web_server:
        web_server.shutdown()
    drained = collector.shutdown()
    store.close()
    click.echo("ingest     " + " ".join(f"{k}={v}" for k, v in collector.summary().items()))
    if not drained:
        raise click.ClickException("shutdown timed out before every batch was committed")


def _start_web(store, collector, settings, http_url, *, addr, data_dir, admin_org, alert_rules=None):
    """The audit page in this process, its own events sent to this collector."""
    from upmetr_audit.collector.app import parse_addr
    from upmetr_audit.shipper import AuditLogger
    from upmetr_audit.web.server import WebServer, first_superadmin

    token = settings.ingest_tokens[0] if settings.ingest_tokens else None
    audit = AuditLogger(service_name="upmetr-audit-web", endpoint=f"{http_url}/v1/logs",
                        spool_dir=os.path.join(data_dir, "spool", "upmetr-audit-web"),
                        headers={"authorization": f"Bearer {token}"} if token else None)
    host, port = parse_addr(addr)
    server = WebServer(store.client, host, port, data_dir, audit_emit=audit.emit, alert_rules=alert_rules)
    server.start()
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    click.echo(f"web        http://{shown}:{server.port}/")
    created = first_superadmin(store.client, admin_org)
    if created:
        click.echo(f"login      {created[0]} / {created[1]}   (shown once; change it with "
                   f"`upmetr-audit users set-password`)")
    server.audit = audit
    return server


class _LiveDemo:
    """Demo traffic in a thread of ``serve``: optional backfill, then live."""

    def __init__(self, endpoint, token, spool_dir, backfill_days=0):
        from upmetr_audit.shipper import AuditLogger
        from upmetr_audit.shipper.demo import DemoTraffic
        self.audit = AuditLogger(service_name="upmetr-demo", endpoint=endpoint, spool_dir=spool_dir,
                                 headers={"authorization": f"Bearer {token}"} if token else None)
        self.traffic = DemoTraffic(self.audit)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(backfill_days,), name="demo",
                                       daemon=True)
        self.thread.start()

    def _run(self, backfill_days):
        if backfill_days:
            self.traffic.backfill(backfill_days)
        self.traffic.run_live(rate_per_s=2.0, stop=self.stop_event, attack_every_s=300)

    def stop(self):
        self.stop_event.set()
        self.thread.join(30)
        self.audit.shutdown(timeout_s=5)


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
@options(*_COLLECTOR_OPTIONS, "web_addr", "seal_interval", *ALERT_OPTIONS)
@click.option("--demo", is_flag=True, envvar="UPMETR_AUDIT_DEMO", show_envvar=True,
              help="Also run demo traffic through the shipper into this collector "
                   "(7 days of history first when the store is empty).")
@_fail_cleanly
def serve(data_dir, clickhouse_url, ingest_tokens, insecure_no_auth, summary_interval,
          log_level, web_addr, seal_interval, demo, **opts):
    """Run everything in one process: the OTLP receivers, the ClickHouse writer
    and the audit page.

    With the embedded store (the default) this is the only way to run: a chDB
    folder can be opened by one process. Without tokens it generates one into
    the data dir and prints it. On a store with no superadmin it creates one
    and prints its one-time password. Stops cleanly on Ctrl-C or SIGTERM.
    """
    if not _tokens(ingest_tokens) and not insecure_no_auth:
        ingest_tokens = _embedded_token(data_dir)
    alerting = {k: opts.pop(k) for k in ALERT_OPTIONS}
    from . import rules
    ruleset = rules.load(alerting["alert_rules"])   # a bad rules file fails before anything starts
    settings = _collector_settings(ingest_tokens, insecure_no_auth, **opts)
    _run_collector(url=_resolve_url(data_dir, clickhouse_url), settings=settings,
                   log_level=log_level, summary_interval=summary_interval,
                   demo_dir=os.path.join(data_dir, "spool", "upmetr-demo") if demo else None,
                   web={"addr": web_addr, "data_dir": data_dir,
                        "admin_org": "org_acme" if demo else "default", "alert_rules": ruleset},
                   alerting=alerting, seal_interval=seal_interval)


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


@cli.command()
@options("data_dir", "otlp_http_addr", "ingest_tokens")
@click.option("--endpoint", "demo_endpoint", envvar="UPMETR_AUDIT_DEMO_ENDPOINT", show_envvar=True,
              help="OTLP/HTTP logs URL. Default: http://<otlp-http-addr>/v1/logs.")
@click.option("--backfill", "demo_backfill", type=click.FloatRange(0, 3650), default=0,
              envvar="UPMETR_AUDIT_DEMO_BACKFILL", show_envvar=True,
              help="Write this many days of history first, as fast as it goes.")
@click.option("--rate", "demo_rate", type=click.FloatRange(0), default=2.0, envvar="UPMETR_AUDIT_DEMO_RATE",
              show_envvar=True, help="Live events per second at peak hours (0: no live traffic).")
@click.option("--duration", "demo_duration", type=click.FloatRange(0), default=None,
              envvar="UPMETR_AUDIT_DEMO_DURATION", show_envvar=True,
              help="Stop live traffic after this many seconds (default: until Ctrl-C).")
@click.option("--orgs", "demo_orgs", type=click.IntRange(1, 1000), default=4, envvar="UPMETR_AUDIT_DEMO_ORGS",
              show_envvar=True, help="Organizations to simulate.")
@click.option("--attack-every", "demo_attack_every", type=click.FloatRange(0), default=300.0,
              envvar="UPMETR_AUDIT_DEMO_ATTACK_EVERY", show_envvar=True,
              help="Seconds between scripted attacks in live traffic (0: none).")
@click.option("--seed", "demo_seed", type=int, default=7, envvar="UPMETR_AUDIT_DEMO_SEED", show_envvar=True,
              help="Random seed: the same seed gives the same traffic.")
@_fail_cleanly
def demo(data_dir, otlp_http_addr, ingest_tokens, demo_endpoint, demo_backfill, demo_rate,
         demo_duration, demo_orgs, demo_attack_every, demo_seed):
    """Send realistic audit traffic through the shipper into a running collector.

    Several orgs with superadmin, admin and viewer users, every category, a
    daily rhythm, ~2% failed logins, and scripted attacks (brute force,
    password spraying, credential stuffing, one user from many IPs).
    """
    from rich.progress import Progress

    from upmetr_audit.shipper import AuditLogger
    from upmetr_audit.shipper.demo import DemoTraffic

    token = (_tokens(ingest_tokens) or (None,))[0]
    token_file = os.path.join(data_dir, "ingest-token")
    if token is None and os.path.exists(token_file):
        with open(token_file) as f:
            token = f.read().strip()
    endpoint = demo_endpoint or f"http://{otlp_http_addr}/v1/logs"
    backfill_days, rate, duration = demo_backfill, demo_rate, demo_duration
    audit = AuditLogger(service_name="upmetr-demo", endpoint=endpoint,
                        spool_dir=os.path.join(data_dir, "spool", "upmetr-demo-cli"),
                        headers={"authorization": f"Bearer {token}"} if token else None)
    traffic = DemoTraffic(audit, orgs=demo_orgs, seed=demo_seed)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if backfill_days:
            with Progress() as progress:
                task = progress.add_task(f"backfilling {backfill_days:g} days", total=None)
                traffic.backfill(backfill_days, progress=lambda done, total: progress.update(
                    task, completed=done, total=total))
            click.echo(f"backfill   {traffic.sent} events written to the spool; delivering")
        if rate and not stop.is_set():
            click.echo(f"live       ~{rate:g} events/s to {endpoint} (Ctrl-C to stop)")
            traffic.run_live(rate, stop, attack_every_s=demo_attack_every, duration_s=duration)
        delivered = audit.flush(timeout_s=600)
    finally:
        left = audit.shutdown(timeout_s=5)
    click.echo(f"demo       {traffic.sent} events sent; {left} still in the spool"
               + ("" if delivered else " (the collector did not take them all; they stay spooled)"))


@cli.command()
@click.argument("patterns", nargs=-1, required=True)
@options("data_dir", "ingest_tokens")
@click.option("--endpoint", "ship_endpoint", envvar="UPMETR_AUDIT_SHIP_ENDPOINT", show_envvar=True,
              help="OTLP logs endpoint. Default: the OTEL_EXPORTER_OTLP_* variables, "
                   "else http://localhost:4318/v1/logs.")
@click.option("--state-dir", "ship_state_dir", envvar="UPMETR_AUDIT_SHIP_STATE_DIR",
              show_envvar=True, help="Checkpoints, spool and dead-letter. Default: <data dir>/ship.")
@click.option("--poll-interval", "ship_poll_interval", type=click.FloatRange(0.01), default=0.5,
              envvar="UPMETR_AUDIT_SHIP_POLL_INTERVAL", show_envvar=True,
              help="Seconds between looks at the files.")
@click.option("--rotate-wait", "ship_rotate_wait", type=click.FloatRange(0), default=5.0,
              envvar="UPMETR_AUDIT_SHIP_ROTATE_WAIT", show_envvar=True,
              help="Seconds a file rotated away or deleted is still read after it last grew "
                   "(a writer holding it may finish its last line there).")
@_fail_cleanly
def ship(patterns, data_dir, ingest_tokens, ship_endpoint, ship_state_dir, ship_poll_interval,
         ship_rotate_wait):
    """Tail JSON Lines files of audit events and ship them durably.

    PATTERNS are files or globs (quote them). One event per line, with the
    wire-contract names (event_name, time_unix_nano or timestamp,
    log.record.uid, upmetr.org.id, user.email, upmetr.audit.status, ...).
    Survives rotation and restarts; bad lines go to <state dir>/dead-letter.jsonl.
    """
    from upmetr_audit.shipper import AuditLogger
    from upmetr_audit.shipper.agent import Agent

    state_dir = ship_state_dir or os.path.join(data_dir, "ship")
    token = (_tokens(ingest_tokens) or (None,))[0]
    audit = AuditLogger(service_name="upmetr-audit-ship", endpoint=ship_endpoint,
                        spool_dir=os.path.join(state_dir, "spool"),
                        headers={"authorization": f"Bearer {token}"} if token else None)
    agent = Agent(audit, list(patterns), state_dir, poll_interval_s=ship_poll_interval,
                  rotate_wait_s=ship_rotate_wait)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(f"shipping   {' '.join(patterns)} (state in {state_dir})")

    def progress(a):
        click.echo(f"progress   read={a.lines_read} shipped={a.shipped} "
                   f"dead_lettered={a.dead_lettered} pending={audit.stats()['pending']}"
                   + (f" waiting: {a.spool_error}" if a.spool_error else ""))

    try:
        agent.run(stop, progress=progress)
        audit.flush(timeout_s=10)
    finally:
        left = audit.shutdown(timeout_s=5)
    progress(agent)
    click.echo(f"stopped    {left} events left in the spool for the next run")


@cli.command()
@options("data_dir", "clickhouse_url", "web_addr", "otlp_http_addr", "ingest_tokens", "log_level",
         "alert_rules")
@_fail_cleanly
def web(data_dir, clickhouse_url, web_addr, otlp_http_addr, ingest_tokens, log_level, alert_rules):
    """Run only the audit page, for server mode (a ClickHouse server URL).

    Its own events (sign-ins, views, exports) go to the collector at
    --otlp-http-addr through the shipper.
    """
    from upmetr_audit.collector.app import parse_addr
    from upmetr_audit.shipper import AuditLogger
    from upmetr_audit.web.server import WebServer

    from . import rules

    logs.setup(log_level)
    alert_rules = rules.load(alert_rules)   # the page describes each org's rules
    store = store_mod.open_store(_resolve_url(data_dir, clickhouse_url))
    token = (_tokens(ingest_tokens) or (None,))[0]
    audit = AuditLogger(service_name="upmetr-audit-web", endpoint=f"http://{otlp_http_addr}/v1/logs",
                        spool_dir=os.path.join(data_dir, "spool", "upmetr-audit-web"),
                        headers={"authorization": f"Bearer {token}"} if token else None)
    try:
        store_mod.require_current_schema(store.client)
        host, port = parse_addr(web_addr)
        server = WebServer(store.client, host, port, data_dir, audit_emit=audit.emit, alert_rules=alert_rules)
        server.start()
        click.echo(f"web        http://{host}:{server.port}/")
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        server.shutdown()
    finally:
        audit.shutdown(timeout_s=5)
        store.close()


# -- accounts -------------------------------------------------------------------


def _with_store(data_dir, clickhouse_url, fn):
    store = store_mod.open_store(_resolve_url(data_dir, clickhouse_url))
    try:
        store_mod.migrate(store.client)
        return fn(store.client)
    finally:
        store.close()


@cli.group()
def users():
    """Accounts of the audit page (argon2-hashed passwords)."""


@users.command("create")
@click.option("--email", required=True, envvar="UPMETR_AUDIT_EMAIL", show_envvar=True,
              help="The sign-in email.")
@click.option("--org", required=True, envvar="UPMETR_AUDIT_ORG", show_envvar=True,
              help="The organization the user belongs to.")
@click.option("--role", type=click.Choice(["superadmin", "admin", "viewer"]), required=True,
              envvar="UPMETR_AUDIT_ROLE", show_envvar=True,
              help="Only superadmins can view audit logs.")
@click.option("--password", envvar="UPMETR_AUDIT_PASSWORD", show_envvar=True,
              help="Default: a generated one, printed once.")
@options("data_dir", "clickhouse_url")
@_fail_cleanly
def users_create(email, org, role, password, data_dir, clickhouse_url):
    """Create a user."""
    from upmetr_audit.web import accounts
    made = _with_store(data_dir, clickhouse_url,
                       lambda c: accounts.create_user(c, email, org, role, password))
    click.echo(f"created {email} ({role} of {org})" + ("" if password else f"; password: {made}"))


@users.command("list")
@click.option("--org", default=None, envvar="UPMETR_AUDIT_ORG", show_envvar=True,
              help="Only this organization.")
@options("data_dir", "clickhouse_url")
@_fail_cleanly
def users_list(org, data_dir, clickhouse_url):
    """List users."""
    from upmetr_audit.web import accounts
    for u in _with_store(data_dir, clickhouse_url, lambda c: accounts.list_users(c, org)):
        click.echo(f"{u.email:<40} {u.org_id:<24} {u.role:<11} "
                   f"{'disabled' if u.disabled else 'active'}")


@users.command("set-password")
@click.argument("email")
@click.option("--password", envvar="UPMETR_AUDIT_PASSWORD", show_envvar=True, prompt=True,
              hide_input=True, confirmation_prompt=True, help="The new password.")
@options("data_dir", "clickhouse_url")
@_fail_cleanly
def users_set_password(email, password, data_dir, clickhouse_url):
    """Set a user's password (this ends every session of the user)."""
    from upmetr_audit.web import accounts
    _with_store(data_dir, clickhouse_url, lambda c: accounts.set_password(c, email, password))
    click.echo(f"password of {email} changed")


@users.command("disable")
@click.argument("email")
@options("data_dir", "clickhouse_url")
@_fail_cleanly
def users_disable(email, data_dir, clickhouse_url):
    """Disable a user: every session ends at its next request, every API token is revoked."""
    from upmetr_audit.web import accounts
    _with_store(data_dir, clickhouse_url, lambda c: accounts.set_disabled(c, email))
    click.echo(f"{email} disabled")


@cli.group()
def tokens():
    """Personal API tokens for superadmins (sent as Authorization: Bearer ...)."""


@tokens.command("create")
@click.option("--user", "email", required=True, envvar="UPMETR_AUDIT_EMAIL", show_envvar=True,
              help="The superadmin the token acts as.")
@options("data_dir", "clickhouse_url")
@_fail_cleanly
def tokens_create(email, data_dir, clickhouse_url):
    """Create a token; it is printed once (only its SHA-256 is stored)."""
    from upmetr_audit.web import accounts
    token = _with_store(data_dir, clickhouse_url, lambda c: accounts.create_token(c, email))
    click.echo(token)


@tokens.command("revoke")
@click.option("--user", "email", required=True, envvar="UPMETR_AUDIT_EMAIL", show_envvar=True,
              help="The user whose tokens are revoked.")
@options("data_dir", "clickhouse_url")
@_fail_cleanly
def tokens_revoke(email, data_dir, clickhouse_url):
    """Revoke every API token of a user (a new one can be created after)."""
    from upmetr_audit.web import accounts
    n = _with_store(data_dir, clickhouse_url, lambda c: accounts.revoke_tokens(c, email))
    click.echo(f"{email}: {n} token(s) revoked")


@cli.group()
def orgs():
    """Organizations: modules and time zone."""


@orgs.command("set-module")
@click.argument("org")
@click.argument("module", type=click.Choice(["audit_logs"]))
@click.argument("state", type=click.Choice(["on", "off"]))
@options("data_dir", "clickhouse_url")
@_fail_cleanly
def orgs_set_module(org, module, state, data_dir, clickhouse_url):
    """Turn a module on or off (audit_logs: the Enterprise audit page)."""
    from upmetr_audit.web import accounts
    result = _with_store(data_dir, clickhouse_url,
                         lambda c: accounts.set_module(c, org, module, state == "on"))
    click.echo(f"{org}: modules {', '.join(result.modules) or '(none)'}")


@orgs.command("set-timezone")
@click.argument("org")
@click.argument("tz")
@options("data_dir", "clickhouse_url")
@_fail_cleanly
def orgs_set_timezone(org, tz, data_dir, clickhouse_url):
    """Set the time zone that "today" follows on the audit page (e.g. America/Sao_Paulo)."""
    from upmetr_audit.web import accounts
    _with_store(data_dir, clickhouse_url, lambda c: accounts.set_timezone(c, org, tz))
    click.echo(f"{org}: time zone {tz}")


def main() -> None:
    cli(prog_name="upmetr-audit")


__all__ = ["cli", "main", "SETTINGS"]


from .alerts_cli import detect  # noqa: E402  (registers after cli is defined)

cli.add_command(detect)

from upmetr_audit.grafana.cli import grafana  # noqa: E402  (registers after cli is defined)

cli.add_command(grafana)

from .integrity_cli import COMMANDS as _INTEGRITY_COMMANDS  # noqa: E402  (registers after cli)

for _command in _INTEGRITY_COMMANDS:
    cli.add_command(_command)

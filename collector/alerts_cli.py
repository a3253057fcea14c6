"""``upmetr-audit detect`` and the detector inside ``serve``."""

from __future__ import annotations

import os
import signal
import threading

import click

from . import logs
from . import rules as rules_mod
from . import store as store_mod
from .cli import _fail_cleanly, _resolve_url
from .detector import Detector, run_forever
from .notify import Email, Notifier, Webhook
from .settings import ALERT_OPTIONS, options


def make_notifier(data_dir: str, opts: dict) -> Notifier | None:
    """The notifier the settings ask for, or ``None`` without any channel."""
    channels: list = []
    if opts.get("alert_webhook_url"):
        channels.append(Webhook(opts["alert_webhook_url"], opts.get("alert_webhook_secret") or "",
                                opts.get("alert_webhook_format") or "json"))
    if opts.get("smtp_host"):
        to = [a.strip() for a in (opts.get("smtp_to") or "").split(",") if a.strip()]
        channels.append(Email(opts["smtp_host"], opts.get("smtp_port") or 25, opts.get("smtp_from") or "",
                              to, user=opts.get("smtp_user") or "",
                              password=opts.get("smtp_password") or "",
                              starttls=bool(opts.get("smtp_starttls")),
                              cafile=opts.get("smtp_cafile") or None))
    if not channels:
        return None
    return Notifier(os.path.join(data_dir, "outbox"), channels, opts.get("public_url") or "")


class DetectorThread:
    """The detector on a schedule, with its notifier, in a thread of ``serve``."""

    def __init__(self, client, data_dir: str, opts: dict):
        ruleset = rules_mod.load(opts.get("alert_rules"))
        self.notifier = make_notifier(data_dir, opts)
        self.detector = Detector(client, ruleset,
                                 notify=self.notifier.notify if self.notifier else None)
        self.interval = float(opts.get("detect_interval") or 60.0)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=run_forever, name="detector",
                                       args=(self.detector, self.stop_event, self.interval),
                                       daemon=True)

    def start(self) -> None:
        if self.notifier:
            self.notifier.start()
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(60)
        if self.notifier:
            self.notifier.close()


def describe(opts: dict) -> str:
    channels = [n for n, key in (("webhook", "alert_webhook_url"), ("email", "smtp_host")) if opts.get(key)]
    return (f"every {float(opts.get('detect_interval') or 60):g}s, notifications: "
            + (", ".join(channels) or "none (set --alert-webhook-url or --smtp-host)"))


@click.command()
@options("data_dir", "clickhouse_url", "log_level", *ALERT_OPTIONS)
@click.option("--once", is_flag=True, envvar="UPMETR_AUDIT_ONCE", show_envvar=True,
              help="Run once, deliver what can be delivered now, and exit.")
@_fail_cleanly
def detect(data_dir, clickhouse_url, log_level, once, **opts):
    """Evaluate the failed-login spike rules and keep the alerts up to date.

    ``serve`` already runs the detector every minute; run this command on its
    own against a ClickHouse server (``--clickhouse-url``). With ``--once`` it
    runs one evaluation, tries each pending notification once, prints what
    changed and exits; undelivered notifications stay in the outbox for the
    next run.
    """
    logs.setup(log_level)
    rules_mod.load(opts.get("alert_rules"))          # a bad rules file fails before anything opens
    store = store_mod.open_store(_resolve_url(data_dir, clickhouse_url))
    try:
        # Check, don't migrate: in server mode the detector's database user may
        # only read events and write alerts (`upmetr-audit db grants`).
        store_mod.require_current_schema(store.client)
        job = DetectorThread(store.client, data_dir, opts)
        if once:
            result = job.detector.run_once()
            click.echo("detect     " + " ".join(f"{k}={v}" for k, v in result.summary().items()))
            for row in result.changes:
                click.echo(f"  {row['change']:<10} {row['severity']:<9} {row['org_id']} {row['rule']} "
                           f"{row['key_type']}={row['key']} value={row['value']:g}")
            if job.notifier:
                left = job.notifier.drain()
                job.notifier.close()
                click.echo(f"notify     delivered={job.notifier.delivered} "
                           f"dead_lettered={job.notifier.dead_lettered} pending={left}")
            return
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        click.echo("detector   " + describe(opts))
        job.start()
        stop.wait()
        job.stop()
    finally:
        store.close()

"""Alert notifications: a durable outbox per channel, delivered with retries.

The detector calls :meth:`Notifier.notify` when an alert opens, escalates or
resolves. The notification is appended to an on-disk outbox (the shipper's
fsynced :class:`~upmetr_audit.shipper.spool.Spool`) before the alert row is
written, and a delivery thread per channel sends it, retrying with capped
exponential backoff until the receiver accepts it. A receiver that is down, or
a restart, loses nothing; each notification carries a stable id
(``X-Upmetr-Delivery``) so a receiver can drop the rare repeat after a crash.

Channels: a webhook (JSON, or a Slack-compatible ``{"text": …}``), signed with
``X-Upmetr-Signature: sha256=<HMAC-SHA256 of the body>``; and email over SMTP.
A receiver that refuses a notification for good (a 4xx other than 408/429)
gets it moved to ``<outbox>/<channel>.dead.jsonl`` and logged, so one bad
message cannot block the queue.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import random
import smtplib
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from urllib.parse import urlencode

from upmetr_audit.shipper.spool import Spool

from .rules import LOGIN, Rule

log = logging.getLogger("upmetr_audit.notify")

SIGNATURE_HEADER = "X-Upmetr-Signature"
DELIVERY_HEADER = "X-Upmetr-Delivery"


class PermanentFailure(Exception):
    """The receiver refused the notification; retrying will not help."""


def sign(secret: str, body: bytes) -> str:
    """The ``X-Upmetr-Signature`` value of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str) -> bool:
    """Constant-time check of a received signature (for receivers and tests)."""
    return hmac.compare_digest(sign(secret, body), header or "")


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def audit_link(base_url: str, alert: dict, rule: Rule) -> str:
    """The audit page filtered to the events the alert counted."""
    if rule.kind == "success_after":
        actions, status = [LOGIN], "success"
    else:
        actions, status = rule.failed_actions, "failure"
    query = {"action": ",".join(actions), "status": status,
             "since": _iso(alert["window_start"]), "until": _iso(alert["window_end"])}
    if alert["key_type"] in ("user", "ip"):
        query[alert["key_type"]] = alert["key"]
    if rule.allow and alert["key_type"] != "ip":  # the rule did not count these sources
        query["not_ip"] = ",".join(rule.allow)
    return f"{base_url.rstrip('/')}/audit?{urlencode(query)}"


def payload(alert: dict, rule: Rule, base_url: str) -> dict:
    """The JSON body of a notification about one alert change."""
    return {
        "id": f"{alert['alert_id']}.{alert['version']}",
        "event": alert["change"],
        "alert_id": str(alert["alert_id"]),
        "state": alert["state"],
        "rule": alert["rule"],
        "title": rule.title,
        "condition": rule.describe(),
        "severity": alert["severity"],
        "org_id": alert["org_id"],
        "key_type": alert["key_type"],
        "key": alert["key"],
        "value": alert["value"],
        "threshold": alert["threshold"],
        "failures": alert["failures"],
        "window": {"start": _iso(alert["window_start"]), "end": _iso(alert["window_end"]),
                   "minutes": rule.window_minutes},
        "first_seen": _iso(alert["first_seen"]),
        "last_seen": _iso(alert["last_seen"]),
        "link": audit_link(base_url, alert, rule),
        "sample_event_ids": list(alert["samples"]),
    }


def summary_line(p: dict) -> str:
    verb = {"opened": "FIRING", "escalated": "ESCALATED", "resolved": "RESOLVED"}.get(p["event"], p["event"])
    return (f"[{verb}] {p['severity']}: {p['title']} — {p['key_type']} {p['key']} in {p['org_id']}: "
            f"{p['value']:g} (threshold {p['threshold']:g}) in {p['window']['minutes']} min")


class Webhook:
    name = "webhook"

    def __init__(self, url: str, secret: str = "", fmt: str = "json", timeout_s: float = 10.0):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"alert webhook URL must be http(s)://…, got {url!r}")
        if fmt not in ("json", "slack"):
            raise ValueError("alert webhook format must be json or slack")
        self.url, self.secret, self.fmt, self.timeout_s = url, secret, fmt, timeout_s

    def body(self, p: dict) -> bytes:
        if self.fmt == "slack":
            return json.dumps({"text": f"{summary_line(p)}\n<{p['link']}|Open the audit log>"}).encode()
        return json.dumps(p, sort_keys=True).encode()

    def send(self, p: dict) -> None:
        body = self.body(p)
        headers = {"Content-Type": "application/json", "User-Agent": "upmetr-audit-alerts",
                   DELIVERY_HEADER: p["id"]}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                raise PermanentFailure(f"HTTP {exc.code}") from None
            raise


class Email:
    name = "email"

    def __init__(self, host: str, port: int, sender: str, to: list[str], *, user: str = "",
                 password: str = "", starttls: bool = False, timeout_s: float = 10.0):
        if not to or not sender:
            raise ValueError("alert email needs a sender and at least one recipient")
        self.host, self.port, self.sender, self.to = host, port, sender, to
        self.user, self.password, self.starttls, self.timeout_s = user, password, starttls, timeout_s

    def send(self, p: dict) -> None:
        msg = EmailMessage()
        msg["Subject"] = summary_line(p)
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.to)
        msg["Message-ID"] = f"<{p['id']}@upmetr-audit>"
        msg.set_content(f"{summary_line(p)}\n\n{p['condition']}\n\nOpen the filtered audit log: "
                        f"{p['link']}\n\nSample events: {', '.join(p['sample_event_ids'])}\n")
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.user:
                smtp.login(self.user, self.password)
            smtp.send_message(msg)


@dataclass
class _Outbox:
    channel: object
    spool: Spool
    dead_path: str
    wake: threading.Event
    lock: threading.Lock


class Notifier:
    """Outboxes under ``directory`` (one per channel) and their delivery threads."""

    def __init__(self, directory: str, channels: list, base_url: str, *,
                 backoff_initial_s: float = 1.0, backoff_max_s: float = 300.0):
        self.base_url = base_url
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.delivered = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.outboxes = [
            _Outbox(ch, Spool(os.path.join(directory, ch.name), max_bytes=64 * 1024 * 1024,
                              segment_bytes=1024 * 1024),
                    os.path.join(directory, f"{ch.name}.dead.jsonl"), threading.Event(),
                    threading.Lock())
            for ch in channels]

    def notify(self, alert: dict, rule: Rule) -> None:
        """Queue a notification about ``alert`` on every channel (durably)."""
        record = json.dumps(payload(alert, rule, self.base_url)).encode()
        for box in self.outboxes:
            box.spool.append(record, timeout_s=None)
            box.wake.set()

    def start(self) -> None:
        for box in self.outboxes:
            t = threading.Thread(target=self._run, args=(box,), name=f"notify-{box.channel.name}",
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def _run(self, box: _Outbox) -> None:
        delay = self.backoff_initial_s
        while not self._stop.is_set():
            outcome = self.deliver_one(box)
            if outcome == "done":
                delay = self.backoff_initial_s
            elif outcome == "failed":
                self._stop.wait(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.backoff_max_s)
            else:
                box.wake.wait(1.0)
                box.wake.clear()

    def deliver_one(self, box: _Outbox) -> str:
        """Try the oldest pending notification of one outbox: ``done`` (delivered or
        dead-lettered), ``failed`` (kept for a retry) or ``empty``."""
        with box.lock:
            return self._deliver_one(box)

    def _deliver_one(self, box: _Outbox) -> str:
        records, pos = box.spool.read(1)
        if not records:
            return "empty"
        p = json.loads(records[0])
        try:
            box.channel.send(p)
        except PermanentFailure as exc:
            log.error("notification refused for good; kept in the dead-letter file",
                      extra={"channel": box.channel.name, "id": p["id"], "error": str(exc),
                             "file": box.dead_path})
            with open(box.dead_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"error": str(exc), "notification": p}) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except (OSError, smtplib.SMTPException) as exc:
            box.spool.rewind()
            log.warning("notification delivery failed; will retry",
                        extra={"channel": box.channel.name, "id": p["id"], "error": str(exc)})
            return "failed"
        box.spool.ack(pos)
        self.delivered += 1
        return "done"

    def drain(self) -> int:
        """Deliver what is pending now, once each, without waiting; returns how many are left."""
        for box in self.outboxes:
            while self.deliver_one(box) == "done":
                pass
        return self.pending()

    def pending(self) -> int:
        left = 0
        for box in self.outboxes:
            with box.lock:
                records, _ = box.spool.read(1_000_000)
                box.spool.rewind()
            left += len(records)
        return left

    def close(self) -> None:
        self._stop.set()
        for box in self.outboxes:
            box.wake.set()
        for t in self._threads:
            t.join(15)
        for box in self.outboxes:
            box.spool.close()

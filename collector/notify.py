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
A receiver that refuses a notification for good (a 4xx other than 408/429),
or a notification that cannot be sent at all (a malformed answer, a value the
channel refuses), gets it moved to ``<outbox>/<channel>.dead.jsonl`` and
logged, so one bad message cannot block the queue or stop its thread. Only
connection-level errors, 5xx, 408, 429 and redirects (which are not followed:
a followed redirect turns the POST into a GET without the body) are retried.

Every value an attacker may choose (the alert key is an email or IP as sent)
has its control characters escaped before it goes into an email header or
text, and ``&``, ``<``, ``>`` escaped in Slack text.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import random
import re
import smtplib
import ssl
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from urllib.parse import quote, urlencode

from upmetr_audit.shipper.spool import Spool

from .rules import LOGIN, Rule, filterable

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
    if alert["key_type"] == "ip":   # an IPv6 key is a /64: the ip filter takes CIDRs
        query["ip"] = alert["key"]
    # A user key is the email in lower case; the attack may have used any. A key
    # the page cannot filter by (a NUL, too long) is left out: the samples are exact.
    if alert["key_type"] == "user" and filterable(alert["key"]):
        query.update(user=alert["key"], user_case="any")
    if rule.allow:  # the rule did not count these sources (an allowlist may overlap a /64 key)
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
        "sample_links": [f"{base_url.rstrip('/')}/audit/events/{quote(str(i), safe='')}"
                         for i in alert["samples"]],
    }


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(value) -> str:
    """``value`` as one line of text: control characters (CR, LF, ...) escaped
    as ``\\xNN``/``\\uNNNN``, so an attacker-chosen email cannot add a header."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), str(value))


def slack_escape(value) -> str:
    """Slack's mrkdwn escaping: ``&``, ``<`` and ``>`` as entities (no links, no mentions)."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def summary_line(p: dict, escape=printable) -> str:
    """One line about the alert; every value passes through ``escape``."""
    e = escape
    verb = {"opened": "FIRING", "escalated": "ESCALATED", "resolved": "RESOLVED"}.get(p["event"], p["event"])
    return (f"[{e(verb)}] {e(p['severity'])}: {e(p['title'])} — {e(p['key_type'])} {e(p['key'])} "
            f"in {e(p['org_id'])}: {p['value']:g} (threshold {p['threshold']:g}) "
            f"in {p['window']['minutes']} min")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as an error (urllib would follow it with a GET,
    dropping the body, and the 2xx at the end would count as delivered)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


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
            text = f"{summary_line(p, lambda v: slack_escape(printable(v)))}\n" \
                   f"<{slack_escape(p['link'])}|Open the audit log>"
            return json.dumps({"text": text}).encode()
        return json.dumps(p, sort_keys=True).encode()

    def send(self, p: dict) -> None:
        body = self.body(p)
        headers = {"Content-Type": "application/json", "User-Agent": "upmetr-audit-alerts",
                   DELIVERY_HEADER: p["id"]}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with _OPENER.open(req, timeout=self.timeout_s) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                raise PermanentFailure(f"HTTP {exc.code}") from None
            if 300 <= exc.code < 400:   # retried: fixing the URL delivers what is queued
                raise urllib.error.URLError(
                    f"HTTP {exc.code} redirect to {exc.headers.get('Location')!r} not followed; "
                    "set the webhook URL to where it points") from None
            raise


class Email:
    name = "email"

    def __init__(self, host: str, port: int, sender: str, to: list[str], *, user: str = "",
                 password: str = "", starttls: bool = False, timeout_s: float = 10.0,
                 cafile: str | None = None):
        if not to or not sender:
            raise ValueError("alert email needs a sender and at least one recipient")
        self.host, self.port, self.sender, self.to = host, port, sender, to
        self.user, self.password, self.starttls, self.timeout_s = user, password, starttls, timeout_s
        #: CA certificates to trust for STARTTLS, instead of the system's (a private CA).
        self.cafile = cafile

    def send(self, p: dict) -> None:
        msg = EmailMessage()
        msg["Subject"] = summary_line(p)
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.to)
        msg["Message-ID"] = f"<{printable(p['id'])}@upmetr-audit>"
        samples = "".join(f"\n  {printable(link)}" for link in p.get("sample_links", []))
        msg.set_content(f"{summary_line(p)}\n\n{printable(p['condition'])}\n\nOpen the filtered audit log: "
                        f"{printable(p['link'])}\n\nSample events:{samples}\n")
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
            if self.starttls:   # verifies the server's certificate and name before the password goes
                smtp.starttls(context=ssl.create_default_context(cafile=self.cafile))
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


def _id(p) -> str:
    return p.get("id", "?") if isinstance(p, dict) else "?"


class Notifier:
    """Outboxes under ``directory`` (one per channel) and their delivery threads."""

    def __init__(self, directory: str, channels: list, base_url: str, *,
                 backoff_initial_s: float = 1.0, backoff_max_s: float = 300.0):
        self.base_url = base_url
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        #: Notifications the receiver accepted, and those moved to the dead-letter file.
        self.delivered = 0
        self.dead_lettered = 0
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
            try:
                outcome = self.deliver_one(box)
            except Exception:  # e.g. the outbox or dead-letter file cannot be written: retry later
                log.exception("notification delivery failed; will retry",
                              extra={"channel": box.channel.name})
                outcome = "failed"
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
            try:
                return self._deliver_one(box)
            except BaseException:
                box.spool.rewind()      # nothing is skipped: the next read starts at the same one
                raise

    def _deliver_one(self, box: _Outbox) -> str:
        records, pos = box.spool.read(1)
        if not records:
            return "empty"
        p: dict | str = records[0].decode("utf-8", "replace")
        try:
            p = json.loads(p)
            box.channel.send(p)
        except OSError as exc:  # connection, TLS, timeout, SMTP, 5xx/408/429, redirect: transient
            box.spool.rewind()
            log.warning("notification delivery failed; will retry",
                        extra={"channel": box.channel.name, "id": _id(p), "error": str(exc)})
            return "failed"
        except Exception as exc:  # refused for good, a malformed answer, an unsendable value
            error = str(exc) if isinstance(exc, PermanentFailure) else f"{type(exc).__name__}: {exc}"
            log.error("notification not deliverable; kept in the dead-letter file",
                      extra={"channel": box.channel.name, "id": _id(p), "error": error,
                             "file": box.dead_path})
            with open(box.dead_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"error": error, "notification": p}) + "\n")
                f.flush()
                os.fsync(f.fileno())
            box.spool.ack(pos)
            self.dead_lettered += 1
            return "done"
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

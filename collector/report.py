"""The monthly review report for auditors: one self-contained HTML file per
org and month, plus a signed manifest (``.json``) holding its SHA-256, so
that the file can be checked later with ``upmetr-audit verify-report``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re

from . import digests, schema
from .errors import UpmetrAuditError
from .keys import Keyring
from .rules import KNOWN_IP

REPORT_DOMAIN = b"upmetr-audit/report/v1\x00"
FORMAT = "upmetr-audit-report/1"
ROW_CAP = 500
_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9._-]")
_MONTH_RE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
_IP = "replaceRegexpOne(IPv6NumToString(ip), '^::ffff:', '')"


class ReportError(UpmetrAuditError):
    """A report cannot be made, or does not check out."""


def month_range(month: str) -> tuple[dt.datetime, dt.datetime]:
    m = _MONTH_RE.match(month or "")
    if not m:
        raise ReportError(f"month {month!r} is not YYYY-MM")
    start = dt.datetime(int(m[1]), int(m[2]), 1, tzinfo=dt.UTC)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    return start, end


def check_org(org: str) -> None:
    """Any non-empty org id, as the event contract accepts."""
    if not org:
        raise ReportError("the org must not be empty")


def file_stem(org: str, month: str) -> str:
    """``audit-review-ORG-MONTH``, the org made safe for a file name: letters,
    digits, '.', '_' and '-' kept, anything else (or a long id) replaced and
    followed by a hash of the org, so two orgs never share a file."""
    safe = _UNSAFE_IN_NAME.sub("_", org)
    if safe != org or len(org) > 64:
        safe = f"{safe[:64]}-{hashlib.sha256(org.encode()).hexdigest()[:12]}"
    return f"audit-review-{safe}-{month}"


def _rows(client, sql: str, params: dict) -> list[dict]:
    return list(client.query(sql, parameters=params).named_results())


def _events(client, params: dict, condition: str) -> list[dict]:
    return _rows(client, (
        f"SELECT timestamp, action, status, user_email, {_IP} AS ip, resource_type, resource_id, "
        f"changes, reason FROM {schema.EVENTS_TABLE} WHERE org_id = {{org:String}} "
        f"AND timestamp >= {{start:DateTime64(6, 'UTC')}} AND timestamp < {{end:DateTime64(6, 'UTC')}} "
        f"AND ({condition}) ORDER BY timestamp, event_id LIMIT {ROW_CAP + 1}"), params)


def _alerts(client, params: dict) -> list[dict] | None:
    """Spike alerts of the month (newest state of each); ``None`` without the table."""
    if not int(client.command(f"EXISTS TABLE {schema.DATABASE}.audit_alerts")):
        return None
    try:
        return _rows(client, (
            f"SELECT alert_id, argMax(rule, version) AS rule, argMax(key, version) AS key, "
            f"argMax(toString(severity), version) AS severity, argMax(toString(state), version) AS state, "
            f"argMax(failures, version) AS failures, min(first_seen) AS first_seen, "
            f"max(last_seen) AS last_seen FROM {schema.DATABASE}.audit_alerts "
            f"WHERE org_id = {{org:String}} GROUP BY alert_id "
            f"HAVING first_seen < {{end:DateTime64(6, 'UTC')}} "
            f"AND last_seen >= {{start:DateTime64(6, 'UTC')}} "
            f"ORDER BY first_seen LIMIT {ROW_CAP + 1}"), params)
    except Exception:  # an older or newer alerts table: the report still renders, without them
        return None


def gather(client, org: str, month: str) -> dict:
    start, end = month_range(month)
    p = {"org": org, "start": start, "end": end}
    failed = "action = 'auth.login' AND status = 'failure'"
    where = ("org_id = {org:String} AND timestamp >= {start:DateTime64(6, 'UTC')} "
             "AND timestamp < {end:DateTime64(6, 'UTC')}")

    def top(value: str, known: str = "1") -> str:
        return (f"SELECT {value} AS value, count() AS n FROM {schema.EVENTS_TABLE} WHERE {where} "
                f"AND {failed} AND {known} GROUP BY value ORDER BY n DESC, value LIMIT 10")

    return {
        "events_total": int(client.command(f"SELECT count() FROM {schema.EVENTS_TABLE} WHERE {where}",
                                           parameters=p)),
        "failed_logins": int(client.command(
            f"SELECT count() FROM {schema.EVENTS_TABLE} WHERE {where} AND {failed}", parameters=p)),
        "top_users": _rows(client, top("user_email"), p),
        "top_ips": _rows(client, top(_IP, KNOWN_IP), p),  # `::`: no address (erased, or not sent)
        "alerts": _alerts(client, p),
        "team": _events(client, p, "category = 'team'"),
        "mfa": _events(client, p, "action IN ('mfa.enable', 'mfa.disable', 'mfa.backup_code_use')"),
        "tokens": _events(client, p, "endsWith(action, 'token_regenerate') "
                                     "OR action = 'mfa.backup_codes_regenerate'"),
        "settings": _events(client, p, "category = 'settings'"),
    }


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Audit review {{ org }} {{ month }}</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:60em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;width:100%;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top;font-size:.92em}
th{background:#f4f4f4}.ok{color:#176a2c;font-weight:600}.bad{color:#a4161a;font-weight:600}
.muted{color:#666}code{font-size:.9em;word-break:break-all}
</style></head><body>
<h1>Audit review: {{ org }}, {{ month }}</h1>
<p class="muted">Generated {{ generated_at }} (UTC). {{ d.events_total }} audit events this month.
Times are event times (UTC).</p>

<h2>Integrity</h2>
<p class="{{ 'ok' if integrity.ok else 'bad' }}">{{ integrity.summary }}</p>
{% if integrity.windows %}<table><tr><th>Window</th><th>Status</th><th>Details</th></tr>
{% for w in integrity.windows %}<tr><td>{{ w.start }}</td><td>{{ w.status }}</td><td>{{ w.details }}</td></tr>
{% endfor %}</table>{% endif %}

<h2>Failed logins</h2>
<p>{{ d.failed_logins }} failed logins.</p>
<table><tr><th>Top users</th><th>Failures</th></tr>
{% for r in d.top_users %}<tr><td>{{ r.value }}</td><td>{{ r.n }}</td></tr>
{% else %}<tr><td colspan="2" class="muted">none</td></tr>{% endfor %}</table>
<table><tr><th>Top IPs</th><th>Failures</th></tr>
{% for r in d.top_ips %}<tr><td>{{ r.value }}</td><td>{{ r.n }}</td></tr>
{% else %}<tr><td colspan="2" class="muted">none</td></tr>{% endfor %}</table>
<h3>Spike alerts</h3>
{% if d.alerts is none %}<p class="muted">Spike detection is not set up on this store.</p>
{% else %}<table><tr><th>First seen</th><th>Rule</th><th>Key</th><th>Severity</th><th>State</th>
<th>Failures</th></tr>
{% for a in d.alerts %}<tr><td>{{ a.first_seen }}</td><td>{{ a.rule }}</td><td>{{ a.key }}</td>
<td>{{ a.severity }}</td><td>{{ a.state }}</td><td>{{ a.failures }}</td></tr>
{% else %}<tr><td colspan="6" class="muted">none</td></tr>{% endfor %}</table>{% endif %}

{% for title, rows in sections %}
<h2>{{ title }}</h2>
<table><tr><th>Time</th><th>Action</th><th>Status</th><th>By</th><th>IP</th><th>Resource</th><th>Changes</th></tr>
{% for e in rows[:cap] %}<tr><td>{{ e.timestamp }}</td><td>{{ e.action }}</td><td>{{ e.status }}</td>
<td>{{ e.user_email }}</td><td>{{ e.ip }}</td><td>{{ e.resource_type }} {{ e.resource_id }}</td>
<td><code>{{ e.changes }}</code></td></tr>
{% else %}<tr><td colspan="7" class="muted">none</td></tr>{% endfor %}</table>
{% if rows|length > cap %}<p class="muted">Only the first {{ cap }} are listed.</p>{% endif %}
{% endfor %}
<p class="muted">This file's SHA-256 is in the signed manifest next to it; check both with
<code>upmetr-audit verify-report {{ manifest_name }} --public-key keyring.json</code>.</p>
</body></html>
"""


def render(org: str, month: str, data: dict, integrity: dict, generated_at: str, manifest_name: str) -> str:
    from jinja2 import Environment

    env = Environment(autoescape=True)
    sections = [("Team and permission changes", data["team"]),
                ("MFA: enabled, disabled, backup codes used", data["mfa"]),
                ("Token regenerations", data["tokens"]), ("Settings changes", data["settings"])]
    return env.from_string(_TEMPLATE).render(
        org=org, month=month, d=data, integrity=integrity, sections=sections, cap=ROW_CAP,
        generated_at=generated_at, manifest_name=manifest_name)


def _body(manifest: dict) -> dict:
    return {k: manifest[k] for k in ("format", "org_id", "month", "generated_at_us", "html_file",
                                     "html_sha256", "integrity_ok", "key_id")}


def build(client, keyring: Keyring, org: str, month: str, out_dir: str, now_us: int,
          integrity_result) -> tuple[str, str]:
    """Write the report and its signed manifest; returns their paths.
    ``integrity_result``: the :class:`verify.VerifyResult` for the org and month."""
    from .sealing import iso

    check_org(org)
    month_range(month)
    data = gather(client, org, month)
    integrity = {"ok": integrity_result.ok, "summary": integrity_result.summary(), "windows": [
        {"start": iso(w.window_start_us), "status": w.status,
         "details": "; ".join(w.problems + [f"{k}: {', '.join(v)}" for k, v in w.events.items()])}
        for w in integrity_result.windows]}
    base = file_stem(org, month)
    html = render(org, month, data, integrity, iso(now_us), base + ".json").encode()
    os.makedirs(out_dir, exist_ok=True)
    manifest = {"format": FORMAT, "org_id": org, "month": month, "generated_at_us": now_us,
                "html_file": base + ".html", "html_sha256": hashlib.sha256(html).hexdigest(),
                "integrity_ok": integrity_result.ok, "key_id": keyring.active}
    digest = hashlib.sha256(digests.dumps(_body(manifest)).encode()).digest()
    _, manifest["signature"] = keyring.sign(REPORT_DOMAIN, digest)
    html_path, manifest_path = (os.path.join(out_dir, base + ext) for ext in (".html", ".json"))
    manifest_bytes = (json.dumps(manifest, indent=2) + "\n").encode()
    for path, content in ((html_path, html), (manifest_path, manifest_bytes)):
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return html_path, manifest_path


def check(manifest_path: str, keyring: Keyring) -> str:
    """A one-line description if the report and its manifest check out; ``ReportError`` if not."""
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
        body = _body(manifest)
        if body["format"] != FORMAT or not isinstance(body["html_file"], str) or \
                os.path.basename(body["html_file"]) != body["html_file"]:
            raise ValueError("unknown format")
    except OSError as exc:
        raise ReportError(f"cannot read {manifest_path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ReportError(f"{manifest_path} is not a report manifest") from None
    digest = hashlib.sha256(digests.dumps(body).encode()).digest()
    problem = keyring.check(manifest["key_id"], REPORT_DOMAIN, digest, str(manifest.get("signature")))
    if problem:
        raise ReportError(f"the manifest's {problem}")
    html_path = os.path.join(os.path.dirname(manifest_path), body["html_file"])
    try:
        with open(html_path, "rb") as f:
            actual = hashlib.sha256(f.read()).hexdigest()
    except OSError as exc:
        raise ReportError(f"cannot read {html_path}: {exc.strerror}") from None
    if actual != body["html_sha256"]:
        raise ReportError(f"{body['html_file']} was changed after it was signed")
    return (f"{body['html_file']} ({body['org_id']}, {body['month']}) is as signed by key "
            f"{manifest['key_id']}; integrity at generation: {'OK' if body['integrity_ok'] else 'PROBLEM'}")


def list_reports(out_dir: str) -> list[dict]:
    """The reports in ``out_dir``, newest month first: org, month, file names, generated time."""
    found = []
    try:
        names = sorted(os.listdir(out_dir))
    except FileNotFoundError:
        return []
    for name in names:
        if not (name.startswith("audit-review-") and name.endswith(".json")):
            continue
        try:
            with open(os.path.join(out_dir, name)) as f:
                m = json.load(f)
            found.append({"org_id": m["org_id"], "month": m["month"], "html_file": m["html_file"],
                          "manifest_file": name, "generated_at_us": m["generated_at_us"],
                          "integrity_ok": m["integrity_ok"]})
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(found, key=lambda r: (r["month"], r["org_id"]), reverse=True)

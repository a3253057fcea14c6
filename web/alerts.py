"""Failed-login spike alerts on the page: the banner data, ``/audit/alerts``
with acknowledge, and ``/api/v1/alerts``. Superadmins of the org only, the org
always from the session (``g.org``), never from the request."""

from __future__ import annotations

import uuid

from flask import Blueprint, abort, current_app, g, jsonify, redirect, render_template, request, url_for

from upmetr_audit.collector import detector
from upmetr_audit.collector import rules as rules_mod
from upmetr_audit.collector.notify import audit_link

from .auth import audit_access, client, self_audit

bp = Blueprint("alerts", __name__)
api = Blueprint("alerts_api", __name__, url_prefix="/api/v1")

MEASURE = {"failures": ("failed attempt", "failed attempts"), "spraying": ("user tried", "users tried"),
           "distributed": ("source IP", "source IPs"), "spike": ("failed attempt", "failed attempts"),
           "success_after": ("successful login", "successful logins")}


def _ruleset() -> rules_mod.RuleSet:
    return current_app.config.get("ALERT_RULES") or rules_mod.RuleSet()


def present(alert: dict) -> dict:
    """An alert row as the page and the API show it."""
    known = alert["rule"] in rules_mod.DEFAULT_RULES
    rule = _ruleset().for_org(alert["org_id"], alert["rule"]) if known else None
    out = {
        "alert_id": str(alert["alert_id"]),
        "rule": alert["rule"],
        "title": rule.title if rule else alert["rule"],
        "condition": rule.describe() if rule else "",
        "measure": MEASURE[rule.kind][alert["value"] != 1] if rule else "",
        "severity": alert["severity"],
        "state": alert["state"],
        "key_type": alert["key_type"],
        "key": alert["key"],
        "value": alert["value"],
        "threshold": alert["threshold"],
        "failures": alert["failures"],
        "window_minutes": rule.window_minutes if rule else None,
        "window_start": alert["window_start"].isoformat(),
        "window_end": alert["window_end"].isoformat(),
        "first_seen": alert["first_seen"].isoformat(),
        "last_seen": alert["last_seen"].isoformat(),
        "changed_at": alert["changed_at"].isoformat(),
        "changed_by": alert["changed_by"],
        # Who acknowledged it (null if nobody): the newest change may be the detector's.
        "acknowledged_by": alert["acknowledged_by"] or None,
        "acknowledged_at": alert["acknowledged_at"].isoformat() if alert["acknowledged_by"] else None,
        "sample_event_ids": list(alert["samples"]),
    }
    out["events_link"] = audit_link("", alert, rule) if rule else None
    return out


def firing(org_id: str) -> list[dict]:
    """The org's firing (not yet acknowledged) alerts, for the banner and the card."""
    return [present(a) for a in detector.current_alerts(client(), org_id=org_id, open_only=True)
            if a["state"] == "firing"]


@bp.get("/audit/alerts")
@audit_access
def index():
    self_audit("system.api_access", **{"http.route": "/audit/alerts"})
    alerts = [present(a) for a in detector.current_alerts(client(), org_id=g.org.org_id, limit=500)]
    return render_template("alerts.html", org=g.org,
                           open_alerts=[a for a in alerts if a["state"] != "resolved"],
                           past_alerts=[a for a in alerts if a["state"] == "resolved"])


def _acknowledge(alert_id: str) -> dict | None:
    """Acknowledge an alert of the session's org (audited); ``None`` if the org
    has no such alert. ``ValueError`` if it is already resolved."""
    try:
        alert_id = str(uuid.UUID(alert_id))
    except ValueError:
        return None
    try:
        row = detector.acknowledge(client(), g.org.org_id, alert_id, g.user.email)
    except detector.AlertNotFound:
        return None
    self_audit("system.alert_acknowledge", resource=("security_alert", alert_id),
               **{"upmetr.alert.rule": row["rule"], "upmetr.alert.key": row["key"]})
    return row


@bp.post("/audit/alerts/<alert_id>/ack")
@audit_access
def ack(alert_id: str):
    try:
        if _acknowledge(alert_id) is None:
            abort(404)
    except ValueError:
        pass            # resolved meanwhile: the list shows it as resolved
    return redirect(url_for("alerts.index"))


@api.get("/alerts")
@audit_access
def list_alerts():
    state = request.args.get("state", "open")
    if state not in ("open", "all"):
        return jsonify({"ok": False, "error": {"field": "state", "message": "must be open or all"}}), 400
    self_audit("system.api_access", **{"http.route": "/api/v1/alerts"})
    rows = detector.current_alerts(client(), org_id=g.org.org_id, open_only=state == "open", limit=500)
    return jsonify({"alerts": [present(a) for a in rows]})


@api.post("/alerts/<alert_id>/ack")
@audit_access
def api_ack(alert_id: str):
    try:
        row = _acknowledge(alert_id)
    except ValueError as exc:
        return jsonify({"ok": False, "error": {"field": "alert_id", "message": str(exc)}}), 409
    if row is None:
        return jsonify({"ok": False, "error": {"field": "alert_id", "message": "not found"}}), 404
    return jsonify({"ok": True, "alert": present(row)})

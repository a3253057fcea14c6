"""The OpenAPI 3 document of the JSON API, built from the same definitions
the API uses (the filters, the event fields, the catalog)."""

from __future__ import annotations

from upmetr_audit.shipper.catalog import ACTIONS, CATEGORIES

from . import queries

_STR = {"type": "string"}
#: An exact-match filter: compared as given (not trimmed), NUL refused.
_EXACT = {"type": "string", "maxLength": queries.MAX_EXACT_LEN}
_ONE_ACTION = "(" + "|".join(a.replace(".", r"\.") for a in ACTIONS) + ")"
_ACTION_LIST = f"^{_ONE_ACTION}(,{_ONE_ACTION})*$"
FILTER_PARAMETERS = [
    ("action", {"type": "string", "pattern": _ACTION_LIST},
     "A catalog action id, or several separated by commas."),
    ("category", {"type": "string", "enum": [c.id for c in CATEGORIES]}, "A catalog category."),
    ("status", {"type": "string", "enum": ["success", "failure"]}, "Outcome."),
    ("per_page", {"type": "integer", "enum": list(queries.PER_PAGE_CHOICES)}, "Page size."),
    ("range", {"type": "string", "enum": list(queries.RANGES)}, "A preset time window."),
    ("since", _STR, "ISO 8601 date or time (inclusive; UTC when no zone)."),
    ("until", _STR, "ISO 8601 date or time (exclusive; a date means through that day)."),
    ("user", _EXACT, "Exact user email, as stored (not trimmed)."),
    ("user_case", {"type": "string", "enum": list(queries.USER_CASES)},
     "How user matches: exact (the default) or any (any ASCII letter case, as the alert rules key a user)."),
    ("ip", _STR, "An IPv4/IPv6 address or CIDR."),
    ("not_ip", _STR, "Leave out these IPv4/IPv6 addresses or CIDRs, comma-separated "
                     "(an alert rule's allowlist; at most 64)."),
    ("resource_type", _EXACT, "Exact resource type."),
    ("resource_id", _EXACT, "Exact resource id."),
    ("q", _STR, "Case-insensitive text in the user, resource id or reason."),
    ("cursor", _STR, "The next_cursor of the previous page."),
]

_ERROR = {"type": "object", "required": ["ok", "error"], "properties": {
    "ok": {"type": "boolean", "enum": [False]},
    "error": {"type": "object", "required": ["field", "message"],
              "properties": {"field": _STR, "message": _STR}}}}
_EVENT = {"type": "object", "required": list(queries.EVENT_FIELDS),
          "properties": {f: ({"type": "object", "additionalProperties": _STR}
                             if f == "details" else _STR) for f in queries.EVENT_FIELDS}}


_NUM = {"type": "number"}
_ALERT = {"type": "object", "required": ["alert_id", "rule", "severity", "state", "key_type", "key"],
          "properties": {
              **{f: _STR for f in ("alert_id", "rule", "title", "condition", "measure", "key", "window_start",
                                   "window_end", "first_seen", "last_seen", "changed_at", "changed_by")},
              "severity": {"type": "string", "enum": ["warning", "critical", "emergency"]},
              "state": {"type": "string", "enum": ["firing", "acknowledged", "resolved"]},
              "key_type": {"type": "string", "enum": ["user", "ip", "org"]},
              "value": _NUM, "threshold": _NUM, "failures": {"type": "integer"},
              "window_minutes": {"type": ["integer", "null"]},
              "events_link": {"type": ["string", "null"]},
              "acknowledged_by": {"type": ["string", "null"]},
              "acknowledged_at": {"type": ["string", "null"]},
              "sample_event_ids": {"type": "array", "items": _STR}}}


def _params(names=None):
    return [{"name": n, "in": "query", "required": False, "schema": schema, "description": d}
            for n, schema, d in FILTER_PARAMETERS if names is None or n in names]


def _responses(ok_schema, ok_type="application/json"):
    err = {"description": "error", "content": {"application/json": {"schema": _ERROR}}}
    return {"200": {"description": "OK", "content": {ok_type: {"schema": ok_schema}}},
            "400": err, "401": err, "403": err}


def document() -> dict:
    summary_schema = {"type": "object", "required": ["total_events", "events_today",
                                                     "logins_24h", "failed_logins_24h"],
                      "properties": {"total_events": {"type": "integer"},
                                     "events_today": {"type": "integer"},
                                     "logins_24h": {"type": "integer"},
                                     "failed_logins_24h": {"type": "integer"},
                                     "failed_logins_elevated": {"type": "boolean"}}}
    page_schema = {"type": "object", "required": ["events", "next_cursor"], "properties": {
        "events": {"type": "array", "items": _EVENT},
        "next_cursor": {"type": ["string", "null"]}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Upmetr Audit API", "version": "1",
                 "description": "Audit events of the caller's organization (superadmins only)."},
        "components": {"securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "A personal API token (upmetr-audit tokens create)."},
            "session": {"type": "apiKey", "in": "cookie", "name": "upmetr_audit_session"}}},
        "security": [{"bearer": []}, {"session": []}],
        "paths": {
            "/api/v1/summary": {"get": {"operationId": "summary", "summary": "The four cards",
                                        "responses": _responses(summary_schema)}},
            "/api/v1/events": {"get": {"operationId": "events", "summary": "Events, newest first",
                                       "parameters": _params(), "responses": _responses(page_schema)}},
            "/api/v1/events/{event_id}": {"get": {
                "operationId": "event", "summary": "One event",
                "parameters": [{"name": "event_id", "in": "path", "required": True,
                                "schema": {"type": "string", "format": "uuid"}}],
                "responses": {**_responses(_EVENT),
                              "404": {"description": "not found", "content": {
                                  "application/json": {"schema": _ERROR}}}}}},
            "/api/v1/alerts": {"get": {
                "operationId": "alerts", "summary": "Failed-login spike alerts, open ones first",
                "parameters": [{"name": "state", "in": "query", "required": False,
                                "schema": {"type": "string", "enum": ["open", "all"]},
                                "description": "open (default): firing or acknowledged; all: any."}],
                "responses": _responses({"type": "object", "required": ["alerts"], "properties": {
                    "alerts": {"type": "array", "items": _ALERT}}})}},
            "/api/v1/alerts/{alert_id}/ack": {"post": {
                "operationId": "acknowledge_alert", "summary": "Acknowledge an open alert",
                "parameters": [{"name": "alert_id", "in": "path", "required": True,
                                "schema": {"type": "string", "format": "uuid"}}],
                "responses": {**_responses({"type": "object", "required": ["ok", "alert"], "properties": {
                    "ok": {"type": "boolean"}, "alert": _ALERT}}),
                    "404": {"description": "not found", "content": {"application/json": {"schema": _ERROR}}},
                    "409": {"description": "already resolved",
                            "content": {"application/json": {"schema": _ERROR}}}}}},
            "/api/v1/export": {"get": {
                "operationId": "export", "summary": "The filtered events, streamed",
                "parameters": [{"name": "format", "in": "query", "required": False,
                                "schema": {"type": "string", "enum": ["csv", "ndjson"]}},
                               *[p for p in _params() if p["name"] not in ("per_page", "cursor")]],
                "responses": {"200": {"description": "CSV or NDJSON", "content": {
                    "text/csv": {"schema": _STR}, "application/x-ndjson": {"schema": _STR}}},
                    "400": {"description": "error", "content": {"application/json": {
                        "schema": _ERROR}}}}}},
        },
    }

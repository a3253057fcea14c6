"""The audit page (``/audit``), its event detail view, and the JSON API
(``/api/v1/...``). Every query is scoped to ``g.org`` — the signed-in
superadmin's organization — and every view is itself audited."""

from __future__ import annotations

import json
from urllib.parse import quote

from flask import (
    Blueprint,
    Response,
    abort,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from werkzeug.datastructures import Headers
from werkzeug.utils import secure_filename

from . import alerts, integrity, queries
from .auth import audit_access, client, self_audit

bp = Blueprint("audit", __name__)
api = Blueprint("api", __name__, url_prefix="/api/v1")


def _audited(route: str, filters: queries.Filters | None = None) -> None:
    self_audit("system.api_access", **{
        "http.route": route,
        "upmetr.audit.filters": json.dumps(filters.to_query() if filters else {}, sort_keys=True)})


def _page_links(filters: queries.Filters, next_cursor: str | None) -> dict:
    base = {k: v for k, v in filters.to_query().items() if k != "cursor"}
    return {
        "refresh": url_for("audit.index", **base),
        "first": url_for("audit.index", **base) if filters.cursor else None,
        "next": url_for("audit.index", **base, cursor=next_cursor) if next_cursor else None,
        "per_page": {n: url_for("audit.index", **{**base, "per_page": str(n)})
                     for n in queries.PER_PAGE_CHOICES},
        "export_csv": url_for("api.export", **base, format="csv"),
        "export_ndjson": url_for("api.export", **base, format="ndjson"),
    }


@bp.get("/")
def root():
    return redirect(url_for("audit.index"))


@bp.get("/audit")
@audit_access
def index():
    error, status = None, 200
    try:
        filters = queries.parse_filters(request.args)
    except queries.FilterError as exc:
        error, status, filters = exc, 400, queries.Filters()
    org = g.org.org_id
    _audited("/audit", filters)
    page = queries.list_events(client(), org, filters, columns=queries.PAGE_COLUMNS)
    return render_template(
        "audit.html", org=g.org, filters=filters, error=error, page=page,
        cards=queries.summary(client(), org, tz=g.org.timezone),
        firing=alerts.firing(org),
        integrity=integrity.status(org),
        series=queries.timeseries(client(), org, filters),
        links=_page_links(filters, page.next_cursor),
        action_options=queries.action_options(), category_options=queries.category_options(),
        per_page_choices=queries.PER_PAGE_CHOICES,
    ), status


@bp.get("/audit/events/<event_id>")
@audit_access
def detail(event_id: str):
    try:
        event = queries.get_event(client(), g.org.org_id, event_id)
    except queries.FilterError:
        abort(404)
    if event is None:
        abort(404)
    _audited("/audit/events/<event_id>")
    changes = None
    if event.get("changes"):
        try:
            changes = json.loads(event["changes"])
        except ValueError:
            changes = None
    return render_template("detail.html", event=event, changes=changes)


# -- JSON API ---------------------------------------------------------------------


def _api_error(exc: queries.FilterError):
    return jsonify({"ok": False, "error": {"field": exc.field, "message": str(exc)}}), 400


def _api_filters() -> queries.Filters:
    return queries.parse_filters(request.args)


@api.errorhandler(queries.FilterError)
def filter_error(exc):
    return _api_error(exc)


@api.get("/openapi.json")
def openapi_document():
    from .openapi import document
    return jsonify(document())


@api.get("/summary")
@audit_access
def summary():
    _audited("/api/v1/summary")
    return jsonify(queries.summary(client(), g.org.org_id, tz=g.org.timezone))


@api.get("/events")
@audit_access
def events():
    filters = _api_filters()
    _audited("/api/v1/events", filters)
    page = queries.list_events(client(), g.org.org_id, filters)
    return jsonify({"events": page.events, "next_cursor": page.next_cursor})


@api.get("/events/<event_id>")
@audit_access
def event(event_id: str):
    found = queries.get_event(client(), g.org.org_id, event_id)
    if found is None:
        return jsonify({"ok": False, "error": {"field": "event_id", "message": "not found"}}), 404
    _audited("/api/v1/events/<event_id>")
    return jsonify(found)


@api.get("/export")
@audit_access
def export():
    fmt = request.args.get("format", "csv")
    if fmt not in ("csv", "ndjson"):
        raise queries.FilterError("format", "must be csv or ndjson")
    filters = _api_filters()
    _audited("/api/v1/export", filters)
    body = queries.iter_export(client(), g.org.org_id, filters, fmt)
    mimetype = "text/csv" if fmt == "csv" else "application/x-ndjson"
    return Response(stream_with_context(body), mimetype=mimetype,
                    headers=attachment(f"audit-{g.org.org_id}.{fmt}"))


def attachment(name: str) -> Headers:
    """``Content-Disposition: attachment`` for a download called ``name`` (an
    org id can hold any character): an ASCII ``filename`` for old clients and
    the exact name as RFC 6266 ``filename*=UTF-8''...``, as Werkzeug's
    send_file writes it."""
    headers = Headers()
    headers.set("Content-Disposition", "attachment", filename=secure_filename(name) or "audit-export",
                **{"filename*": "UTF-8''" + quote(name, safe="!#$&+-.^_`|~")})
    return headers

"""The integrity badge, the latest verify result, and the monthly review
reports, for the superadmins of one org (``g.org``, from the session).

The verify result covers every org; the page shows only the signed-in
org's windows. Problems not tied to one window (the shared digest files,
erasure manifests) are shown as a count, since their text can name other
orgs: an operator reads them with ``upmetr-audit verify``.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from flask import Blueprint, abort, current_app, g, render_template, send_from_directory

from upmetr_audit.collector import report as report_mod
from upmetr_audit.collector import verify as verify_mod

from .auth import audit_access, self_audit

bp = Blueprint("integrity", __name__)


def _data_dir() -> str | None:
    return current_app.config.get("DATA_DIR")


def _iso(us: int | None) -> str | None:
    return datetime.fromtimestamp(us / 1e6, UTC).isoformat() if us else None


def status(org_id: str) -> dict:
    """What the badge says for one org: ``verified`` through a time, ``problem``,
    ``pending`` (checked, but no window is sealed yet), or ``never`` (not checked)."""
    latest = verify_mod.latest_result(_data_dir()) if _data_dir() else None
    if latest is None:
        return {"state": "never", "windows": [], "other_problems": 0}
    windows = [w for w in latest.get("windows", []) if w.get("org_id") == org_id]
    bad = [w for w in windows if w["status"] not in verify_mod.OK_STATUSES]
    # The shared digest files' problems, and this org's own (never another org's).
    other = len(latest.get("problems", [])) + len(latest.get("org_problems", {}).get(org_id, []))
    state = "problem" if bad or other else "verified" if latest.get("through_us") else "pending"
    return {
        "state": state,
        "through": _iso(latest.get("through_us")),
        "verified_at": _iso(latest.get("verified_at_us")),
        "scope": latest.get("scope", "full"),
        "windows": [{**w, "window_start": _iso(w["window_start_us"]), "window_end": _iso(w["window_end_us"])}
                    for w in bad],
        "erased_windows": sum(1 for w in windows if w["status"] == "erased"),
        "other_problems": other,
    }


def _reports(org_id: str) -> list[dict]:
    if not _data_dir():
        return []
    return [r for r in report_mod.list_reports(os.path.join(_data_dir(), "reports"))
            if r["org_id"] == org_id]


@bp.get("/audit/integrity")
@audit_access
def index():
    self_audit("system.api_access", **{"http.route": "/audit/integrity"})
    return render_template("integrity.html", org=g.org, integrity=status(g.org.org_id),
                           reports=[{**r, "generated_at": _iso(r["generated_at_us"])}
                                    for r in _reports(g.org.org_id)])


@bp.get("/audit/reports/<name>")
@audit_access
def download(name: str):
    """A report file of the signed-in org (its HTML or its signed manifest)."""
    for r in _reports(g.org.org_id):
        if name in (r["html_file"], r["manifest_file"]):
            self_audit("system.api_access", **{"http.route": "/audit/reports/<name>"})
            return send_from_directory(os.path.join(_data_dir(), "reports"), name, as_attachment=True)
    abort(404)

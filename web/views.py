"""The audit page."""

from __future__ import annotations

from flask import Blueprint, g, render_template

from .auth import audit_access

bp = Blueprint("audit", __name__)


@bp.get("/")
@audit_access
def index():
    return render_template("audit.html", org=g.org)

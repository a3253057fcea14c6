"""Sign-in and sign-out, and the access rules of the audit page.

Only superadmins of an organization with the ``audit_logs`` module see audit
data, and only their own organization's: the org comes from the session
(or the API token's owner), never from a request parameter.
"""

from __future__ import annotations

import functools
from urllib.parse import urlsplit

from flask import Blueprint, current_app, g, redirect, render_template, request, session, url_for

from . import accounts, security

bp = Blueprint("auth", __name__)

#: One message for every failed sign-in, so it does not tell which emails exist.
LOGIN_FAILED = "Invalid email or password."
ROLE_MESSAGE = "Only Superadmins can view audit logs; ask your organization's Superadmin."
MODULE_MESSAGE = ("Audit logs require the audit_logs module, part of the Enterprise plan; "
                  "ask your organization's Superadmin to enable it.")


def client():
    return current_app.config["STORE_CLIENT"]


def self_audit(action: str, *, status: str = "success", user: str | None = None,
               org: str | None = None, **kwargs) -> None:
    """Record an event about this page itself, through the same pipeline."""
    emit = current_app.config.get("AUDIT_EMIT")
    if emit is None:
        return
    user = user or (g.user.email if g.get("user") else "anonymous")
    org = org or (g.user.org_id if g.get("user") else "unknown")
    emit(action, org=org, user=user, status=status, ip=request.remote_addr,
         user_agent=request.user_agent.string[:512] or None, **kwargs)


@bp.before_app_request
def load_user() -> None:
    """The user of the session, or of a personal API token (``Authorization:
    Bearer uat_...``, API only)."""
    g.via_token = False
    if request.authorization and request.authorization.type == "bearer":
        g.user = None
        if request.path.startswith("/api/"):
            g.user = accounts.user_for_token(client(), request.authorization.token or "")
            g.via_token = g.user is not None
        return
    email = session.get("user")
    g.user = accounts.get_user(client(), email) if email else None
    # a disabled user, or a session issued before the user signed out or got a new password
    if g.user is not None and (g.user.disabled or session.get("iat", 0) <= g.user.sessions_valid_after):
        session.clear()
        g.user = None


def login_required(view):
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if g.user is None:
            if request.path.startswith("/api/"):
                return {"ok": False, "error": {"field": "authorization",
                                               "message": "sign in or send a bearer API token"}}, 401
            return redirect(url_for("auth.login", next=request.full_path))
        return view(*args, **kwargs)
    return wrapped


def audit_access(view):
    """Superadmin of an org with the audit_logs module; else a 403 page that says why."""
    @functools.wraps(view)
    @login_required
    def wrapped(*args, **kwargs):
        api = request.path.startswith("/api/")
        if g.user.role != "superadmin":
            if api:
                return {"ok": False, "error": {"field": "role", "message": ROLE_MESSAGE}}, 403
            return render_template("forbidden.html", reason="role"), 403
        org = accounts.get_org(client(), g.user.org_id)
        if org is None or accounts.AUDIT_MODULE not in org.modules:
            if api:
                return {"ok": False, "error": {"field": "module", "message": MODULE_MESSAGE}}, 403
            return render_template("forbidden.html", reason="module"), 403
        g.org = org
        return view(*args, **kwargs)
    return wrapped


@bp.route("/login", methods=["GET", "POST"])
def login():
    error = None
    if request.method == "POST":
        email = request.form.get("email", "").strip().lower()[:320]
        user = accounts.authenticate(client(), email, request.form.get("password", ""))
        if user is None:
            error = LOGIN_FAILED
            known = accounts.get_user(client(), email) if email else None
            self_audit("auth.login", status="failure", user=email or "(empty)",
                       org=known.org_id if known else "unknown", reason="invalid credentials")
        else:
            security.start_session(user.email)
            g.user = user
            self_audit("auth.login")
            return redirect(local_path(request.args.get("next", "")) or url_for("audit.index"))
    return render_template("login.html", error=error), (401 if error else 200)


def local_path(target: str) -> str | None:
    """``target`` if it is a path on this site, else None (no open redirect).
    Control characters and backslashes are refused outright: browsers (and
    urlsplit) drop tabs and newlines, and browsers read a backslash as a
    slash, so "/<tab>/evil.example" would become "//evil.example", another host."""
    if any(ch < " " or ch in "\x7f\\" for ch in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return None
    return target


@bp.post("/logout")
@login_required
def logout():
    """Sign out: ends every session of the user, on every device (a copied
    cookie too), not only this browser's."""
    self_audit("auth.logout")
    accounts.end_sessions(client(), g.user.email)
    session.clear()
    return redirect(url_for("auth.login"))

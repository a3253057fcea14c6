"""CSRF tokens, security headers and idle session expiry."""

from __future__ import annotations

import hmac
import secrets
import time

from flask import abort, current_app, request, session

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")


def csrf_token() -> str:
    """The session's CSRF token (made on first use); templates put it in forms."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def check_csrf() -> None:
    """Every state-changing request made with the session cookie needs the token."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    if request.authorization and request.authorization.type == "bearer":
        return  # API tokens are not sent by browsers on their own
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    expected = session.get("csrf", "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        abort(400, "missing or invalid CSRF token; reload the page and try again")


def expire_idle_session() -> None:
    idle = current_app.config["SESSION_IDLE_SECONDS"]
    now = time.time()
    if session.get("user") and now - session.get("seen", now) > idle:
        session.clear()
    if session.get("user"):
        session["seen"] = now


def add_security_headers(response):
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Cache-Control", "no-store")
    return response

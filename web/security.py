"""CSRF tokens, security headers, and the idle and absolute expiry of sessions."""

from __future__ import annotations

import hmac
import secrets
import time

from flask import current_app, request, session
from werkzeug.exceptions import BadRequest

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")


class CSRFError(BadRequest):
    """A state-changing request without the session's CSRF token (a 400)."""

    field = "csrf_token"
    description = "missing or invalid CSRF token; reload the page and try again"


def csrf_token() -> str:
    """The session's CSRF token (made on first use); templates put it in forms."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def check_csrf() -> None:
    """Every state-changing request made with the session cookie needs the token."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    if request.routing_exception is not None:
        return  # no such route or method: its 404 / 405 says more, and changes nothing
    if request.authorization and request.authorization.type == "bearer":
        return  # API tokens are not sent by browsers on their own
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    expected = session.get("csrf", "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise CSRFError()


def start_session(email: str) -> None:
    """A new session for a user who just signed in: issued (``iat``) and seen now."""
    session.clear()
    now = time.time()
    session.update(user=email, iat=now, seen=now)
    session.permanent = True


def expire_idle_session() -> None:
    """End a session idle for SESSION_IDLE_SECONDS, or issued longer than
    PERMANENT_SESSION_LIFETIME ago however busy (absolute, not sliding); one
    without both stamps ends too. Revocation (sign-out, a new password) is
    checked against the user's row in ``auth.load_user``."""
    if not session.get("user"):
        return
    now = time.time()
    seen, issued = session.get("seen"), session.get("iat")
    if (seen is None or issued is None
            or now - seen > current_app.config["SESSION_IDLE_SECONDS"]
            or now - issued > current_app.permanent_session_lifetime.total_seconds()):
        session.clear()
        return
    session["seen"] = now


def add_security_headers(response):
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Cache-Control", "no-store")
    if current_app.config["SESSION_COOKIE_SECURE"]:  # served over HTTPS (not plain-HTTP localhost)
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return response

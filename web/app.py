"""The app factory of the audit page."""

from __future__ import annotations

import datetime as dt

from flask import Flask, g, render_template, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from . import alerts, auth, integrity, security, views

#: The ``field`` of an API error answer for HTTP errors that are not about one
#: parameter (a CSRF error names ``csrf_token`` itself).
_ERROR_FIELDS = {404: "path", 405: "method", 413: "body"}


def create_app(config: dict) -> Flask:
    """``config`` must hold ``STORE_CLIENT`` (a clickhouse-connect client) and
    ``SECRET_KEY``; ``AUDIT_EMIT`` (``emit(action, **fields)``) records the
    page's own events; ``SESSION_COOKIE_SECURE`` is set when not on localhost."""
    if not config.get("SECRET_KEY") or len(config["SECRET_KEY"]) < 32:
        raise ValueError("the web page needs a SECRET_KEY of at least 32 characters")
    app = Flask(__name__)
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_NAME="upmetr_audit_session",
        SESSION_IDLE_SECONDS=30 * 60,
        PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=12),
        MAX_CONTENT_LENGTH=64 * 1024,
        LOGIN_RATE_LIMIT="10 per minute",
        # Failed sign-ins to one account from any address (a distributed attack
        # slips under the per-address limit); Auth0's default blocks at 10 in a row.
        LOGIN_ACCOUNT_RATE_LIMIT="20 per 15 minutes",
        API_RATE_LIMIT="300 per minute",
    )
    app.config.update(config)

    limiter = Limiter(get_remote_address, app=app, storage_uri="memory://",
                      default_limits=[], headers_enabled=True)
    app.extensions["upmetr_limiter"] = limiter

    app.before_request(security.expire_idle_session)
    app.before_request(security.check_csrf)
    app.after_request(security.add_security_headers)
    app.jinja_env.globals["csrf_token"] = security.csrf_token
    app.register_blueprint(auth.bp)
    app.register_blueprint(views.bp)
    app.register_blueprint(views.api)
    app.register_blueprint(alerts.bp)
    app.register_blueprint(alerts.api)
    app.register_blueprint(integrity.bp)
    for api in (views.api, alerts.api):
        limiter.limit(lambda: app.config["API_RATE_LIMIT"])(api)
    login_view = limiter.limit(
        lambda: app.config["LOGIN_RATE_LIMIT"], methods=["POST"])(app.view_functions["auth.login"])
    app.view_functions["auth.login"] = limiter.limit(
        lambda: app.config["LOGIN_ACCOUNT_RATE_LIMIT"], methods=["POST"], key_func=_login_account,
        deduct_when=lambda response: response.status_code == 401)(login_view)

    @app.errorhandler(429)
    def rate_limited(error):
        signed_in = g.get("user")
        auth.self_audit("system.rate_limit", status="failure",
                        user=None if signed_in else (_form_email() or "anonymous")[:320],
                        reason=f"rate limit {error.description}", **{"http.route": request.path})
        if request.path.startswith("/api/"):
            return {"ok": False, "error": {"field": "rate_limit",
                                           "message": f"too many requests ({error.description})"}}, 429
        return render_template("error.html", error=error), 429

    @app.errorhandler(HTTPException)
    def http_error(error):
        headers = [(k, v) for k, v in error.get_headers() if k != "Content-Type"]  # 405: Allow
        if request.path.startswith("/api/"):  # the API's own error shape, never the HTML page
            field = getattr(error, "field", None) or _ERROR_FIELDS.get(error.code, "request")
            body = {"ok": False, "error": {"field": field, "message": error.description}}
            return body, error.code, headers
        return render_template("error.html", error=error), error.code, headers

    return app


def _login_account() -> str:
    """The rate-limit key of a sign-in: the account tried, in lower case."""
    return "account:" + (_form_email() or "").strip().lower()


def _form_email() -> str | None:
    """The email of a sign-in form, if the body is small enough to read."""
    try:
        return request.form.get("email")
    except RequestEntityTooLarge:  # over MAX_CONTENT_LENGTH: the form is not read
        return None

"""Serving the audit page with waitress (a production threaded WSGI server),
in a thread of the process that owns the store."""

from __future__ import annotations

import os

from upmetr_audit.collector import secret
from upmetr_audit.collector.wsgi import ThreadedServer

from . import accounts
from .app import create_app

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def secret_key(data_dir: str) -> str:
    """``UPMETR_AUDIT_SECRET_KEY``, else a key generated once into the data dir (0600)."""
    return os.environ.get("UPMETR_AUDIT_SECRET_KEY") or secret.read_or_create(
        os.path.join(data_dir, "web-secret"), 48)


def first_superadmin(client, org_id: str) -> tuple[str, str] | None:
    """On a store with no superadmin, create one (and enable the audit module
    of its org); returns (email, one-time password), else None."""
    if accounts.has_superadmin(client):
        return None
    email = "superadmin@upmetr.local"
    password = accounts.create_user(client, email, org_id, "superadmin")
    accounts.set_module(client, org_id, accounts.AUDIT_MODULE, True)
    return email, password


class WebServer(ThreadedServer):
    def __init__(self, client, host: str, port: int, data_dir: str, audit_emit=None,
                 threads: int = 8, alert_rules=None):
        app = create_app({
            "STORE_CLIENT": client, "SECRET_KEY": secret_key(data_dir), "AUDIT_EMIT": audit_emit,
            "SESSION_COOKIE_SECURE": host not in LOCAL_HOSTS, "ALERT_RULES": alert_rules,
            "DATA_DIR": data_dir,
        })
        super().__init__(app, host, port, name="web", threads=threads)

"""Upmetr Audit's base install: the shipper, plus the event catalog and the
wire contract it enforces.

    from upmetr_audit.shipper import configure

    audit = configure(service_name="billing-api")          # OTEL_* env honoured
    audit.auth.login(org="acme", user="ana@acme.test", status="failure",
                     ip="203.0.113.7", reason="invalid password")
    audit.monitor.create(org="acme", user="ana@acme.test", resource="mon-42")
    audit.emit("settings.update", org="acme", user="ana@acme.test", status="success",
               changes={"timezone": {"before": "UTC", "after": "Europe/Lisbon"}})

``emit`` returns once the event is on local disk (durable mode); a
background worker delivers it to the collector and retries until it is
committed. See docs/shipper.md.
"""

from .handler import AuditLogHandler
from .logger import AuditLogger, configure, emit
from .spool import SpoolError, SpoolFullError

__all__ = ["AuditLogHandler", "AuditLogger", "SpoolError", "SpoolFullError", "configure", "emit"]

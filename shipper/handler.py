"""A stdlib ``logging.Handler`` for services that already log with Python logging.

    log.info("login failed", extra={"audit": {"action": "auth.login", "org": "acme",
             "user": "ana@acme.test", "status": "failure", "ip": "203.0.113.7"}})

Records without an ``audit`` mapping are ignored. The mapping holds the
keyword arguments of :meth:`AuditLogger.emit` (``action`` included); the log
message becomes the reason of a failure when none is given. It goes through
the same validation and the same durable path. Unlike ordinary handlers it
lets ``ValueError`` and ``SpoolFullError`` propagate: a dropped audit event
must not pass silently.
"""

from __future__ import annotations

import logging


class AuditLogHandler(logging.Handler):
    def __init__(self, audit_logger, level: int = logging.NOTSET):
        super().__init__(level)
        self.audit_logger = audit_logger

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "audit", None)
        if not isinstance(fields, dict):
            return
        fields = dict(fields)
        action = fields.pop("action", None)
        if not action:
            raise ValueError("audit log record needs an 'action' in extra={'audit': {...}}")
        if fields.get("status") == "failure" and not fields.get("reason"):
            fields["reason"] = record.getMessage()
        fields.setdefault("timestamp", int(record.created * 1e9))
        self.audit_logger.emit(action, **fields)

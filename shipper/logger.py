"""``AuditLogger``: validate an audit event against the catalog, then emit it
through the OTel SDK into the durable processor."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Mapping
from typing import Any

import uuid_utils
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.resources import Resource

from . import contract as c
from .catalog import ACTIONS, EVENT_NAME_PREFIX
from .durable import DeadLetter, DurableLogRecordProcessor, MemoryQueue
from .helpers import CatalogHelpers
from .spool import Spool
from .transport import sender_from_env

#: Keyword arguments of ``emit`` that name contract attributes.
_KEYWORDS = {"user_id": c.USER_ID, "user_agent": c.USER_AGENT, "session_id": c.SESSION_ID,
             "actor_type": c.ACTOR_TYPE}


_INT64 = range(-(2**63), 2**63)


def check_values(attrs: Mapping[str, Any]) -> None:
    """``ValueError`` for a value OTLP cannot carry, which the SDK's encoder
    would drop with only a log line: text that is not valid Unicode (a lone
    surrogate) and integers beyond 64 bits. Cheap for ASCII text."""
    for key, value in attrs.items():
        _check_value(key, key)
        _check_value(key, value)


def _check_value(key: str, value) -> None:
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                raise ValueError(f"attribute {key!r}: {value!r} is not valid Unicode text "
                                 f"(a lone surrogate)") from None
    elif isinstance(value, int):
        if value not in _INT64:
            raise ValueError(f"attribute {key!r}: {value} does not fit in 64 bits; "
                             f"send it as a string")
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_value(key, v)
    elif isinstance(value, Mapping):
        check_values(value)


def _did_you_mean(action: str) -> str:
    import difflib  # noqa: PLC0415 - only on the error path
    close = difflib.get_close_matches(action, ACTIONS, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def build_attributes(action: str, *, org: str, user: str, status: str, resource=None, ip=None,
                     reason=None, changes=None, event_id: str | None = None,
                     **attributes: Any) -> dict[str, Any]:
    """The record's attributes, or ``ValueError`` saying exactly what is wrong."""
    spec = ACTIONS.get(action)
    if spec is None:
        raise ValueError(f"unknown audit action {action!r}{_did_you_mean(action)}")
    for name, value in (("org", org), ("user", user), ("status", status)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{action}: required field {name!r} is missing or empty")
    if status not in c.STATUSES:
        raise ValueError(f"{action}: status must be 'success' or 'failure', not {status!r}")
    attrs: dict[str, Any] = {
        c.EVENT_ID: event_id or str(uuid_utils.uuid7()),
        c.ORG_ID: org, c.USER_EMAIL: user, c.STATUS: status,
    }
    if resource is not None:
        rtype, rid = resource if isinstance(resource, tuple) else (spec.resource_type, resource)
        if not rtype:
            raise ValueError(f"{action}: has no resource type in the catalog; pass "
                             f"resource=(type, id)")
        if spec.resource_type and rtype != spec.resource_type:
            raise ValueError(f"{action}: resource type must be {spec.resource_type!r}, not {rtype!r}")
        if not rid:
            raise ValueError(f"{action}: resource id is empty")
        attrs[c.RESOURCE_TYPE], attrs[c.RESOURCE_ID] = rtype, str(rid)
    elif spec.resource_type:
        raise ValueError(f"{action}: needs the {spec.resource_type} it acts on: pass resource=<id>")
    if ip is not None:
        if not isinstance(ip, str) or not c.is_valid_ip(ip):
            raise ValueError(f"{action}: ip {ip!r} is not an IPv4 or IPv6 address")
        attrs[c.CLIENT_ADDRESS] = ip
    if reason:
        attrs[c.REASON] = str(reason)
    if changes is not None:
        text = changes if isinstance(changes, str) else json.dumps(changes, default=str)
        if not c.is_json_object(text):
            raise ValueError(f"{action}: changes must be a JSON object "
                             '({"field": {"before": ..., "after": ...}})')
        attrs[c.CHANGES] = text
    for key, value in attributes.items():
        if value is not None:
            attrs[_KEYWORDS.get(key, key)] = value
    if (event_id is not None or c.EVENT_ID in attributes) and not (
            isinstance(attrs[c.EVENT_ID], str) and c.UUID_RE.fullmatch(attrs[c.EVENT_ID])):
        raise ValueError(f"{action}: event id {attrs[c.EVENT_ID]!r} is not a UUID")
    check_values(attrs)
    return attrs


def _timestamp_ns(timestamp) -> int:
    if timestamp is None:
        return time.time_ns()
    if isinstance(timestamp, dt.datetime):
        if timestamp.tzinfo is None:
            raise ValueError("timestamp must be timezone-aware (e.g. datetime.now(timezone.utc))")
        ns = int(timestamp.timestamp()) * 10**9 + timestamp.microsecond * 1000
    elif isinstance(timestamp, int) and not isinstance(timestamp, bool):
        ns = timestamp
    else:
        raise ValueError(f"timestamp must be an aware datetime or int nanoseconds since the "
                         f"epoch (time.time_ns()), not {timestamp!r}")
    if not c.MIN_TIMESTAMP_NS <= ns <= time.time_ns() + c.MAX_FUTURE_NS:
        raise ValueError(f"timestamp {timestamp!r} is before 2000 or more than a day ahead; "
                         f"an int is nanoseconds since the epoch (time.time_ns()), not "
                         f"seconds or milliseconds")
    return ns


def _count_records(spool: Spool) -> int:
    """Events already waiting in a spool left by an earlier run."""
    n = 0
    while True:
        payloads, _ = spool.read(10_000)
        if not payloads:
            break
        n += len(payloads)
    spool.rewind()
    return n


#: How far ``emit`` goes before it returns (see :class:`AuditLogger`).
MODES = ("durable", "crash-safe", "fast")


class AuditLogger(CatalogHelpers):
    """The shipper. Arguments override the standard OTel environment variables
    (``OTEL_EXPORTER_OTLP_[LOGS_]ENDPOINT``, ``_PROTOCOL``, ``_HEADERS``,
    ``_COMPRESSION``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``).

    :param mode: ``"durable"`` (default: ``emit`` returns once the event is
        fsynced in the spool: it survives a crash of the process or of the
        machine), ``"crash-safe"`` (``emit`` returns once the event is written
        to the spool file: it survives a crash of the process; the spool is
        fsynced every ``sync_interval_s``, so a power loss can lose at most
        that much) or ``"fast"`` (in memory: events not yet sent are lost if
        the process dies).
    :param linger_s: how long the sending thread waits for a full batch
        (``max_batch`` events) before it sends what it has; ``flush`` and
        ``shutdown`` send at once.
    :param spool_dir: default ``$UPMETR_AUDIT_SPOOL_DIR``, else
        ``<$UPMETR_AUDIT_DATA_DIR or ./var>/spool/<service.name>``.
    """

    def __init__(self, *, service_name: str | None = None, endpoint: str | None = None,
                 protocol: str | None = None, headers: Mapping[str, str] | None = None,
                 compression: str | None = None, resource_attributes: Mapping | None = None,
                 spool_dir: str | None = None, mode: str = "durable",
                 spool_max_bytes: int = 256 * 1024 * 1024, emit_timeout_s: float = 5.0,
                 max_batch: int = 512, backoff_max_s: float = 30.0,
                 sync_interval_s: float = 0.1, linger_s: float = 0.05):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, not {mode!r}")
        attrs = dict(resource_attributes or {})
        if service_name:
            attrs["service.name"] = service_name
        self.resource = Resource.create(attrs)
        service = str(self.resource.attributes.get("service.name", "unknown_service"))
        self.spool_dir = spool_dir or os.environ.get("UPMETR_AUDIT_SPOOL_DIR") or os.path.join(
            os.environ.get("UPMETR_AUDIT_DATA_DIR", "./var"), "spool", service)
        sender = sender_from_env(endpoint, protocol, dict(headers) if headers else None, compression)
        if mode != "fast":
            queue = Spool(self.spool_dir, max_bytes=spool_max_bytes,
                          # a quarter of the bound at most: the active segment's
                          # delivered bytes stay on disk until it rolls
                          segment_bytes=max(4096, min(8 * 1024 * 1024, spool_max_bytes // 4)),
                          sync_interval_s=sync_interval_s if mode == "crash-safe" else 0.0)
            pending = _count_records(queue)
        else:
            os.makedirs(self.spool_dir, exist_ok=True)
            queue, pending = MemoryQueue(), 0
        self.mode = mode
        self.processor = DurableLogRecordProcessor(
            queue, sender, DeadLetter(os.path.join(self.spool_dir, "dead-letter.jsonl")),
            max_batch=max_batch, emit_timeout_s=emit_timeout_s, backoff_max_s=backoff_max_s,
            pending=pending, linger_s=linger_s,
            # At interpreter exit a durable spool keeps what is unsent for the
            # next run; an in-memory queue gets longer to deliver.
            shutdown_timeout_millis=30_000 if mode == "fast" else 2_000)
        self.provider = LoggerProvider(resource=self.resource, shutdown_on_exit=True)
        self.provider.add_log_record_processor(self.processor)
        self._logger = self.provider.get_logger(c.SCOPE_NAME)

    def emit(self, action: str, *, org: str, user: str, status: str, resource=None, ip=None,
             reason=None, changes=None, timestamp=None, **attributes: Any) -> str:
        """Record one audit event; returns its event id.

        Raises ``ValueError`` (invalid event, nothing written),
        ``SpoolFullError`` (the spool stayed full) or ``SpoolError`` (disk).
        """
        attrs = build_attributes(action, org=org, user=user, status=status, resource=resource,
                                 ip=ip, reason=reason, changes=changes, **attributes)
        self._logger.emit(
            event_name=EVENT_NAME_PREFIX + action, timestamp=_timestamp_ns(timestamp),
            severity_number=SeverityNumber.WARN if status == "failure" else SeverityNumber.INFO,
            severity_text="WARN" if status == "failure" else "INFO", attributes=attrs)
        return attrs[c.EVENT_ID]

    def emit_record(self, event_name: str, attributes: dict[str, Any], timestamp_ns: int) -> None:
        """Emit a record given in wire-contract form (the agent's JSON lines).

        ``attributes`` are judged by the contract's rules, as the collector
        will judge them; ``ValueError`` names the broken rule.
        """
        strings = {k: v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list))
                   else str(v).lower() if isinstance(v, bool) else str(v)
                   for k, v in attributes.items()}
        reason = c.reject_reason(event_name, strings, timestamp_ns, time.time_ns())
        if reason:
            raise ValueError(reason)
        check_values(attributes)
        status = strings[c.STATUS]
        self._logger.emit(
            event_name=event_name, timestamp=timestamp_ns, attributes=attributes,
            severity_number=SeverityNumber.WARN if status == "failure" else SeverityNumber.INFO,
            severity_text="WARN" if status == "failure" else "INFO")

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every event is delivered (or dead-lettered)."""
        return self.processor.force_flush(int(timeout_s * 1000))

    def shutdown(self, timeout_s: float = 30.0) -> int:
        """Deliver what it can within the timeout, then stop; returns the number
        of events still in the spool (the next run sends them)."""
        left = self.processor.shutdown(int(timeout_s * 1000))
        self.provider.shutdown()
        return left

    def stats(self) -> dict:
        """pending, sent, retried, dead_lettered, partial_successes, oldest_pending_age_s."""
        return self.processor.current_stats()


_default: AuditLogger | None = None


def configure(**kwargs) -> AuditLogger:
    """Create the process-wide :class:`AuditLogger` (see its arguments)."""
    global _default
    if _default is not None:
        _default.shutdown()
    _default = AuditLogger(**kwargs)
    return _default


def emit(action: str, **kwargs) -> str:
    """``emit`` on the logger made by :func:`configure`."""
    if _default is None:
        raise RuntimeError("call upmetr_audit.shipper.configure(...) first")
    return _default.emit(action, **kwargs)

"""The wire contract of an audit event, and the rules a record must meet.

An audit event is an OTel log record whose top-level ``event_name`` is
``upmetr.audit.<action id>`` (see docs/event-contract.md). Its attributes are
listed in :data:`ATTRIBUTES`; everything else a producer sends is kept in the
row's ``details`` map.

:func:`reject_reason` is the Python form of the acceptance rules. ClickHouse
applies the same rules in SQL (``upmetr_audit.collector.schema``), so that a
record written by the official OTel Collector is judged exactly like one
written by ours; ``tests/test_contract_parity.py`` runs both on the same
records and requires the same verdicts.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import math
import re
from collections.abc import Mapping

from .catalog import ACTIONS, EVENT_NAME_PREFIX

SCOPE_NAME = "upmetr.audit"
STATUSES = ("success", "failure")
ACTOR_TYPES = ("user", "api_token", "system")

# Attribute names of the contract.
EVENT_ID = "log.record.uid"
ORG_ID = "upmetr.org.id"
USER_EMAIL = "user.email"
STATUS = "upmetr.audit.status"
RESOURCE_TYPE = "upmetr.resource.type"
RESOURCE_ID = "upmetr.resource.id"
CLIENT_ADDRESS = "client.address"
USER_ID = "user.id"
USER_AGENT = "user_agent.original"
SESSION_ID = "session.id"
ACTOR_TYPE = "upmetr.actor.type"
REASON = "upmetr.audit.reason"
CHANGES = "upmetr.audit.changes"

#: Contract attribute -> ``audit.audit_events`` column it is stored in.
#: Any attribute not listed here is kept in the ``details`` map.
ATTRIBUTES: dict[str, str] = {
    EVENT_ID: "event_id",
    ORG_ID: "org_id",
    USER_EMAIL: "user_email",
    STATUS: "status",
    RESOURCE_TYPE: "resource_type",
    RESOURCE_ID: "resource_id",
    CLIENT_ADDRESS: "ip",
    USER_ID: "user_id",
    USER_AGENT: "user_agent",
    SESSION_ID: "session_id",
    ACTOR_TYPE: "actor_type",
    REASON: "reason",
    CHANGES: "changes",
}

#: Canonical textual UUID (8-4-4-4-12 hex digits). Used by Python and by SQL.
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
UUID_RE = re.compile(UUID_PATTERN)

#: Events before this instant are refused as absurd (2000-01-01T00:00:00Z).
MIN_TIMESTAMP_NS = 946_684_800 * 10**9
#: Events further than this in the future of their arrival are refused as absurd.
MAX_FUTURE_NS = 86_400 * 10**9
#: ``changes`` nested deeper than this (objects and arrays) are refused: a
#: diff is a few levels deep, and past ~1,000 levels Python's and
#: ClickHouse's JSON parsers give up at different depths.
MAX_CHANGES_DEPTH = 64


class Reason:
    """Why a record is refused. The strings are stable: metrics, the
    ``audit_rejects.reason`` column and partial-success messages use them."""

    NOT_AUDIT = "not an audit event"
    UNKNOWN_ACTION = "unknown action"
    MISSING_EVENT_ID = "missing event id"
    INVALID_EVENT_ID = "invalid event id"
    MISSING_ORG = "missing org"
    MISSING_USER = "missing user"
    MISSING_STATUS = "missing status"
    INVALID_STATUS = "invalid status"
    MISSING_RESOURCE = "missing resource"
    WRONG_RESOURCE_TYPE = "wrong resource type"
    MALFORMED_IP = "malformed ip"
    ABSURD_TIMESTAMP = "absurd timestamp"
    INVALID_CHANGES = "invalid changes"


@functools.lru_cache(maxsize=65536)
def is_valid_ip(text: str) -> bool:
    """True for a plain IPv4 (dotted quad) or IPv6 address, without port or
    zone; no octet of a dotted quad has a leading zero (``01.2.3.4``,
    ``::ffff:01.2.3.4``: octal in some parsers)."""
    if "%" in text:
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _reject_constant(name: str) -> None:
    raise ValueError(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number out of range: {text}")
    return value


def json_depth(value) -> int:
    """How deeply objects and arrays nest in a decoded JSON value (``{}`` is 1)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, depth)
        todo.extend((child, depth + 1) for child in item)
    return deepest


def is_json_object(text: str) -> bool:
    """True when ``text`` is strict JSON and an object: no NaN or Infinity, no
    number beyond a double, no lone UTF-16 surrogate (as ClickHouse's
    isValidJSON), no byte order mark, at most :data:`MAX_CHANGES_DEPTH` deep."""
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError, UnicodeEncodeError):
        return False  # json.loads refuses a leading byte order mark too
    return isinstance(value, dict) and json_depth(value) <= MAX_CHANGES_DEPTH


def reject_reason(
    event_name: str, attrs: Mapping[str, str], time_unix_nano: int, now_ns: int
) -> str | None:
    """The first rule ``record`` breaks, or ``None`` when it is acceptable.

    ``attrs`` are the record's attributes as strings (the exporter's
    ``AsString`` form); ``time_unix_nano`` is its timestamp after the
    observed-time fallback. The order of the checks is part of the contract:
    the SQL form in ``schema.py`` checks in the same order.
    """
    if not event_name.startswith(EVENT_NAME_PREFIX):
        return Reason.NOT_AUDIT
    action = ACTIONS.get(event_name[len(EVENT_NAME_PREFIX):])
    if action is None:
        return Reason.UNKNOWN_ACTION
    uid = attrs.get(EVENT_ID, "")
    if not uid:
        return Reason.MISSING_EVENT_ID
    if not UUID_RE.fullmatch(uid):
        return Reason.INVALID_EVENT_ID
    if not attrs.get(ORG_ID, ""):
        return Reason.MISSING_ORG
    if not attrs.get(USER_EMAIL, ""):
        return Reason.MISSING_USER
    status = attrs.get(STATUS, "")
    if not status:
        return Reason.MISSING_STATUS
    if status not in STATUSES:
        return Reason.INVALID_STATUS
    if action.resource_type is not None:
        if not attrs.get(RESOURCE_ID, "") or not attrs.get(RESOURCE_TYPE, ""):
            return Reason.MISSING_RESOURCE
        if attrs[RESOURCE_TYPE] != action.resource_type:
            return Reason.WRONG_RESOURCE_TYPE
    ip = attrs.get(CLIENT_ADDRESS, "")
    if ip and not is_valid_ip(ip):
        return Reason.MALFORMED_IP
    if time_unix_nano < MIN_TIMESTAMP_NS or time_unix_nano > now_ns + MAX_FUTURE_NS:
        return Reason.ABSURD_TIMESTAMP
    changes = attrs.get(CHANGES, "")
    if changes and not is_json_object(changes):
        return Reason.INVALID_CHANGES
    return None

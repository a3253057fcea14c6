"""The event catalog: every audit category and action, in one place.

This module is the single source of truth. The acceptance rules
(``contract.reject_reason``) and the ``audit.catalog_actions`` table, which the
ClickHouse materialized views read, derive from :data:`CATEGORIES`; so must
every later consumer (shipper helpers, web filters, Grafana variables).

An action id is ``<category>.<verb>``; its OTel ``event_name`` is
``upmetr.audit.<action id>``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Prefix of every audit record's top-level OTel ``event_name``.
EVENT_NAME_PREFIX = "upmetr.audit."


@dataclass(frozen=True)
class Action:
    id: str
    label: str
    #: Resource type the action is about, or ``None`` when it needs no resource.
    resource_type: str | None = None
    #: Whether a ``failure`` outcome is meaningful (a failed login, a failed test).
    can_fail: bool = False

    @property
    def category(self) -> str:
        return self.id.split(".", 1)[0]

    @property
    def verb(self) -> str:
        return self.id.split(".", 1)[1]

    @property
    def event_name(self) -> str:
        return EVENT_NAME_PREFIX + self.id


@dataclass(frozen=True)
class Category:
    id: str
    label: str
    actions: tuple[Action, ...]


def _category(cid: str, label: str, *actions: tuple) -> Category:
    return Category(cid, label, tuple(Action(f"{cid}.{a[0]}", *a[1:]) for a in actions))


# (verb, label, resource type, can fail)
CATEGORIES: tuple[Category, ...] = (
    _category(
        "auth", "Authentication",
        ("login", "Login", None, True),
        ("logout", "Logout", None, False),
        ("password_change", "Password change", None, True),
    ),
    _category(
        "mfa", "MFA",
        ("enable", "MFA enabled", None, True),
        ("disable", "MFA disabled", None, True),
        ("verify", "MFA verification", None, True),
        ("backup_code_use", "MFA backup code used", None, True),
        ("backup_codes_regenerate", "MFA backup codes regenerated", None, False),
    ),
    _category(
        "magic_link", "Magic Link",
        ("send", "Magic link sent", None, True),
        ("verify", "Magic link verification", None, True),
    ),
    _category(
        "team", "Team Management",
        ("user_create", "Team member created", "user", False),
        ("user_update", "Team member updated", "user", False),
        ("user_delete", "Team member deleted", "user", False),
    ),
    _category(
        "cloud_account", "Cloud Accounts",
        ("create", "Cloud account created", "cloud_account", False),
        ("update", "Cloud account updated", "cloud_account", False),
        ("delete", "Cloud account deleted", "cloud_account", False),
        ("test_connection", "Cloud account connection tested", "cloud_account", True),
        ("discover_resources", "Cloud resources discovered", "cloud_account", True),
    ),
    _category(
        "monitor", "Uptime Monitors",
        ("create", "Monitor created", "monitor", False),
        ("update", "Monitor updated", "monitor", False),
        ("delete", "Monitor deleted", "monitor", False),
    ),
    _category(
        "incident", "Incidents",
        ("acknowledge", "Incident acknowledged", "incident", False),
        ("resolve", "Incident resolved", "incident", False),
        ("delete", "Incident deleted", "incident", False),
    ),
    _category(
        "compute", "Compute Actions",
        ("instance_start", "EC2 instance started", "instance", True),
        ("instance_stop", "EC2 instance stopped", "instance", True),
        ("instance_reboot", "EC2 instance rebooted", "instance", True),
    ),
    _category(
        "agent", "Infra Agents",
        ("create", "Infra agent created", "agent", False),
        ("update", "Infra agent updated", "agent", False),
        ("delete", "Infra agent deleted", "agent", False),
        ("token_regenerate", "Infra agent token regenerated", "agent", False),
    ),
    _category(
        "alert_rule", "Alert Rules",
        ("create", "Alert rule created", "alert_rule", False),
        ("update", "Alert rule updated", "alert_rule", False),
        ("delete", "Alert rule deleted", "alert_rule", False),
    ),
    _category(
        "status_page", "Status Pages",
        ("create", "Status page created", "status_page", False),
        ("update", "Status page updated", "status_page", False),
        ("delete", "Status page deleted", "status_page", False),
        ("token_regenerate", "Status page token regenerated", "status_page", False),
    ),
    _category(
        "settings", "Settings",
        ("update", "Settings updated", None, False),
        ("status_page_token_regenerate", "Status page token regenerated (settings)", None, False),
    ),
    _category(
        "system", "System",
        ("api_access", "API access", None, True),
        ("rate_limit", "Rate limit hit", None, True),
        ("alert_acknowledge", "Failed-login alert acknowledged", "security_alert", False),
        ("personal_data_erase", "Personal data erased (GDPR)", "data_subject", False),
    ),
)

#: Every action by id, in catalog order.
ACTIONS: dict[str, Action] = {a.id: a for c in CATEGORIES for a in c.actions}

#: Every category by id.
CATEGORY_BY_ID: dict[str, Category] = {c.id: c for c in CATEGORIES}


def action_for_event_name(event_name: str) -> Action | None:
    """The catalog action for an OTel ``event_name``, or ``None`` if it is not one."""
    if not event_name.startswith(EVENT_NAME_PREFIX):
        return None
    return ACTIONS.get(event_name[len(EVENT_NAME_PREFIX):])

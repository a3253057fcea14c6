"""Activity explorer: one table of events, filtered by variables and the time range."""

from __future__ import annotations

from upmetr_audit.collector.rules import IP_TEXT

from .panels import (
    ORG_VARIABLE,
    TIME_FILTER,
    custom_variable,
    dashboard,
    org_filter,
    query_variable,
    table,
    textbox_variable,
)

UID = "upmetr-audit-explorer"


def _all(column: str, var: str) -> str:
    return f"$__conditionalAll({column} IN (${{{var}:singlequote}}), ${var})"


def build() -> dict:
    variables = [
        ORG_VARIABLE,
        query_variable("category", "Category",
                       "SELECT DISTINCT category FROM audit.catalog_actions ORDER BY category"),
        query_variable("action", "Action", "SELECT action FROM audit.catalog_actions ORDER BY action"),
        custom_variable("status", "Status", ["success", "failure"]),
        textbox_variable("user", "User email"),
    ]
    sql = f"""
SELECT timestamp, org_id, category, action, status, user_email, {IP_TEXT} AS client_ip,
    actor_type, resource_type, resource_id, service_name, reason, session_id, event_id
FROM audit.audit_events
WHERE {TIME_FILTER}
  AND {org_filter()}
  AND {_all("category", "category")}
  AND {_all("action", "action")}
  AND {_all("status", "status")}
  AND $__conditionalAll(user_email = ${{user:singlequote}}, $user)
ORDER BY timestamp DESC, event_id
LIMIT 1000"""
    panels = [table("Events", sql, "The newest 1,000 events matching the variables in the time range "
                    "(leave User email empty for every user).", width=24, height=20)]
    return dashboard(UID, "Activity explorer",
                     "Upmetr Audit: browse events by org, category, action, status and user.",
                     panels, variables, time_from="now-6h")

"""Authentication & security: failed logins, MFA, magic links, the spike rules and their alerts."""

from __future__ import annotations

from upmetr_audit.collector import rules as rules_mod
from upmetr_audit.collector.rules import IP_TEXT

from . import alerting
from .panels import ORG_VARIABLE, TIME_FILTER, dashboard, org_filter, table, timeseries

UID = "upmetr-audit-security"
EVENTS = "audit.audit_events"
FAILED_LOGIN = "action = 'auth.login' AND status = 'failure'"


def success_after_failures_sql(ruleset: rules_mod.RuleSet) -> str:
    """Successful logins preceded, within the success-after rule's window, by at
    least the brute-force warning threshold of failures on the same account."""
    brute = ruleset.rules["user_brute_force"]
    minutes = ruleset.rules["success_after_failures"].window_minutes
    at_least = int(brute.levels[0][1])
    org = org_filter()
    return f"""
SELECT s.timestamp AS time, s.org_id AS org_id, s.user_email AS user_email, s.client_ip AS client_ip,
    countIf(f.timestamp >= s.timestamp - INTERVAL {minutes} MINUTE AND f.timestamp < s.timestamp)
        AS failures_before
FROM (
    SELECT org_id, user_email, {IP_TEXT} AS client_ip, timestamp, event_id FROM {EVENTS}
    WHERE {TIME_FILTER} AND {org} AND action = 'auth.login' AND status = 'success') AS s
INNER JOIN (
    SELECT org_id, user_email, timestamp FROM {EVENTS}
    WHERE timestamp >= $__fromTime_ms - INTERVAL {minutes} MINUTE AND timestamp <= $__toTime_ms
      AND {org} AND status = 'failure' AND {rules_mod.failed_actions_sql(brute)}) AS f
    ON s.org_id = f.org_id AND s.user_email = f.user_email
GROUP BY s.event_id, time, org_id, user_email, client_ip
HAVING failures_before >= {at_least}
ORDER BY time DESC, user_email
LIMIT 200"""


def build(ruleset: rules_mod.RuleSet | None = None) -> dict:
    ruleset = ruleset or rules_mod.RuleSet()
    org = org_filter()
    brute = ruleset.rules["user_brute_force"]
    panels = [
        table("Failed logins by user", f"""
SELECT user_email, count() AS failures, uniqExact(ip) AS source_ips, max(timestamp) AS last_failure
FROM {EVENTS}
WHERE {TIME_FILTER} AND {org} AND {FAILED_LOGIN}
GROUP BY user_email
ORDER BY failures DESC, user_email
LIMIT 50""", "Accounts with failed auth.login events in the time range, most failures first."),
        table("Failed logins by IP", f"""
SELECT {IP_TEXT} AS client_ip, count() AS failures, uniqExact(user_email) AS users,
    max(timestamp) AS last_failure
FROM {EVENTS}
WHERE {TIME_FILTER} AND {org} AND {FAILED_LOGIN}
GROUP BY client_ip
ORDER BY failures DESC, client_ip
LIMIT 50""", "Source addresses of failed auth.login events (IPv4 shown without the ::ffff: prefix)."),
        timeseries("MFA events", f"""
SELECT $__timeInterval_ms(timestamp) AS time, concat(action, ' ', toString(status)) AS event,
    count() AS events
FROM {EVENTS}
WHERE {TIME_FILTER} AND {org} AND category = 'mfa'
GROUP BY time, event
ORDER BY time, event""", "MFA events per interval, one series per action and status.", stacked=True,
                   bars=True),
        timeseries("Magic-link failures", f"""
SELECT $__timeInterval_ms(timestamp) AS time, action, count() AS failures
FROM {EVENTS}
WHERE {TIME_FILTER} AND {org} AND category = 'magic_link' AND status = 'failure'
GROUP BY time, action
ORDER BY time, action""", "Failed magic-link events per interval, one series per action.", stacked=True,
                   bars=True),
        table("Success after failures", success_after_failures_sql(ruleset),
              f"Successful logins in the time range preceded by at least {int(brute.levels[0][1])} "
              f"failed logins (and MFA / magic-link verifications) of the same account within "
              f"{ruleset.rules['success_after_failures'].window_minutes} minutes.", width=24),
        table("Spike rules: current results", alerting.current_results_sql(ruleset, org),
              "Every spike rule evaluated like the built-in detector, for the window ending one minute "
              "before the end of the time range; one row per hit. The same SQL drives the Grafana "
              "alert rules. success_after_failures reads the detector's open alerts (audit_alerts).",
              width=24),
        table("Alert history", f"""
SELECT changed_at, org_id, rule, key_type, key, change, state, severity, value, threshold, failures,
    changed_by
FROM audit.audit_alerts
WHERE $__timeFilter_ms(changed_at) AND {org}
ORDER BY changed_at DESC, alert_id, version DESC
LIMIT 1 BY alert_id, version
LIMIT 500""", "State changes of the built-in detector's alerts (audit_alerts) in the time range, newest "
              "first.", width=24, height=10),
    ]
    return dashboard(UID, "Authentication & security",
                     "Upmetr Audit: failed logins, MFA and magic links, the spike rules and their alerts.",
                     panels, [ORG_VARIABLE])

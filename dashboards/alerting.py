"""Grafana alert rules generated from the detector's rule definitions.

Each spike rule of :mod:`upmetr_audit.collector.rules` becomes one Grafana
rule whose SQL is :func:`rules.rule_sql` itself, evaluated at the same window
end as the built-in detector (Grafana's ``$__toTime_ms``, the evaluation time,
minus the detector's one-minute lag). Thresholds therefore live in one place.

The query is wrapped to be alert-safe: no dashboard variables, table format,
one numeric column (``value``) and string columns only (``org_id``,
``key_type``, ``key``, ``severity``, ``rule``), which Grafana turns into one
alert instance per row with those columns as labels. A rule's query returns
rows only when it fires, so the condition is ``value > 0`` and no data is OK.
"""

from __future__ import annotations

from datetime import timedelta

from upmetr_audit.collector import rules as rules_mod

from . import DATASOURCE_UID, FOLDER_TITLE, FOLDER_UID, PLUGIN_ID, PLUGIN_VERSION

#: The detector's lag: windows end one minute before the evaluation.
LAG = timedelta(minutes=1)
END_SQL = f"(toDateTime64($__toTime_ms, 6, 'UTC') - INTERVAL {int(LAG.total_seconds() // 60)} MINUTE)"
LABEL_COLUMNS = ("org_id", "key_type", "key", "severity", "rule")

GROUP = "upmetr-audit-spike-rules"
INTERVAL_SECONDS = 60
CONTACT_POINT = "upmetr-audit-webhook"
CONTACT_POINT_UID = "upmetr-audit-webhook"
#: Static labels on every rule; the notification policy routes on ``source``.
RULE_LABELS = {"source": "upmetr-audit", "team": "security"}
EXPR = {"type": "__expr__", "uid": "__expr__"}


def tidy(sql: str) -> str:
    """No trailing spaces (so the YAML keeps SQL as a readable literal block)."""
    return "\n".join(line.rstrip() for line in sql.strip().splitlines())


def rule_uid(rule_id: str) -> str:
    return f"upmetr-audit-{rule_id}"


def alert_sql(ruleset: rules_mod.RuleSet, rule_id: str) -> str | None:
    """The alert-safe query of one rule (``None`` when it is off everywhere)."""
    sql = rules_mod.rule_sql(ruleset, rule_id, END_SQL)
    if sql is None:
        return None
    return tidy(f"SELECT toString(org_id) AS org_id, toString(key_type) AS key_type, toString(key) AS key,\n"
                f"    toString(severity) AS severity, '{rule_id}' AS rule, toFloat64(value) AS value\n"
                f"FROM ({sql}\n)")


def current_results_sql(ruleset: rules_mod.RuleSet, condition: str) -> str:
    """Every rule's hits at the same window end, as one table (for a dashboard panel)."""
    parts = []
    for rule_id in ruleset.rules:
        sql = rules_mod.rule_sql(ruleset, rule_id, END_SQL)
        if sql is not None:
            parts.append(
                f"SELECT '{rule_id}' AS rule, toString(org_id) AS org_id, toString(key_type) AS key_type,\n"
                f"    toString(key) AS key, toString(severity) AS severity, toFloat64(value) AS value,\n"
                f"    toFloat64(threshold) AS threshold, toUInt64(failures) AS failures,\n"
                f"    toDateTime64(first_seen, 6, 'UTC') AS first_seen, "
                f"toDateTime64(last_seen, 6, 'UTC') AS last_seen\n"
                f"FROM ({sql}\n)")
    union = "\nUNION ALL\n".join(parts)
    return tidy("SELECT rule, org_id, key_type, key, severity, value, threshold, failures, first_seen,\n"
                f"    last_seen\nFROM (\n{union}\n)\nWHERE {condition}\nORDER BY rule, org_id, key")


def _window_seconds(rule: rules_mod.Rule) -> int:
    return rule.window_minutes * 60 + int(LAG.total_seconds())


def _rule(ruleset: rules_mod.RuleSet, rule_id: str, sql: str) -> dict:
    rule = ruleset.rules[rule_id]
    return {
        "uid": rule_uid(rule_id),
        "title": rule.title,
        "condition": "C",
        "data": [
            {"refId": "A", "relativeTimeRange": {"from": _window_seconds(rule), "to": 0},
             "datasourceUid": DATASOURCE_UID,
             "model": {"refId": "A", "datasource": {"type": PLUGIN_ID, "uid": DATASOURCE_UID},
                       "editorType": "sql", "format": 1, "queryType": "table",
                       "pluginVersion": PLUGIN_VERSION, "rawSql": sql,
                       "intervalMs": 1000, "maxDataPoints": 43200}},
            {"refId": "B", "relativeTimeRange": {"from": 0, "to": 0}, "datasourceUid": "__expr__",
             "model": {"refId": "B", "type": "reduce", "expression": "A", "reducer": "last",
                       "datasource": dict(EXPR)}},
            {"refId": "C", "relativeTimeRange": {"from": 0, "to": 0}, "datasourceUid": "__expr__",
             "model": {"refId": "C", "type": "threshold", "expression": "B", "datasource": dict(EXPR),
                       "conditions": [{"evaluator": {"type": "gt", "params": [0]}}]}},
        ],
        # A query with no row means the rule does not fire.
        "noDataState": "OK",
        "execErrState": "Error",
        # Like the detector, which opens an alert at the first hit.
        "for": "0s",
        "labels": dict(RULE_LABELS),
        "annotations": {
            "summary": "{{ $labels.rule }} ({{ $labels.severity }}): {{ $labels.key_type }} "
                       "{{ $labels.key }} in org {{ $labels.org_id }}, value {{ $values.B.Value }}",
            "description": f"{rule.title}: {rule.describe()}",
        },
        "isPaused": False,
    }


def file_rules(ruleset: rules_mod.RuleSet) -> list[dict]:
    """The rules, in the file-provisioning shape (``AlertRuleV1``)."""
    out = []
    for rule_id in ruleset.rules:
        sql = alert_sql(ruleset, rule_id)
        if sql is not None:
            out.append(_rule(ruleset, rule_id, sql))
    return out


def rules_file(ruleset: rules_mod.RuleSet) -> dict:
    return {"apiVersion": 1, "groups": [{
        "orgId": 1, "name": GROUP, "folder": FOLDER_TITLE, "interval": f"{INTERVAL_SECONDS}s",
        "rules": file_rules(ruleset)}]}


def api_rule_group(ruleset: rules_mod.RuleSet) -> dict:
    """The body of ``PUT /api/v1/provisioning/folder/{folder}/rule-groups/{group}``.

    Through the API the rules name their contact point themselves
    (``notification_settings``), so the org's notification policy tree is
    left alone."""
    rules = [{**r, "folderUID": FOLDER_UID, "ruleGroup": GROUP, "orgID": 1,
              "notification_settings": {"receiver": CONTACT_POINT}} for r in file_rules(ruleset)]
    return {"title": GROUP, "folderUid": FOLDER_UID, "interval": INTERVAL_SECONDS, "rules": rules}


def contact_point(url: str) -> dict:
    """The webhook contact point, in the API shape (``url`` may be an env reference)."""
    return {"uid": CONTACT_POINT_UID, "name": CONTACT_POINT, "type": "webhook",
            "settings": {"url": url, "httpMethod": "POST"}, "disableResolveMessage": False}


def contact_points_file(url_env: str) -> dict:
    cp = contact_point("${" + url_env + "}")
    return {"apiVersion": 1, "contactPoints": [{
        "orgId": 1, "name": cp["name"],
        "receivers": [{k: cp[k] for k in ("uid", "type", "settings", "disableResolveMessage")}]}]}


def policies_file() -> dict:
    """The org's notification policy tree (file provisioning replaces the whole tree)."""
    return {"apiVersion": 1, "policies": [{
        "orgId": 1, "receiver": CONTACT_POINT,
        "group_by": ["grafana_folder", "alertname"],
        "group_wait": "30s", "group_interval": "5m", "repeat_interval": "4h",
        "routes": [{"receiver": CONTACT_POINT,
                    "object_matchers": [["source", "=", RULE_LABELS["source"]]],
                    "group_by": ["alertname", "org_id", "rule"]}]}]}

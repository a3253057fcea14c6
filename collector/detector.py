"""The failed-login spike detector: rules → alerts, with their lifecycle.

Each run evaluates every rule once, across all orgs, over windows that end
``lag`` before now (so late events still count, and future-dated events never
do). It then reconciles the hits with the open alerts in
``audit.audit_alerts``:

* a hit with no open alert for its (org, rule, key) opens one (``firing``);
* a hit on an open alert updates its count and last-seen time, or escalates
  it from warning to critical;
* an open alert with no hit for ``quiet`` resolves by itself;
* a superadmin may acknowledge a firing alert (:func:`acknowledge`).

Every change is a new row (the next version of the alert), so the table is the
alert's history. Rows depend only on the data and the evaluation time, so a
rerun at the same time writes nothing new, and two detectors evaluating the
same instant write identical rows. Opening, escalating and resolving are
handed to the notifier (webhook/email outbox) before the row is written: a
crash in between repeats the notification, it never loses it.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from . import rules as rules_mod
from . import schema

log = logging.getLogger("upmetr_audit.detector")

_NAMESPACE = uuid.UUID("5b0f4c1e-3f0e-4d8a-9a41-6d1f2a7f0c11")

COLUMNS = (
    "alert_id", "version", "change", "changed_at", "changed_by", "org_id", "rule", "key_type", "key",
    "state", "severity", "value", "threshold", "failures", "first_seen", "last_seen",
    "window_start", "window_end", "last_fired_at", "samples",
)

#: Changes that are worth telling a human about.
NOTIFY_CHANGES = ("opened", "escalated", "resolved")


class AlertNotFound(LookupError):
    pass


@dataclass
class RunResult:
    evaluated_at: datetime
    window_end: datetime
    changes: list[dict] = field(default_factory=list)

    def count(self, change: str) -> int:
        return sum(1 for c in self.changes if c["change"] == change)

    def summary(self) -> dict[str, int]:
        return {c: self.count(c) for c in ("opened", "updated", "escalated", "resolved")}


def _severity_rank(severity: str) -> int:
    return rules_mod.SEVERITIES.index(severity)


def _utc(row: dict) -> dict:
    """ClickHouse hands back naive datetimes (in UTC); make them aware."""
    return {k: v.replace(tzinfo=UTC) if isinstance(v, datetime) and v.tzinfo is None else v
            for k, v in row.items()}


def _alert_key(row: dict) -> tuple:
    return (row["org_id"], row["rule"], row["key_type"], row["key"])


def current_alerts(client, *, org_id: str | None = None, open_only: bool = False,
                   limit: int = 1000) -> list[dict]:
    """The newest row of each alert, newest first; optionally one org's, open ones only."""
    conds, params = [], {"limit": limit}
    if org_id is not None:
        conds.append("org_id = {org:String}")
        params["org"] = org_id
    if open_only:
        conds.append("state != 'resolved'")
    where = ("WHERE " + " AND ".join(conds)) if conds else ""
    sql = (f"SELECT * FROM ({rules_mod.CURRENT_ALERTS_SQL}) {where} "
           "ORDER BY state = 'resolved', last_fired_at DESC, alert_id LIMIT {limit:UInt32}")
    return [_utc(r) for r in client.query(sql, parameters=params).named_results()]


def alert_history(client, org_id: str, alert_id: str) -> list[dict]:
    """Every change of one alert of one org, oldest first (an acknowledge and a
    detector run may have written the same version: both are listed)."""
    sql = (f"SELECT * FROM {schema.ALERTS_TABLE} WHERE org_id = {{org:String}} "
           "AND alert_id = {id:UUID} ORDER BY version, change LIMIT 1 BY version, change")
    rows = client.query(sql, parameters={"org": org_id, "id": alert_id}).named_results()
    return [_utc(r) for r in rows]


def _insert(client, rows: list[dict]) -> None:
    if rows:
        client.insert(schema.ALERTS_TABLE, [[r[c] for c in COLUMNS] for r in rows],
                      column_names=list(COLUMNS))


def acknowledge(client, org_id: str, alert_id: str, by: str, now: datetime | None = None) -> dict:
    """Mark an open alert of ``org_id`` acknowledged by ``by``; returns the new row.

    Raises :class:`AlertNotFound` for an unknown alert or one of another org,
    and ``ValueError`` for a resolved one. Acknowledging twice is a no-op.
    """
    sql = (f"SELECT * FROM ({rules_mod.CURRENT_ALERTS_SQL}) WHERE org_id = {{org:String}} "
           "AND alert_id = {id:UUID}")
    rows = client.query(sql, parameters={"org": org_id, "id": alert_id}).named_results()
    cur = next((_utc(r) for r in rows), None)
    if cur is None:
        raise AlertNotFound(alert_id)
    if cur["state"] == "resolved":
        raise ValueError("the alert is already resolved")
    if cur["state"] == "acknowledged":
        return cur
    now = now or datetime.now(UTC)
    row = {**cur, "version": cur["version"] + 1, "change": "acknowledged", "state": "acknowledged",
           "changed_at": now, "changed_by": by, "acknowledged_by": by, "acknowledged_at": now}
    _insert(client, [row])
    return row


class Detector:
    """Evaluates the rules and keeps ``audit.audit_alerts`` in step.

    ``notify`` receives each opened/escalated/resolved alert row (see
    :mod:`notify`); ``lag`` is how far behind now windows end; an alert
    resolves after ``quiet`` without a hit.
    """

    def __init__(self, client, rules: rules_mod.RuleSet | None = None, *,
                 notify: Callable[[dict, rules_mod.Rule], None] | None = None,
                 lag: timedelta = timedelta(minutes=1), quiet: timedelta = timedelta(minutes=30)):
        self.client = client
        self.rules = rules or rules_mod.RuleSet()
        self.notify = notify
        self.lag = lag
        self.quiet = quiet
        self._lock = threading.Lock()
        order = [r for r in self.rules.rules if self.rules.rules[r].kind != "success_after"]
        after = [r for r in self.rules.rules if self.rules.rules[r].kind == "success_after"]
        # Success-after-failures reads the alerts the other rules just opened.
        self._stages = [order, after]

    def run_once(self, now: datetime | None = None) -> RunResult:
        now = (now or datetime.now(UTC)).astimezone(UTC)
        end = (now - self.lag).replace(microsecond=0)   # whole seconds: links filter exactly
        result = RunResult(evaluated_at=now, window_end=end)
        with self._lock:
            hit_keys: set[tuple] = set()
            for stage in self._stages:
                open_alerts = {_alert_key(a): a for a in current_alerts(self.client, open_only=True,
                                                                         limit=100_000)}
                rows = []
                for rule_id in stage:
                    for hit in self._evaluate(rule_id, end):
                        hit_keys.add(_alert_key(hit))
                        row = self._reconcile(hit, open_alerts.get(_alert_key(hit)), now, end)
                        if row:
                            rows.append(row)
                self._commit(rows, result)
            open_alerts = current_alerts(self.client, open_only=True, limit=100_000)
            self._commit([self._resolved(a, now) for a in open_alerts
                          if _alert_key(a) not in hit_keys
                          and end - a["last_seen"] >= self.quiet], result)
        if result.changes:
            log.info("detector run", extra={"window_end": end.isoformat(), **result.summary()})
        return result

    def _evaluate(self, rule_id: str, end: datetime) -> list[dict]:
        sql = rules_mod.rule_sql(self.rules, rule_id, "{end:DateTime64(6, 'UTC')}")
        if sql is None:
            return []
        rows = self.client.query(sql, parameters={"end": end}).named_results()
        return [{**_utc(r), "rule": rule_id} for r in rows]

    def _reconcile(self, hit: dict, cur: dict | None, now: datetime, end: datetime) -> dict | None:
        fields = {k: hit[k] for k in ("org_id", "rule", "key_type", "key", "value", "threshold",
                                      "failures", "last_seen", "window_start", "window_end", "samples")}
        fields["value"] = float(fields["value"])
        fields["threshold"] = float(fields["threshold"])
        fields["failures"] = int(fields["failures"])
        if cur is None:
            return {**fields, "alert_id": self._new_alert_id(hit), "version": 1, "change": "opened",
                    "changed_at": now, "changed_by": "detector", "state": "firing",
                    "severity": hit["severity"], "first_seen": hit["first_seen"],
                    "last_fired_at": end}
        escalated = _severity_rank(hit["severity"]) > _severity_rank(cur["severity"])
        same = (fields["value"] == cur["value"] and fields["last_seen"] == cur["last_seen"]
                and not escalated)
        if same:
            return None
        return {**fields, "alert_id": cur["alert_id"], "version": cur["version"] + 1,
                "change": "escalated" if escalated else "updated", "changed_at": now,
                "changed_by": "detector", "state": cur["state"],
                "severity": hit["severity"] if escalated else cur["severity"],
                "first_seen": min(cur["first_seen"], hit["first_seen"]), "last_fired_at": end}

    def _new_alert_id(self, hit: dict) -> uuid.UUID:
        """The id of a new alert: its (org, rule, key) and how many alerts that
        key had before. A run that failed to write the alert after notifying
        derives the same id again, so the repeated notification carries the
        same delivery id; so does a second detector opening the same alert."""
        sql = (f"SELECT uniqExact(alert_id) FROM {schema.ALERTS_TABLE} WHERE org_id = {{org:String}} "
               "AND rule = {rule:String} AND key_type = {key_type:String} AND key = {key:String}")
        keys = {k: hit[k] for k in ("org_id", "rule", "key_type", "key")}
        before = self.client.query(sql, parameters={"org": keys.pop("org_id"), **keys}).result_rows[0][0]
        return uuid.uuid5(_NAMESPACE, "\x00".join(
            [hit["org_id"], hit["rule"], hit["key_type"], hit["key"], str(before)]))

    def _resolved(self, cur: dict, now: datetime) -> dict:
        return {**cur, "version": cur["version"] + 1, "change": "resolved", "state": "resolved",
                "changed_at": now, "changed_by": "detector"}

    def _commit(self, rows: list[dict], result: RunResult) -> None:
        if not rows:
            return
        if self.notify:
            for row in rows:
                if row["change"] in NOTIFY_CHANGES:
                    self.notify(row, self.rules.for_org(row["org_id"], row["rule"]))
        _insert(self.client, rows)
        result.changes.extend(rows)


def run_forever(detector: Detector, stop: threading.Event, interval_s: float = 60.0,
                on_error: Callable[[BaseException], Any] | None = None) -> None:
    """Run the detector every ``interval_s`` until ``stop`` is set. A failed run is
    logged and retried at the next tick; it never stops the loop."""
    while not stop.is_set():
        try:
            detector.run_once()
        except Exception as exc:  # a broken run must not kill serve
            log.exception("detector run failed")
            if on_error:
                on_error(exc)
        stop.wait(interval_s)

"""Idempotent upsert of the data source, folder, dashboards, contact point and
alert rule group through Grafana's HTTP API (grafana-client 5.x).

Every resource is read first and written only when it differs: a resource is
unchanged when every field we send is present in Grafana's copy with the same
value (Grafana adds ids, versions and defaults of its own). So a second run
only reads. ``dry_run`` reads and reports the plan without writing.

Errors become :class:`GrafanaError` with one line: a bad token (401), missing
permissions (403), the ClickHouse plugin not installed or the data source
failing its health check, a Grafana older than 11.6, or no connection.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from upmetr_audit.collector import rules as rules_mod
from upmetr_audit.collector.errors import UpmetrAuditError

from . import DATASOURCE_UID, FOLDER_TITLE, FOLDER_UID, MIN_GRAFANA, PLUGIN_ID, alerting, tree


class GrafanaError(UpmetrAuditError):
    """Provisioning cannot go on; the message is one line for the operator."""


@dataclass
class Step:
    kind: str
    name: str
    action: str  # created, updated, unchanged (or "would create" ... in a dry run)

    def __str__(self) -> str:
        return f"{self.kind} {self.name}: {self.action}"


@dataclass
class Plan:
    dry_run: bool
    steps: list[Step] = field(default_factory=list)

    def add(self, kind: str, name: str, action: str) -> bool:
        """Record a step; returns whether to write it."""
        write = action != "unchanged" and not self.dry_run
        self.steps.append(Step(kind, name, f"would {action[:-1]}" if self.dry_run and action != "unchanged"
                               else action))
        return write

    @property
    def changed(self) -> int:
        return sum(1 for s in self.steps if s.action != "unchanged")


def contains(actual, wanted) -> bool:
    """Whether ``actual`` (Grafana's copy) holds everything in ``wanted`` (ours)."""
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(k in actual and contains(actual[k], v)
                                                for k, v in wanted.items())
    if isinstance(wanted, list):
        return (isinstance(actual, list) and len(actual) == len(wanted)
                and all(contains(a, w) for a, w in zip(actual, wanted, strict=True)))
    if isinstance(wanted, bool) or isinstance(actual, bool):
        return actual is wanted
    return actual == wanted


def parse_version(text: str) -> tuple[int, ...]:
    m = re.match(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    if not m:
        raise GrafanaError(f"cannot read Grafana's version from {text!r}")
    return tuple(int(g or 0) for g in m.groups())


class Provisioner:
    """``api`` is a ``grafana_client.GrafanaApi``."""

    def __init__(self, api, url: str, *, datasource_values: dict, webhook_url: str,
                 ruleset: rules_mod.RuleSet | None = None):
        self.api = api
        self.url = url
        self.datasource = tree.datasource(datasource_values)
        self.ruleset = ruleset or rules_mod.RuleSet()
        self.webhook_url = webhook_url

    # -- errors ----------------------------------------------------------------

    def _call(self, what: str, fn: Callable, *args, missing_ok: bool = False, failure_ok: bool = False,
              **kwargs):
        """Run one API call; failures become one line. With ``missing_ok`` a 404 gives ``None``;
        with ``failure_ok`` any answer but 401/403 gives its body (a failed health check)."""
        import niquests
        from grafana_client.client import (
            GrafanaClientError,
            GrafanaException,
            GrafanaServerError,
            GrafanaTimeoutError,
            GrafanaUnauthorizedError,
        )
        try:
            return fn(*args, **kwargs)
        except GrafanaUnauthorizedError:
            raise GrafanaError(f"Grafana at {self.url} refused the token (401 Unauthorized): "
                               "check --token (a service account token)") from None
        except (GrafanaClientError, GrafanaServerError) as exc:
            if exc.status_code == 403:
                raise GrafanaError(f"Grafana refused to {what} (403 Forbidden): the token needs the "
                                   "Admin role") from None
            if exc.status_code == 404 and missing_ok:
                return None
            if failure_ok:
                return {"status": "ERROR", "message": _message(exc)}
            raise GrafanaError(f"Grafana could not {what}: {exc.status_code} {_message(exc)}") from None
        except GrafanaTimeoutError:
            raise GrafanaError(f"Grafana at {self.url} did not answer in time ({what})") from None
        except (niquests.exceptions.ConnectionError, GrafanaException) as exc:
            reason = re.search(r"\[Errno -?\d+\] [^')\"]+|Failed to resolve '[^']+'", str(exc))
            raise GrafanaError(f"cannot connect to Grafana at {self.url}: "
                               f"{reason.group(0) if reason else _first_line(str(exc))}") from None

    # -- steps -----------------------------------------------------------------

    def run(self, dry_run: bool = False) -> Plan:
        plan = Plan(dry_run)
        self.check_version()
        self.check_plugin()
        self.upsert_datasource(plan)
        self.upsert_folder(plan)
        for board in tree.dashboards(self.ruleset):
            self.upsert_dashboard(plan, board)
        self.upsert_contact_point(plan)
        self.upsert_rule_group(plan)
        return plan

    def check_version(self) -> None:
        health = self._call("report its version", self.api.client.GET, "/health")
        version = parse_version(str((health or {}).get("version", "")))
        if version[:2] < MIN_GRAFANA:
            need = ".".join(map(str, MIN_GRAFANA))
            raise GrafanaError(f"Grafana {'.'.join(map(str, version))} is too old: the ClickHouse plugin "
                               f"and these dashboards need Grafana {need} or newer")

    def check_plugin(self) -> None:
        found = self._call("read the ClickHouse plugin", self.api.client.GET,
                           f"/plugins/{PLUGIN_ID}/settings", missing_ok=True)
        if found is None:
            raise GrafanaError(f"the {PLUGIN_ID} plugin is not installed in Grafana: start Grafana "
                               f"with GF_PLUGINS_PREINSTALL={PLUGIN_ID}")

    def upsert_datasource(self, plan: Plan) -> None:
        ds = self.datasource
        current = self._call("read the data source", self.api.datasource.get_datasource_by_uid,
                             DATASOURCE_UID, missing_ok=True)
        if current is None:
            action = "created"
        else:
            mine = {k: v for k, v in ds.items() if k != "secureJsonData"}
            same = contains(current, mine) and (current.get("secureJsonFields") or {}).get("password")
            action = "unchanged" if same else "updated"
        if plan.add("datasource", DATASOURCE_UID, action):
            if current is None:
                self._call("create the data source", self.api.datasource.create_datasource, ds)
            else:
                self._call("update the data source", self.api.datasource.update_datasource_by_uid,
                           DATASOURCE_UID, ds)
        if current is not None or not plan.dry_run:
            self.check_health()

    def check_health(self) -> None:
        result = self._call("check the data source", self.api.datasource.health, DATASOURCE_UID,
                            failure_ok=True)
        if (result or {}).get("status") != "OK":
            raise GrafanaError(f"the ClickHouse data source failed its health check: "
                               f"{_first_line(str((result or {}).get('message') or 'no answer'))} "
                               f"(is the {PLUGIN_ID} plugin installed and ClickHouse reachable?)")

    def upsert_folder(self, plan: Plan) -> None:
        current = self._call("read the folder", self.api.folder.get_folder, FOLDER_UID, missing_ok=True)
        action = ("created" if current is None else
                  "unchanged" if current.get("title") == FOLDER_TITLE else "updated")
        if plan.add("folder", FOLDER_UID, action):
            if current is None:
                self._call("create the folder", self.api.folder.create_folder, FOLDER_TITLE, uid=FOLDER_UID)
            else:
                self._call("rename the folder", self.api.folder.update_folder, FOLDER_UID,
                           title=FOLDER_TITLE, overwrite=True)

    def upsert_dashboard(self, plan: Plan, board: dict) -> None:
        uid = board["uid"]
        current = self._call(f"read dashboard {uid}", self.api.dashboard.get_dashboard, uid, missing_ok=True)
        if current is None:
            action = "created"
        else:
            stored = current.get("dashboard") or {}
            mine = {k: v for k, v in board.items() if k != "version"}
            same = contains(stored, mine) and (current.get("meta") or {}).get("folderUid") == FOLDER_UID
            action = "unchanged" if same else "updated"
        if plan.add("dashboard", uid, action):
            self._call(f"save dashboard {uid}", self.api.dashboard.update_dashboard, {
                "dashboard": {**board, "id": None}, "folderUid": FOLDER_UID, "overwrite": True,
                "message": "upmetr-audit grafana provision"})

    def upsert_contact_point(self, plan: Plan) -> None:
        cp = alerting.contact_point(self.webhook_url)
        found = self._call("read the contact points", self.api.alertingprovisioning.get_contactpoints,
                           alerting.CONTACT_POINT) or []
        current = next((c for c in found if c.get("uid") == cp["uid"]), None)
        action = "created" if current is None else "unchanged" if contains(current, cp) else "updated"
        if plan.add("contact point", cp["name"], action):
            if current is None:
                self._call("create the contact point", self.api.alertingprovisioning.create_contactpoint, cp)
            else:
                self._call("update the contact point", self.api.alertingprovisioning.update_contactpoint,
                           cp["uid"], cp)

    def upsert_rule_group(self, plan: Plan) -> None:
        group = alerting.api_rule_group(self.ruleset)
        current = self._call("read the alert rule group", self.api.alertingprovisioning.get_rule_group,
                             FOLDER_UID, alerting.GROUP, missing_ok=True)
        action = "created" if current is None else "unchanged" if contains(current, group) else "updated"
        if plan.add("alert rule group", alerting.GROUP, action):
            self._call("save the alert rule group", self.api.alertingprovisioning.update_rule_group,
                       FOLDER_UID, alerting.GROUP, group)


def _message(exc) -> str:
    resp = getattr(exc, "response", None)
    if isinstance(resp, dict) and resp.get("message"):
        return _first_line(str(resp["message"]))
    return _first_line(str(resp or exc))


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:300]


def connect(url: str, token: str, timeout: float = 10.0):
    """A ``GrafanaApi`` for ``url`` with a bearer token."""
    from grafana_client import GrafanaApi

    if not re.match(r"https?://[^/\s]+", url or ""):
        raise GrafanaError(f"--url must be an http(s) URL of Grafana, got {url!r}")
    if not token:
        raise GrafanaError("--token is required (a Grafana service account token)")
    return GrafanaApi.from_url(url, credential=token, timeout=timeout)

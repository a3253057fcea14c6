"""Failed-login spike rules: the one definition the detector and Grafana share.

A rule is data: a kind (what SQL shape it has), the key it groups by (a user,
an IP or the whole org), a window, thresholds, which failed actions count and
an allowlist of networks. :data:`DEFAULT_RULES` are the defaults; a TOML file
may override any of them globally (``[rules.<id>]``) or for one org
(``[orgs.<org id>.rules.<id>]``). :func:`load` validates everything and fails
with one clear line on a bad value.

From a :class:`RuleSet`, :func:`rule_sql` builds one ClickHouse query per rule
across every org (per-org values become ``multiIf(org_id = …)``), reading
``audit.audit_events`` in its sort key order. The caller supplies the end of the
evaluation window as SQL: the detector binds ``{end:DateTime64(6, 'UTC')}``,
Grafana passes its own time macro. Every query returns the same columns::

    org_id, key_type, key, value, severity, threshold, failures,
    first_seen, last_seen, samples, window_start, window_end

where ``value`` is the rule's measure (failures, distinct users, distinct IPs,
failures in the slot, or successful logins) and ``severity`` the highest level
it reaches. Rows only appear when the rule fires.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field, replace
from typing import Any

from upmetr_audit.shipper.contract import STATUSES

from . import schema
from .errors import UpmetrAuditError

LOGIN = "auth.login"
MFA_VERIFY = "mfa.verify"
MAGIC_LINK_VERIFY = "magic_link.verify"

#: Severities, lowest first. ``emergency`` is for a success after failures.
SEVERITIES = ("warning", "critical", "emergency")

STATUS_SUCCESS, STATUS_FAILURE = STATUSES


_ORG_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")


class RuleError(UpmetrAuditError):
    """A rule configuration that cannot be used."""


@dataclass(frozen=True)
class Rule:
    id: str
    kind: str
    #: What the alert is about: ``user`` (an email), ``ip`` or ``org``.
    key: str
    #: The rule in words, for the page, the webhook and Grafana.
    title: str
    window_minutes: int
    #: (severity, threshold) from the lowest severity up; the measure must be >= the threshold.
    levels: tuple[tuple[str, float], ...]
    enabled: bool = True
    count_mfa: bool = True
    count_magic_link: bool = True
    #: Networks whose failures never count (corporate NAT, VPN egress).
    allow: tuple[str, ...] = ()
    #: spraying: at most this many attempts per user (low and slow, under lockouts).
    max_attempts_per_user: int = 0
    #: spike: the current slot must be above factor × the median of the same slot on previous days.
    factor: float = 0.0
    baseline_days: int = 0

    @property
    def failed_actions(self) -> tuple[str, ...]:
        """The actions whose failures this rule counts."""
        return (LOGIN,) + (MFA_VERIFY,) * self.count_mfa + (MAGIC_LINK_VERIFY,) * self.count_magic_link

    def describe(self) -> str:
        """The condition in words, e.g. for a banner or an alert annotation."""
        w = f"{self.window_minutes} min"
        lv = ", ".join(f"≥ {_num(t)} ({s})" for s, t in self.levels)
        return {
            "failures": f"failed logins for one {self.key} in {w}: {lv}",
            "spraying": f"one IP, distinct users in {w} with ≤ {self.max_attempts_per_user} "
                        f"attempts each: {lv}",
            "distributed": f"one user, distinct source IPs of failed logins in {w}: {lv}",
            "spike": f"failed logins in {w} > {_num(self.factor)} × the median of the same slot "
                     f"over the previous {self.baseline_days} days, and {lv}",
            "success_after": "a successful login by a user, or from an IP, with an open alert",
        }[self.kind]


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


_R = Rule
#: The defaults (shared/reference: Okta, Auth0, Elastic, Wazuh; see docs/alerts.md).
DEFAULT_RULES: dict[str, Rule] = {r.id: r for r in (
    _R("user_brute_force", "failures", "user", "Brute force on one account", 15,
       (("warning", 5), ("critical", 10))),
    _R("ip_brute_force", "failures", "ip", "Brute force from one IP", 10, (("critical", 20),)),
    _R("password_spraying", "spraying", "ip", "Password spraying from one IP", 15,
       (("critical", 10),), max_attempts_per_user=3),
    _R("credential_stuffing", "spraying", "ip", "Credential stuffing from one IP", 15,
       (("critical", 15),), max_attempts_per_user=2),
    _R("distributed_attack", "distributed", "user", "Distributed attack on one account", 30,
       (("critical", 5),)),
    _R("org_spike", "spike", "org", "Spike of failed logins across the org", 5,
       (("warning", 20),), factor=3, baseline_days=7),
    _R("success_after_failures", "success_after", "user", "Successful login after an attack",
       60, (("emergency", 1),)),
)}

# What a config file may set, per rule kind ("warning"/"critical"/... set a level's threshold).
_COMMON = {"enabled", "count_mfa", "count_magic_link", "allow", "window_minutes"}
_SETTABLE = {
    "failures": _COMMON | {"warning", "critical"},
    "spraying": _COMMON | {"min_users", "max_attempts_per_user"},
    "distributed": _COMMON | {"min_ips"},
    "spike": _COMMON | {"factor", "floor", "baseline_days"},
    "success_after": {"enabled", "allow", "window_minutes"},
}
# Names of the single threshold of the one-level kinds.
_LEVEL_ALIAS = {"spraying": "min_users", "distributed": "min_ips", "spike": "floor"}


@dataclass(frozen=True)
class RuleSet:
    """Rules with their per-org overrides."""

    rules: dict[str, Rule] = field(default_factory=lambda: dict(DEFAULT_RULES))
    #: org id → rule id → the rule as that org sees it.
    orgs: dict[str, dict[str, Rule]] = field(default_factory=dict)

    def for_org(self, org_id: str, rule_id: str) -> Rule:
        return self.orgs.get(org_id, {}).get(rule_id, self.rules[rule_id])


def _fail(where: str, message: str):
    raise RuleError(f"alert rules: {where}: {message}")


def _apply(rule: Rule, values: dict[str, Any], where: str) -> Rule:
    if not isinstance(values, dict):
        _fail(where, "must be a table of settings")
    unknown = sorted(set(values) - _SETTABLE[rule.kind])
    if unknown:
        _fail(where, f"unknown setting(s) {', '.join(unknown)}; "
                     f"known: {', '.join(sorted(_SETTABLE[rule.kind]))}")
    changes: dict[str, Any] = {}
    levels = dict(rule.levels)
    for name, value in values.items():
        here = f"{where}.{name}"
        if name in ("enabled", "count_mfa", "count_magic_link"):
            if not isinstance(value, bool):
                _fail(here, "must be true or false")
            changes[name] = value
        elif name == "allow":  # adds to the allowlist the rule already has (global, org)
            changes["allow"] = _unique(rule.allow + _networks(value, here))
        elif name in ("window_minutes", "baseline_days", "max_attempts_per_user"):
            limit = {"window_minutes": 24 * 60, "baseline_days": 28, "max_attempts_per_user": 1000}[name]
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
                _fail(here, f"must be a whole number from 1 to {limit}")
            changes[name] = value
        elif name == "factor":
            if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value <= 1000:
                _fail(here, "must be a number from 1 to 1000")
            changes[name] = float(value)
        else:  # a threshold
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
                _fail(here, "must be a whole number from 1 to 1000000")
            severity = name if name in SEVERITIES else rule.levels[0][0]
            levels[severity] = value
    ordered = tuple((s, levels[s]) for s in SEVERITIES if s in levels)
    if [t for _, t in ordered] != sorted(t for _, t in ordered):
        _fail(where, "a higher severity needs a threshold at least as high as a lower one")
    return replace(rule, levels=ordered, **changes)


#: Networks in one rule's allowlist, all levels together: the audit page's
#: link to an alert's events leaves them out with its ``not_ip`` filter.
MAX_ALLOW_NETWORKS = 64

#: Longest value of the audit page's exact-match filters (user, resource_type,
#: resource_id), which refuse a NUL character too. It covers every value the
#: sign-in page stores (emails up to 320 characters) and, as the event
#: contract sets no length, any value a URL can carry: at 12 bytes per
#: percent-encoded character it stays under waitress's 256 KiB limit on a
#: request's head. An alert link leaves out a user key it cannot filter by.
MAX_EXACT_FILTER_LEN = 16384


def filterable(value: str) -> bool:
    """Whether the audit page's exact filters can take ``value``."""
    return len(value) <= MAX_EXACT_FILTER_LEN and "\x00" not in value


def _unique(nets: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(nets))


def _networks(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        _fail(where, "must be a list of IP addresses or CIDRs")
    nets = []
    for text in value:
        try:
            nets.append(str(ipaddress.ip_network(text.strip(), strict=False)))
        except ValueError:
            _fail(where, f"{text!r} is not an IP address or CIDR")
    return tuple(nets)


def from_mapping(data: dict[str, Any]) -> RuleSet:
    """A :class:`RuleSet` from parsed TOML.

    ``allow`` (top level) adds networks to every rule's allowlist; ``[rules.<id>]``
    changes a rule everywhere; ``[orgs.<org>]`` may set ``allow`` for all of that
    org's rules and ``[orgs.<org>.rules.<id>]`` a rule for that org only. Every
    ``allow`` adds to the others: a rule's allowlist is the top-level one, the
    rule's, the org's and the org's rule's together.
    """
    unknown = sorted(set(data) - {"allow", "rules", "orgs"})
    if unknown:
        _fail(", ".join(unknown), "unknown section; use allow, [rules.<rule>] or [orgs.<org>]")

    def rule_table(table: Any, base: dict[str, Rule], where: str, allow: tuple[str, ...]):
        if not isinstance(table, dict):
            _fail(where, "must be a table")
        out = {k: replace(r, allow=_unique(r.allow + allow)) for k, r in base.items()}
        for rule_id, values in table.items():
            if rule_id not in DEFAULT_RULES:
                _fail(f"{where}.{rule_id}", f"unknown rule; known: {', '.join(DEFAULT_RULES)}")
            out[rule_id] = _apply(out[rule_id], values, f"{where}.{rule_id}")
        return out

    rules = rule_table(data.get("rules", {}), DEFAULT_RULES, "rules",
                       _networks(data["allow"], "allow") if "allow" in data else ())
    orgs = {}
    org_tables = data.get("orgs", {})
    if not isinstance(org_tables, dict):
        _fail("orgs", "must be a table of orgs")
    for org_id, table in org_tables.items():
        if not _ORG_ID.fullmatch(org_id):
            _fail(f"orgs.{org_id!r}", "is not a valid org id")
        if not isinstance(table, dict) or set(table) - {"rules", "allow"}:
            _fail(f"orgs.{org_id}", "may only set allow and [orgs.<org>.rules.<rule>] tables")
        allow = _networks(table["allow"], f"orgs.{org_id}.allow") if "allow" in table else ()
        mine = rule_table(table.get("rules", {}), rules, f"orgs.{org_id}.rules", allow)
        orgs[org_id] = {k: v for k, v in mine.items() if v != rules[k]}
    for where, table in [("rules", rules)] + [(f"orgs.{o}.rules", r) for o, r in orgs.items()]:
        for rule_id, rule in table.items():
            if len(rule.allow) > MAX_ALLOW_NETWORKS:
                _fail(f"{where}.{rule_id}", f"allows {len(rule.allow)} networks in all; "
                                            f"at most {MAX_ALLOW_NETWORKS}")
    return RuleSet(rules, {o: r for o, r in orgs.items() if r})


def load(path: str | None) -> RuleSet:
    """The rules of a TOML file (``None``: the defaults)."""
    if not path:
        return RuleSet()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise RuleError(f"alert rules: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RuleError(f"alert rules: {path} is not valid TOML: {exc}") from None
    return from_mapping(data)


# -- SQL ------------------------------------------------------------------------

#: The newest row of every alert (state changes are appended, never updated).
#: An acknowledge and a detector run may both write the next version: the
#: detector's row wins the tie (it has the newest counts and severity, and a
#: resolve is final), and an alert once acknowledged stays acknowledged until
#: it resolves. ``acknowledged_by`` / ``acknowledged_at`` come from the
#: acknowledge itself ("" and the epoch if none): the newest row is often the
#: detector's, whose ``changed_by`` is "detector".
CURRENT_ALERTS_SQL = f"""
SELECT * EXCEPT (acks) REPLACE (if(state != 'resolved' AND acks > 0, 'acknowledged', state) AS state)
FROM (
    SELECT *,
        countIf(change = 'acknowledged') OVER w AS acks,
        argMaxIf(changed_by, version, change = 'acknowledged') OVER w AS acknowledged_by,
        maxIf(changed_at, change = 'acknowledged') OVER w AS acknowledged_at
    FROM {schema.ALERTS_TABLE}
    WINDOW w AS (PARTITION BY alert_id))
ORDER BY alert_id, version DESC, change = 'acknowledged', change DESC
LIMIT 1 BY alert_id"""

IP_TEXT = "replaceRegexpOne(IPv6NumToString(ip), '^::ffff:', '')"

#: The source of a failure as the IP rules key it: an IPv4 address (stored
#: IPv4-mapped) as itself, an IPv6 address by its /64 (one host or customer
#: rotates through its /64), e.g. ``2001:db8:1:2::/64``. The audit page's
#: ``ip`` filter takes either form.
IP_KEY = ("if(ip BETWEEN toIPv6('::ffff:0.0.0.0') AND toIPv6('::ffff:255.255.255.255'), "
          f"{IP_TEXT}, "
          "concat(IPv6NumToString(tupleElement(IPv6CIDRToRange(ip, 64), 1)), '/64'))")

#: A user as the user rules key it: emails compare without regard to ASCII case.
USER_KEY = "lower(user_email)"

#: Events sent without ``client.address`` are stored with ``::``: no source.
KNOWN_IP = "ip != toIPv6('::')"


def _lit(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return repr(float(value)) if isinstance(value, float) else str(value)
    assert isinstance(value, str) and _ORG_ID.fullmatch(value), value
    return f"'{value}'"


class _Per:
    """Turns a per-org value into SQL: a literal, or ``multiIf(org_id = …)``."""

    def __init__(self, rules: RuleSet, rule_id: str):
        self.default = rules.rules[rule_id]
        self.orgs = {o: r[rule_id] for o, r in rules.orgs.items() if rule_id in r}

    def values(self, get) -> set:
        return {get(self.default)} | {get(r) for r in self.orgs.values()}

    def expr(self, get) -> str:
        default = get(self.default)
        cases = [(o, get(r)) for o, r in sorted(self.orgs.items()) if get(r) != default]
        if not cases:
            return _lit(default)
        return "multiIf(" + ", ".join(f"org_id = {_lit(o)}, {_lit(v)}" for o, v in cases) \
            + f", {_lit(default)})"

    def cond(self, get) -> str:
        """A per-org condition from a function returning SQL (or '' for none)."""
        default = get(self.default)
        parts = [f"(org_id = {_lit(o)} AND {get(r) or '1'})" for o, r in sorted(self.orgs.items())
                 if get(r) != default]
        if not parts:
            return default or "1"
        others = ", ".join(_lit(o) for o, r in sorted(self.orgs.items()) if get(r) != default)
        return "(" + " OR ".join(parts + [f"(org_id NOT IN ({others}) AND {default or '1'})"]) + ")"


def _allow_sql(nets: tuple[str, ...]) -> str:
    if not nets:
        return ""
    ranges = []
    for text in nets:
        net = ipaddress.ip_network(text)
        lo, hi = int(net.network_address), int(net.broadcast_address)
        if net.version == 4:
            lo, hi = lo | 0xFFFF << 32, hi | 0xFFFF << 32
        ranges.append(f"ip BETWEEN toIPv6('{ipaddress.IPv6Address(lo)}') "
                      f"AND toIPv6('{ipaddress.IPv6Address(hi)}')")
    return "NOT (" + " OR ".join(ranges) + ")"


def failed_actions_sql(r: Rule) -> str:
    """The actions whose failures a rule counts, as a SQL condition."""
    return "action IN (" + ", ".join(f"'{a}'" for a in r.failed_actions) + ")"


def _severity_sql(per: _Per) -> tuple[str, str]:
    """(severity expression, threshold expression) over the measure ``value``.

    The threshold is each org's own lowest level: an org that adds a level
    the others do not have leaves the others' thresholds alone."""
    severities = [s for s in SEVERITIES if any(s in dict(lv) for lv in per.values(lambda r: r.levels))]
    cases = [(s, per.expr(lambda r, s=s: dict(r.levels).get(s, 1e18))) for s in reversed(severities)]
    sev = "multiIf(" + ", ".join(f"value >= {t}, '{s}'" for s, t in cases) + ", '')"
    return sev, per.expr(lambda r: r.levels[0][1])


def enabled_orgs_sql(rules: RuleSet, rule_id: str) -> str | None:
    """Condition limiting a rule to the orgs where it is on; ``None`` if on nowhere."""
    per = _Per(rules, rule_id)
    if not any(per.values(lambda r: r.enabled)):
        return None
    return per.cond(lambda r: "" if r.enabled else "0")


def rule_sql(rules: RuleSet, rule_id: str, end: str) -> str | None:
    """The query evaluating one rule across all orgs at window end ``end`` (SQL),
    or ``None`` when the rule is switched off everywhere."""
    rule = rules.rules[rule_id]
    enabled = enabled_orgs_sql(rules, rule_id)
    if enabled is None:
        return None
    per = _Per(rules, rule_id)
    window = per.expr(lambda r: r.window_minutes)
    max_window = max(per.values(lambda r: r.window_minutes))
    allow = per.cond(lambda r: _allow_sql(r.allow))
    severity, threshold = _severity_sql(per)
    if rule.kind == "success_after":
        return _success_after_sql(rule, enabled, allow, window, max_window, end)
    failed = per.cond(failed_actions_sql)
    if rule.kind == "spike":
        return _spike_sql(per, enabled, allow, failed, severity, threshold, end)
    key_col = {"user": USER_KEY, "ip": IP_KEY}[rule.key]
    known_ip = f"{KNOWN_IP} AND " if rule.key == "ip" else ""
    where = f"""
    {known_ip}status = '{STATUS_FAILURE}' AND {failed} AND {enabled} AND {allow}
    AND timestamp >= {end} - INTERVAL {max_window} MINUTE AND timestamp < {end}
    AND timestamp >= {end} - toIntervalMinute({window})"""
    common = f"""
    {threshold} AS threshold,
    {end} - toIntervalMinute({window}) AS window_start,
    {end} AS window_end"""
    if rule.kind in ("failures", "distributed"):
        # distinct sources as the IP rules key them (an IPv6 /64 is one), an unknown address none
        measure = "count()" if rule.kind == "failures" else f"uniqExactIf({IP_KEY}, {KNOWN_IP})"
        return f"""
SELECT org_id, '{rule.key}' AS key_type, {key_col} AS key, {measure} AS value, {severity} AS severity,
    count() AS failures, min(timestamp) AS first_seen, max(timestamp) AS last_seen,
    arraySort(groupArray(10)(toString(event_id))) AS samples,{common}
FROM {schema.EVENTS_TABLE}
WHERE {where}
GROUP BY org_id, key
HAVING value >= threshold"""
    if rule.kind == "spraying":
        per_user = per.expr(lambda r: r.max_attempts_per_user)
        return f"""
SELECT org_id, '{rule.key}' AS key_type, key, uniqExactIf(user, attempts <= {per_user}) AS value,
    {severity} AS severity,
    sum(attempts) AS failures, min(first) AS first_seen, max(last) AS last_seen,
    arraySort(arraySlice(arrayFlatten(groupArray(ids)), 1, 10)) AS samples,{common}
FROM (
    SELECT org_id, {key_col} AS key, {USER_KEY} AS user, count() AS attempts, min(timestamp) AS first,
        max(timestamp) AS last, groupArray(2)(toString(event_id)) AS ids
    FROM {schema.EVENTS_TABLE}
    WHERE {where}
    GROUP BY org_id, key, user)
GROUP BY org_id, key
HAVING value >= threshold"""
    raise AssertionError(rule.kind)


def _spike_sql(per: _Per, enabled, allow, failed, severity, threshold, end) -> str:
    """Failures in the last slot against the median of the same slot on the previous days."""
    window = per.expr(lambda r: r.window_minutes)
    days = max(per.values(lambda r: r.baseline_days))
    org_days = per.expr(lambda r: r.baseline_days)
    factor = per.expr(lambda r: r.factor)
    max_window = max(per.values(lambda r: r.window_minutes))
    slots = [f"(timestamp >= {end} - INTERVAL {d} DAY - INTERVAL {max_window} MINUTE "
             f"AND timestamp < {end} - INTERVAL {d} DAY)" for d in range(days + 1)]

    def in_slot(d: int) -> str:
        return (f"timestamp >= {end} - INTERVAL {d} DAY - toIntervalMinute({window}) "
                f"AND timestamp < {end} - INTERVAL {d} DAY")
    history = ", ".join(f"countIf({in_slot(d)})" for d in range(1, days + 1))
    return f"""
SELECT org_id, 'org' AS key_type, org_id AS key, value, {severity} AS severity, value AS failures,
    first_seen, last_seen, samples, {threshold} AS threshold,
    {end} - toIntervalMinute({window}) AS window_start, {end} AS window_end, baseline
FROM (
    SELECT org_id,
        countIf({in_slot(0)}) AS value,
        arraySlice([{history}], 1, {org_days}) AS days_before,
        arraySort(days_before) AS sorted,
        (sorted[intDiv(length(sorted) + 1, 2)] + sorted[intDiv(length(sorted) + 2, 2)]) / 2 AS baseline,
        minIf(timestamp, {in_slot(0)}) AS first_seen,
        maxIf(timestamp, {in_slot(0)}) AS last_seen,
        arraySort(groupArrayIf(10)(toString(event_id), {in_slot(0)})) AS samples
    FROM {schema.EVENTS_TABLE}
    WHERE status = '{STATUS_FAILURE}' AND {failed} AND {enabled} AND {allow}
        AND ({' OR '.join(slots)})
    GROUP BY org_id)
WHERE value >= {threshold} AND value > {factor} * baseline"""


def _success_after_sql(rule: Rule, enabled, allow, window, max_window, end) -> str:
    """Successful logins by a user, or from an IP, that has an open alert of another rule,
    at or after that alert's first failure."""
    logins = f"""
    SELECT org_id, {USER_KEY} AS user_key, if({KNOWN_IP}, {IP_KEY}, '') AS ip_key, timestamp, event_id
    FROM {schema.EVENTS_TABLE}
    WHERE action = '{LOGIN}' AND status = '{STATUS_SUCCESS}' AND {enabled} AND {allow}
        AND timestamp >= {end} - INTERVAL {max_window} MINUTE AND timestamp < {end}
        AND timestamp >= {end} - toIntervalMinute({window})"""

    def side(key_type: str, col: str) -> str:
        return f"""
SELECT e.org_id AS org_id, '{key_type}' AS key_type, a.key AS key, count() AS value,
    'emergency' AS severity, toUInt64(max(a.failures)) AS failures, min(e.timestamp) AS first_seen,
    max(e.timestamp) AS last_seen, arraySort(groupArray(10)(toString(e.event_id))) AS samples,
    toFloat64(1) AS threshold, min(a.since) AS window_start, {end} AS window_end
FROM ({logins}) AS e
INNER JOIN (
    SELECT org_id, key, min(first_seen) AS since, max(failures) AS failures
    FROM ({CURRENT_ALERTS_SQL})
    WHERE state != 'resolved' AND key_type = '{key_type}' AND rule != '{rule.id}'
    GROUP BY org_id, key) AS a ON e.org_id = a.org_id AND e.{col} = a.key
WHERE e.timestamp >= a.since
GROUP BY e.org_id, a.key"""
    return side("user", "user_key") + "\nUNION ALL" + side("ip", "ip_key")

"""Realistic demo traffic, sent through the real shipper.

A few organizations with superadmin, admin and viewer users; every catalog
category at believable frequencies; a daily rhythm (busy working hours, quiet
nights and weekends); about 2% failed logins; and now and then a scripted
attack: brute force on one account, password spraying from one IP,
credential stuffing, or one user tried from many IPs. Deterministic for a
given seed. Used by ``upmetr-audit demo`` and ``serve --demo``.
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass, field

from .catalog import ACTIONS

#: Relative frequency of each action in ordinary traffic.
WEIGHTS: dict[str, float] = {
    "auth.login": 30, "auth.logout": 10, "auth.password_change": 0.5,
    "mfa.verify": 9, "mfa.enable": 0.3, "mfa.disable": 0.1, "mfa.backup_code_use": 0.2,
    "mfa.backup_codes_regenerate": 0.1, "magic_link.send": 2, "magic_link.verify": 1.8,
    "team.user_create": 0.6, "team.user_update": 0.8, "team.user_delete": 0.3,
    "cloud_account.create": 0.2, "cloud_account.update": 0.3, "cloud_account.delete": 0.05,
    "cloud_account.test_connection": 0.8, "cloud_account.discover_resources": 0.6,
    "monitor.create": 3, "monitor.update": 6, "monitor.delete": 1,
    "incident.acknowledge": 4, "incident.resolve": 3.5, "incident.delete": 0.3,
    "compute.instance_start": 1, "compute.instance_stop": 1, "compute.instance_reboot": 0.8,
    "agent.create": 0.4, "agent.update": 0.5, "agent.delete": 0.1, "agent.token_regenerate": 0.2,
    "alert_rule.create": 1, "alert_rule.update": 1.5, "alert_rule.delete": 0.3,
    "status_page.create": 0.3, "status_page.update": 1, "status_page.delete": 0.1,
    "status_page.token_regenerate": 0.1, "settings.update": 0.8,
    "settings.status_page_token_regenerate": 0.1, "system.api_access": 6, "system.rate_limit": 0.5,
}
#: Failure probability of ordinary events, by action (else 1% for those that can fail).
FAILURE = {"auth.login": 0.066, "mfa.verify": 0.03, "magic_link.verify": 0.04,
           "cloud_account.test_connection": 0.1, "system.rate_limit": 1.0, "system.api_access": 0.02}
REASONS = {"auth.login": "invalid password", "mfa.verify": "invalid code",
           "magic_link.verify": "link expired", "system.rate_limit": "too many requests",
           "system.api_access": "forbidden"}
AGENTS = ["Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) Safari/605.1.15",
          "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0",
          "upmetr-cli/2.4.1", "terraform-provider-upmetr/1.8.0"]
ATTACKS = ("brute_force", "password_spraying", "credential_stuffing", "distributed")


@dataclass
class Org:
    id: str
    users: list[tuple[str, str]]  # (email, role)
    ips: list[str]
    resources: dict[str, list[str]] = field(default_factory=dict)


def make_orgs(rng: random.Random, n: int) -> list[Org]:
    names = ["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "tyrell",
             "cyberdyne", "soylent", "wonka", "aperture"]
    orgs = []
    for i in range(n):
        name = names[i % len(names)] + (str(i // len(names)) if i >= len(names) else "")
        domain = f"{name}.example"
        users = [(f"owner@{domain}", "superadmin")]
        users += [(f"admin{j}@{domain}", "admin") for j in range(1, rng.randint(2, 4))]
        users += [(f"viewer{j}@{domain}", "viewer") for j in range(1, rng.randint(3, 9))]
        ips = [f"198.51.{100 + i}.{rng.randint(2, 250)}" for _ in range(4)]
        ips.append(f"2001:db8:{i:x}::{rng.randint(1, 0xfff):x}")
        resources = {rt: [f"{rt}-{k}" for k in range(1, rng.randint(4, 25))]
                     for rt in {a.resource_type for a in ACTIONS.values() if a.resource_type}}
        orgs.append(Org(f"org_{name}", users, ips, resources))
    return orgs


def rhythm(ts: float) -> float:
    """Relative activity at a UTC time: working hours on weekdays peak at 1.0."""
    t = time.gmtime(ts)
    hour = t.tm_hour + t.tm_min / 60
    day = 0.15 + 0.85 * max(0.0, math.sin(math.pi * (hour - 7) / 12)) if 7 <= hour <= 19 else 0.15
    return day * (0.35 if t.tm_wday >= 5 else 1.0)


class DemoTraffic:
    def __init__(self, audit, *, orgs: int = 4, seed: int = 7, attack_probability: float = 0.02):
        """``attack_probability``: chance of an attack in each backfilled hour."""
        self.audit = audit
        self.rng = random.Random(seed)
        self.orgs = make_orgs(self.rng, orgs)
        self.actions = list(WEIGHTS)
        self.weights = [WEIGHTS[a] for a in self.actions]
        self.attack_probability = attack_probability
        self.sent = 0

    # -- single events ----------------------------------------------------------

    def _emit(self, action: str, org: Org, user: str, ts_ns: int, *, failed: bool,
              ip: str | None = None, role: str = "viewer") -> None:
        spec = ACTIONS[action]
        kwargs = dict(org=org.id, user=user, status="failure" if failed else "success",
                      ip=ip or self.rng.choice(org.ips), timestamp=ts_ns,
                      user_agent=self.rng.choice(AGENTS),
                      actor_type="api_token" if action == "system.api_access" else "user",
                      **{"upmetr.user.role": role})
        if failed:
            kwargs["reason"] = REASONS.get(action, "provider error")
        if spec.resource_type:
            kwargs["resource"] = self.rng.choice(org.resources[spec.resource_type])
        if action.endswith("update"):
            field_name = self.rng.choice(["name", "interval", "threshold", "timezone", "role"])
            kwargs["changes"] = {field_name: {"before": self.rng.randint(1, 9),
                                              "after": self.rng.randint(10, 99)}}
        self.audit.emit(action, **kwargs)
        self.sent += 1

    def ordinary(self, ts_ns: int) -> None:
        org = self.rng.choice(self.orgs)
        user, role = self.rng.choice(org.users)
        action = self.rng.choices(self.actions, self.weights)[0]
        spec = ACTIONS[action]
        p_fail = FAILURE.get(action, 0.01 if spec.can_fail else 0.0)
        self._emit(action, org, user, ts_ns, failed=self.rng.random() < p_fail, role=role)

    # -- attacks --------------------------------------------------------------

    def attack(self, kind: str, ts_ns: int, *, ending: bool = False) -> int:
        """One scripted attack starting at ``ts_ns`` (or, with ``ending``,
        whose last attempt is at ``ts_ns``: live traffic never stamps an event
        in the future); returns the events sent."""
        rng, org = self.rng, self.rng.choice(self.orgs)
        attacker = f"203.0.113.{rng.randint(2, 250)}"
        minute = 60 * 10**9
        tries = []  # (offset from the start, user, ip)
        if kind == "brute_force":        # one account, one IP, many tries in ~10 min
            user = rng.choice(org.users)[0]
            tries = [(k * minute // 3, user, attacker) for k in range(rng.randint(12, 30))]
        elif kind == "password_spraying":  # one IP, many users, few tries each, 15 min
            for k, (user, _) in enumerate(rng.sample(org.users, min(len(org.users), 12))
                                          + [(f"it{j}@{org.id[4:]}.example", "") for j in range(6)]):
                tries += [((k * 2 + t) * minute // 3, user, attacker) for t in range(rng.randint(1, 2))]
        elif kind == "credential_stuffing":  # one IP, many (mostly unknown) users, 1 try each
            for k in range(rng.randint(16, 40)):
                user = f"{rng.choice(['john', 'mary', 'admin', 'test', 'info'])}{k}@mail.example"
                tries.append((k * minute // 4, user, attacker))
        elif kind == "distributed":      # one user from many IPs in 30 min
            user = rng.choice(org.users)[0]
            tries = [(k * 2 * minute, user, f"192.0.2.{rng.randint(2, 250)}")
                     for k in range(rng.randint(6, 12))]
        else:
            raise ValueError(f"unknown attack {kind!r}; one of {', '.join(ATTACKS)}")
        start = ts_ns - max(offset for offset, _, _ in tries) if ending else ts_ns
        for offset, user, ip in tries:
            self._emit("auth.login", org, user, start + offset, failed=True, ip=ip)
        return len(tries)

    # -- schedules --------------------------------------------------------------

    def backfill(self, days: float, events_per_day: int = 1500, progress=None) -> int:
        """History for the last ``days`` days, oldest first, at a daily rhythm."""
        now = time.time()
        start = now - days * 86400
        hours = int(days * 24)
        per_peak_hour = events_per_day / 24 / 0.45  # the rhythm averages about 0.45
        for h in range(hours):
            hour_start = start + h * 3600
            n = int(self.rng.gauss(per_peak_hour * rhythm(hour_start), 2) + 0.5)
            stamps = sorted(self.rng.uniform(hour_start, hour_start + 3600) for _ in range(max(0, n)))
            for ts in stamps:
                self.ordinary(int(ts * 1e9))
            if self.rng.random() < self.attack_probability:
                self.attack(self.rng.choice(ATTACKS), int((hour_start + 600) * 1e9))
            if progress:
                progress(h + 1, hours)
        return self.sent

    def run_live(self, rate_per_s: float, stop: threading.Event, attack_every_s: float = 300,
                 duration_s: float | None = None) -> int:
        """Live traffic at about ``rate_per_s`` (times the daily rhythm, never
        below a third of it), with an attack every ``attack_every_s``."""
        started = time.monotonic()
        next_attack = started + min(attack_every_s, 30)
        while not stop.is_set():
            if duration_s is not None and time.monotonic() - started >= duration_s:
                break
            self.ordinary(time.time_ns())
            if attack_every_s and time.monotonic() >= next_attack:
                self.attack(ATTACKS[int(next_attack) % len(ATTACKS)], time.time_ns(), ending=True)
                next_attack += attack_every_s
            rate = rate_per_s * max(1 / 3, rhythm(time.time()))
            stop.wait(self.rng.expovariate(rate))
        return self.sent

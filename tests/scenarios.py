"""Attack scenarios on a controllable clock, with the exact alerts each must raise.

Shared by the detector tests and the Grafana alert-rule tests: both evaluate
the same rules over the same events and must agree. Times are relative to
``T``; a scenario is evaluated once, at ``at`` (the detector's lag applies).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

T = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
ORG = "org-a"


def m(minutes: float) -> datetime:
    return T + timedelta(minutes=minutes)


@dataclass
class Scenario:
    name: str
    events: list[dict]
    at: datetime
    #: {(rule, key_type, key, severity)}
    expected: set[tuple[str, str, str, str]] = field(default_factory=set)


def fail(ts, user, ip, action="auth.login", org=ORG):
    return {"timestamp": ts, "user_email": user, "ip": ip, "action": action, "status": "failure",
            "org_id": org}


def ok(ts, user, ip, org=ORG):
    return {"timestamp": ts, "user_email": user, "ip": ip, "action": "auth.login", "status": "success",
            "org_id": org}


def brute_force(n: int, user="victim@acme.test", ip="198.51.100.7", start=0.0, spacing_s=30):
    return [fail(m(start) + timedelta(seconds=spacing_s * i), user, ip) for i in range(n)]


def brute_force_warning() -> Scenario:
    return Scenario("brute force, warning", brute_force(6), m(6),
                    {("user_brute_force", "user", "victim@acme.test", "warning")})


def brute_force_critical() -> Scenario:
    return Scenario("brute force, critical", brute_force(11), m(7),
                    {("user_brute_force", "user", "victim@acme.test", "critical")})


def password_spraying() -> Scenario:
    # 12 users × 2 attempts from one IP, one every 35 s (13.4 min): the last
    # 10 minutes hold 17 failures, under the per-IP threshold of 20.
    users = [f"user{i}@acme.test" for i in range(12)]
    events = [fail(T + timedelta(seconds=35 * i), users[i % 12], "203.0.113.50") for i in range(24)]
    return Scenario("password spraying", events, m(15),
                    {("password_spraying", "ip", "203.0.113.50", "critical")})


def credential_stuffing() -> Scenario:
    # 16 (mostly unknown) users, one attempt each, from one IP in 13 minutes. It is
    # also password spraying (≥ 10 users, ≤ 3 attempts each): both rules fire.
    events = [fail(T + timedelta(seconds=52 * i), f"leaked{i}@mail.test", "203.0.113.60")
              for i in range(16)]
    return Scenario("credential stuffing", events, m(15),
                    {("credential_stuffing", "ip", "203.0.113.60", "critical"),
                     ("password_spraying", "ip", "203.0.113.60", "critical")})


def distributed_attack() -> Scenario:
    # One user from 6 IPs, one failure every 4 minutes: never 5 in 15 minutes.
    events = [fail(m(4 * i), "cfo@acme.test", f"192.0.2.{10 + i}") for i in range(6)]
    return Scenario("distributed attack on one user", events, m(22),
                    {("distributed_attack", "user", "cfo@acme.test", "critical")})


def org_spike() -> Scenario:
    # 4 failures in the same 5-minute slot on each of the previous 7 days, then
    # 25 in the slot now, each a different user and IP.
    events = []
    for day in range(1, 8):
        for i in range(4):
            events.append(fail(m(10 + i) - timedelta(days=day), f"u{i}@acme.test", f"192.0.2.{i + 1}"))
    for i in range(25):
        events.append(fail(m(9) + timedelta(seconds=11 * i), f"s{i}@acme.test", f"198.18.0.{i + 1}"))
    return Scenario("org-wide spike", events, m(15), {("org_spike", "org", ORG, "warning")})


def success_after_failures() -> Scenario:
    events = brute_force(6) + [ok(m(5.5), "victim@acme.test", "198.51.100.99")]
    return Scenario("success after failures", events, m(7),
                    {("user_brute_force", "user", "victim@acme.test", "warning"),
                     ("success_after_failures", "user", "victim@acme.test", "emergency")})


FIRING = (brute_force_warning, brute_force_critical, password_spraying, credential_stuffing,
          distributed_attack, org_spike, success_after_failures)


def slow_attack() -> tuple[list[dict], list[datetime]]:
    """Just under every threshold for two hours; evaluated every 5 minutes."""
    events = []
    for k in range(8):                                   # 4 failures per 15 min, one user, one IP
        events += [fail(m(15 * k + 3 * i), "slow@acme.test", "198.51.100.20") for i in range(4)]
    for k in range(8):                                   # 9 users × 2 from one IP per 15 min
        events += [fail(m(15 * k) + timedelta(seconds=50 * i), f"p{i % 9}@acme.test", "198.51.100.30")
                   for i in range(18)]
    for k in range(4):                                   # one user from 4 IPs per 30 min
        events += [fail(m(30 * k + 7 * i), "spread@acme.test", f"192.0.2.{50 + i}") for i in range(4)]
    return events, [m(5 * k) for k in range(1, 26)]

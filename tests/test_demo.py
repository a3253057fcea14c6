"""Demo traffic: valid events, believable mix, scripted attacks; and the
`demo` command delivering through the shipper into a running serve."""

import collections
import re
import subprocess
import threading
import time

import pytest
from test_cli import EXE
from test_shipper_reliability import CollectorProcess, stored

from upmetr_audit.shipper.catalog import CATEGORIES
from upmetr_audit.shipper.demo import ATTACKS, DemoTraffic
from upmetr_audit.shipper.logger import build_attributes


class Recorder:
    """Collects what the demo emits, validated by the shipper's real rules."""

    def __init__(self):
        self.events = []

    def emit(self, action, **kwargs):
        ts = kwargs.pop("timestamp")
        attrs = build_attributes(action, **kwargs)
        self.events.append((action, ts, attrs))


def test_backfill_has_every_category_a_daily_rhythm_and_about_2pct_failed_logins():
    rec = Recorder()
    DemoTraffic(rec, seed=3).backfill(days=14)
    assert len(rec.events) > 10_000
    cats = collections.Counter(a.split(".")[0] for a, _, _ in rec.events)
    assert set(cats) == {c.id for c in CATEGORIES}
    failed_logins = sum(1 for a, _, at in rec.events
                        if a == "auth.login" and at["upmetr.audit.status"] == "failure")
    assert 0.01 < failed_logins / len(rec.events) < 0.04
    hours = collections.Counter((ts // 3_600_000_000_000) % 24 for _, ts, _ in rec.events)
    assert hours[14] > 3 * hours[3]  # busy afternoons, quiet nights (UTC)
    roles = {at["upmetr.user.role"] for _, _, at in rec.events}
    assert {"superadmin", "admin", "viewer"} <= roles
    assert len({at["upmetr.org.id"] for _, _, at in rec.events}) == 4


@pytest.mark.parametrize("kind", ATTACKS)
def test_attacks_have_their_shape(kind):
    rec = Recorder()
    demo = DemoTraffic(rec, seed=11)
    start = 1_700_000_000 * 10**9
    demo.attack(kind, start)
    assert all(a == "auth.login" and at["upmetr.audit.status"] == "failure"
               for a, _, at in rec.events)
    users = {at["user.email"] for _, _, at in rec.events}
    ips = {at["client.address"] for _, _, at in rec.events}
    span_min = (max(ts for _, ts, _ in rec.events) - start) / 60e9
    if kind == "brute_force":
        assert len(users) == 1 and len(ips) == 1 and len(rec.events) >= 12 and span_min <= 10
    elif kind == "password_spraying":
        per_user = collections.Counter(at["user.email"] for _, _, at in rec.events)
        assert len(ips) == 1 and len(users) >= 10 and max(per_user.values()) <= 3 and span_min <= 15
    elif kind == "credential_stuffing":
        assert len(ips) == 1 and len(users) >= 15 and len(rec.events) == len(users) and span_min <= 15
    else:
        assert len(users) == 1 and len(ips) >= 5 and span_min <= 30


@pytest.mark.parametrize("kind", ATTACKS)
def test_a_live_attack_ends_now_and_stamps_nothing_in_the_future(kind):
    ending, starting = Recorder(), Recorder()
    now = 1_700_000_000 * 10**9
    DemoTraffic(ending, seed=11).attack(kind, now, ending=True)
    DemoTraffic(starting, seed=11).attack(kind, now)
    assert max(ts for _, ts, _ in ending.events) == now
    shift = now - max(ts for _, ts, _ in starting.events)  # the same attack, moved back whole
    assert [(a, ts + shift, at["user.email"]) for a, ts, at in starting.events] == \
           [(a, ts, at["user.email"]) for a, ts, at in ending.events]


def test_live_traffic_with_attacks_stamps_nothing_in_the_future():
    rec = Recorder()
    stop = threading.Event()
    DemoTraffic(rec, seed=5).run_live(rate_per_s=200, stop=stop, attack_every_s=0.05, duration_s=0.3)
    after = time.time_ns()
    assert sum(at["upmetr.audit.status"] == "failure" for _, _, at in rec.events) >= 6  # attacks ran
    assert max(ts for _, ts, _ in rec.events) <= after


def test_unknown_attack_is_an_error():
    with pytest.raises(ValueError, match="unknown attack"):
        DemoTraffic(Recorder()).attack("ddos", 0)


def test_demo_command_delivers_backfill_through_the_shipper(tmp_path):
    collector = CollectorProcess(tmp_path / "data").start()
    r = subprocess.run([EXE, "demo", "--endpoint", collector.url, "--backfill", "1", "--rate", "0",
                        "--ingest-tokens", "test-token-0123456789", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    sent = int(re.search(r"demo\s+(\d+) events sent; 0 still in the spool", r.stdout).group(1))
    collector.stop()
    n, unique, _ = stored(tmp_path / "data")
    assert n == unique == sent > 0

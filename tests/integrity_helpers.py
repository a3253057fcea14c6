"""Events with chosen times, and a sealed store, for the tamper-evidence tests."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from upmetr_audit.collector import keys, schema, sealing, verify

HOUR = 3_600_000_000
MIN = 60_000_000
#: A whole hour (2026-09-21 12:00 UTC), so windows line up with it.
T0 = 1_790_000_000_000_000 // HOUR * HOUR

COLUMNS = ("event_id", "org_id", "timestamp", "received_at", "category", "action", "status",
           "user_email", "user_id", "resource_type", "resource_id", "ip", "user_agent", "session_id",
           "actor_type", "service_name", "reason", "changes", "details", "trace_id", "span_id")


def to_dt(us: int) -> dt.datetime:
    return sealing.to_dt(us)


def event(org="org-a", received_us=T0, timestamp_us=None, action="auth.login", status="success",
          user="ana@example.com", **fields) -> dict:
    row = {
        "event_id": str(uuid.uuid4()), "org_id": org,
        "timestamp": to_dt(timestamp_us if timestamp_us is not None else received_us - 150_000),
        "received_at": to_dt(received_us), "category": action.split(".")[0], "action": action,
        "status": status, "user_email": user, "user_id": "u-" + user.split("@")[0],
        "resource_type": "", "resource_id": "", "ip": "203.0.113.9",
        "user_agent": "Mozilla/5.0 (test)", "session_id": "s-1", "actor_type": "user",
        "service_name": "billing-api", "reason": "", "changes": "", "details": {}, "trace_id": "",
        "span_id": "",
    }
    row.update(fields)
    return row


def insert(client, events: list[dict]) -> list[str]:
    client.insert(schema.EVENTS_TABLE, [[e[c] for c in COLUMNS] for e in events], column_names=COLUMNS)
    return [e["event_id"] for e in events]


@dataclass
class Sealed:
    """A store with events of two orgs over three hours, and a keyring."""

    client: object
    data_dir: str
    keyring: keys.Keyring
    ids: list[str]

    @property
    def digest_dir(self) -> str:
        return f"{self.data_dir}/digests"

    def seal(self, now_us: int, **kw) -> sealing.SealRun:
        return sealing.seal_once(self.client, self.keyring, self.digest_dir, now_us, **kw)

    def verify(self, now_us: int, keyring: keys.Keyring | None = None, **kw) -> verify.VerifyResult:
        return verify.verify(self.client, keyring or self.keyring, self.digest_dir, now_us, **kw)

    def mutate(self, sql: str, **params) -> None:
        self.client.command(sql + " SETTINGS mutations_sync = 2", parameters=params)



def sealed_data_dir(d: str, events: list[dict]) -> list[str]:
    """A data dir for the CLI: a key, a migrated embedded store holding
    ``events``, and the seals of every window due now. Returns the event ids."""
    import time

    from upmetr_audit.collector import digests
    from upmetr_audit.collector import store as store_mod

    ring_dir = keys.keys_dir_for(d)
    keys.generate(ring_dir, 0)
    store = store_mod.open_store(f"chdb://{d}/clickhouse")
    try:
        store_mod.migrate(store.client)
        ids = insert(store.client, events)
        now = time.time_ns() // 1000
        sealing.seal_once(store.client, keys.load(ring_dir), digests.digests_dir_for(d), now)
    finally:
        store.close()
    return ids


def two_orgs_sealed(client, tmp_path, now_us: int) -> Sealed:
    """Events of org-a (ana in hours 0 and 2, bo in hour 0, a settings change)
    and of org-b, sealed as of ``now_us``; ``ids`` in that order."""
    ring = keys.load_or_generate(str(tmp_path / "keys"), T0)
    ids = insert(client, [
        event(received_us=T0 + 1 * MIN, user="ana@example.com"),
        event(received_us=T0 + 2 * MIN, user="bo@example.com", status="failure", reason="bad password"),
        event(received_us=T0 + 30 * MIN, action="settings.update", changes='{"tz": {"before": "UTC"}}',
              details={"http.route": "/api/settings", "plan": "pro"}),
        # hour 1 is quiet; hour 2:
        event(received_us=T0 + 2 * HOUR + 5 * MIN, user="ana@example.com"),
        event(received_us=T0 + 2 * HOUR + 6 * MIN, user="ana@example.com", ip="2001:db8::7"),
        event(org="org-b", received_us=T0 + 10 * MIN, user="cy@b.example"),
    ])
    s = Sealed(client, str(tmp_path), ring, ids)
    run = s.seal(now_us)
    assert len(run.seals) == 6  # 3 windows x 2 orgs, the quiet ones included
    return s

"""A small built-in sample of audit traffic, sent through the real OTel SDK.

``serve --demo`` runs :class:`SampleTraffic` against its own OTLP/HTTP
receiver so that rows appear in a fresh install. The events are valid audit
records of a few invented organizations, with a share of failed logins.
"""

from __future__ import annotations

import random
import threading
import time

import uuid_utils
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource

from upmetr_audit.shipper import contract as c
from upmetr_audit.shipper.catalog import ACTIONS, EVENT_NAME_PREFIX

ORGS = {
    "acme": ["ana@acme.test", "bruno@acme.test", "carla@acme.test"],
    "globex": ["dev@globex.test", "ops@globex.test"],
}
IPS = ["203.0.113.7", "198.51.100.23", "2001:db8::42", "192.0.2.10"]


def sample_attributes(rng: random.Random, action_id: str, org: str, user: str) -> dict:
    action = ACTIONS[action_id]
    failed = action.can_fail and rng.random() < 0.2
    attrs = {
        c.EVENT_ID: str(uuid_utils.uuid7()),
        c.ORG_ID: org,
        c.USER_EMAIL: user,
        c.STATUS: "failure" if failed else "success",
        c.CLIENT_ADDRESS: rng.choice(IPS),
        c.USER_AGENT: "Mozilla/5.0 (sample)",
        c.ACTOR_TYPE: "user",
    }
    if failed:
        attrs[c.REASON] = "invalid password" if action_id == "auth.login" else "provider error"
    if action.resource_type:
        attrs[c.RESOURCE_TYPE] = action.resource_type
        attrs[c.RESOURCE_ID] = f"{action.resource_type}-{rng.randint(1, 40)}"
    if action_id.endswith("update"):
        attrs[c.CHANGES] = '{"name": {"before": "old", "after": "new"}}'
    return attrs


class SampleTraffic:
    """Emits a few sample events every ``interval_s`` until stopped."""

    def __init__(self, endpoint: str, token: str | None, interval_s: float = 2.0, seed: int = 7):
        headers = {"authorization": f"Bearer {token}"} if token else None
        self.provider = LoggerProvider(resource=Resource.create({"service.name": "upmetr-sample"}))
        self.provider.add_log_record_processor(BatchLogRecordProcessor(
            OTLPLogExporter(endpoint=endpoint, headers=headers), schedule_delay_millis=500))
        self.logger = self.provider.get_logger(c.SCOPE_NAME)
        self.interval_s = interval_s
        self.rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sample-traffic", daemon=True)

    def emit_one(self) -> None:
        org = self.rng.choice(list(ORGS))
        user = self.rng.choice(ORGS[org])
        action_id = self.rng.choice(["auth.login"] * 4 + list(ACTIONS))
        self.logger.emit(
            event_name=EVENT_NAME_PREFIX + action_id,
            timestamp=time.time_ns(),
            attributes=sample_attributes(self.rng, action_id, org, user),
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            for _ in range(self.rng.randint(1, 6)):
                self.emit_one()
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.provider.shutdown()

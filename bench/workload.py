"""The benchmarks' shared, deterministic audit workload."""

from __future__ import annotations

import random

from upmetr_audit.shipper import contract as c
from upmetr_audit.shipper.catalog import ACTIONS

IPS = ["203.0.113.7", "198.51.100.23", "2001:db8::42", "192.0.2.10"]


def event_attributes(rng: random.Random, action_id: str, org: str, user: str) -> dict[str, str]:
    """Attributes of one valid audit event (without the event id): 20% of the
    actions that can fail fail, with a reason; resources where the catalog
    needs them; a changes object on updates."""
    action = ACTIONS[action_id]
    failed = action.can_fail and rng.random() < 0.2
    attrs = {
        c.ORG_ID: org,
        c.USER_EMAIL: user,
        c.STATUS: "failure" if failed else "success",
        c.CLIENT_ADDRESS: rng.choice(IPS),
        c.USER_AGENT: "Mozilla/5.0 (bench)",
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

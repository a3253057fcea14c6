"""The event catalog holds every action the product documents."""

import pytest

from upmetr_audit.shipper.catalog import ACTIONS, CATEGORIES, action_for_event_name

REQUIRED = {
    "auth": ["login", "logout", "password_change"],
    "mfa": ["enable", "disable", "verify", "backup_code_use", "backup_codes_regenerate"],
    "magic_link": ["send", "verify"],
    "team": ["user_create", "user_update", "user_delete"],
    "cloud_account": ["create", "update", "delete", "test_connection", "discover_resources"],
    "monitor": ["create", "update", "delete"],
    "incident": ["acknowledge", "resolve", "delete"],
    "compute": ["instance_start", "instance_stop", "instance_reboot"],
    "agent": ["create", "update", "delete", "token_regenerate"],
    "alert_rule": ["create", "update", "delete"],
    "status_page": ["create", "update", "delete", "token_regenerate"],
    "settings": ["update", "status_page_token_regenerate"],
    "system": ["api_access", "rate_limit"],
}


@pytest.mark.parametrize("action_id", [f"{c}.{v}" for c, vs in REQUIRED.items() for v in vs])
def test_required_action_is_in_the_catalog(action_id):
    action = ACTIONS[action_id]
    assert action.category == action_id.split(".")[0]
    assert action.label
    assert action_for_event_name("upmetr.audit." + action_id) is action


def test_failures_that_matter_can_be_recorded():
    for a in ("auth.login", "mfa.verify", "magic_link.verify", "system.rate_limit"):
        assert ACTIONS[a].can_fail


def test_action_ids_are_unique_and_well_formed():
    ids = [a.id for c in CATEGORIES for a in c.actions]
    assert len(ids) == len(set(ids))
    for c in CATEGORIES:
        assert c.label and all(a.id.startswith(c.id + ".") for a in c.actions)


def test_non_audit_and_unknown_event_names_map_to_nothing():
    assert action_for_event_name("auth.login") is None
    assert action_for_event_name("upmetr.audit.auth.teleport") is None

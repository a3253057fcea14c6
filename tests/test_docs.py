"""The documentation stays true: every action, attribute, rule and setting is in it."""

import os
import re

import pytest

from upmetr_audit.collector import schema
from upmetr_audit.collector.settings import SETTINGS
from upmetr_audit.shipper import contract
from upmetr_audit.shipper.catalog import ACTIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name):
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


@pytest.mark.parametrize("action_id", list(ACTIONS))
def test_event_contract_lists_every_action(action_id):
    assert f"`{action_id}`" in read("docs/event-contract.md")


@pytest.mark.parametrize("attribute", list(contract.ATTRIBUTES))
def test_event_contract_lists_every_attribute(attribute):
    assert f"`{attribute}`" in read("docs/event-contract.md")


@pytest.mark.parametrize("reason", [r for r, _ in schema.REJECT_RULES])
def test_event_contract_lists_every_reject_reason(reason):
    assert f"`{reason}`" in read("docs/event-contract.md")


def test_architecture_shows_every_audit_events_column():
    doc = read("docs/architecture.md")
    for column in schema.EVENT_COLUMNS_SQL:
        assert f"`{column}`" in doc, column


def test_readme_opens_with_the_run_and_test_commands():
    first_block = re.search(r"```sh\n(.*?)```", read("README.md"), re.S).group(1)
    assert "make run" in first_block and "make test" in first_block


@pytest.mark.parametrize("name", ["data_dir", "clickhouse_url", "otlp_http_addr",
                                  "otlp_grpc_addr", "web_addr", "ingest_tokens"])
def test_readme_documents_the_main_settings(name):
    assert f"`{SETTINGS[name].envvar}`" in read("README.md")


@pytest.mark.parametrize("rule_id", ["user_brute_force", "ip_brute_force", "password_spraying",
                                     "credential_stuffing", "distributed_attack", "org_spike",
                                     "success_after_failures"])
def test_alerts_doc_lists_every_rule(rule_id):
    from upmetr_audit.collector.rules import DEFAULT_RULES
    assert rule_id in DEFAULT_RULES
    assert f"`{rule_id}`" in read("docs/alerts.md")


def test_alerts_doc_lists_every_alert_setting():
    from upmetr_audit.collector.settings import ALERT_OPTIONS
    doc = read("docs/alerts.md")
    for name in ALERT_OPTIONS:
        assert SETTINGS[name].flag in doc, name


def test_alerts_doc_lists_every_settable_rule_field():
    from upmetr_audit.collector.rules import _SETTABLE
    doc = read("docs/alerts.md")
    for field in set().union(*_SETTABLE.values()):
        assert f"`{field}`" in doc, field

"""Schemathesis fuzzes the JSON API against its own OpenAPI document, through
WSGI on a real store, as a superadmin with a personal API token: no 500 and
every response conforms to the document (issue 4 §6)."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from upmetr_audit.web import accounts
from upmetr_audit.web.app import create_app
from upmetr_audit.web.openapi import document

from helpers import audit_attrs
from test_web_api import PASSWORD, seed

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
SCHEMA = schemathesis.openapi.from_dict(document())
OPERATIONS = {op.label: op for op in (r.ok() for r in SCHEMA.get_all_operations())}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_api_conforms_to_its_openapi_document(store, label, mode):
    accounts.create_user(store.client, "root@acme.test", "acme", "superadmin", PASSWORD)
    accounts.set_module(store.client, "acme", accounts.AUDIT_MODULE, True)
    seed(store, [{"attrs": audit_attrs(**{"upmetr.org.id": "acme", "user.email": f"a{i}@acme.test",
                                          "upmetr.resource.type": "monitor",
                                          "upmetr.resource.id": f"m-{i}"})} for i in range(5)])
    app = create_app({"STORE_CLIENT": store.client, "SECRET_KEY": "k" * 40, "TESTING": True,
                      "API_RATE_LIMIT": "100000 per minute"})
    headers = {"Authorization": f"Bearer {accounts.create_token(store.client, 'root@acme.test')}"}

    @given(case=OPERATIONS[label].as_strategy(mode))
    @settings(max_examples=25, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def fuzz(case):
        case.headers = {**(case.headers or {}), **headers}
        case.call_and_validate(app=app, checks=CHECKS)

    fuzz()
    if label == "GET /api/v1/events/{event_id}":  # random UUIDs never hit a stored event
        found = app.test_client().get("/api/v1/events", headers=headers).get_json()["events"][0]
        case = OPERATIONS[label].Case(path_parameters={"event_id": found["event_id"]}, headers=headers)
        assert case.call_and_validate(app=app, checks=CHECKS).status_code == 200

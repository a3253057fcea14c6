"""The audit page and JSON API with the Flask test client on a real store:
who may see what, bad input, hostile data, export, the OpenAPI document."""

import json
import re
import uuid

import pytest
from werkzeug.http import parse_options_header

from upmetr_audit.collector import schema
from upmetr_audit.collector.processors import to_batch
from upmetr_audit.web import accounts
from upmetr_audit.web.app import create_app
from upmetr_audit.web.openapi import FILTER_PARAMETERS, document
from upmetr_audit.web.queries import MAX_EXACT_LEN

from helpers import audit_attrs, otlp_request

PASSWORD = "correct horse battery"
XSS = ['<script>alert(1)</script>', '"><img src=x onerror=alert(1)>', "javascript:alert(1)",
       "<svg/onload=alert(1)>", "{{7*7}}", "';alert(1);//"]


def seed(store, records):
    batch = to_batch(otlp_request(records))
    store.client.insert(schema.INGEST_TABLE, batch.rows, column_names=schema.INGEST_COLUMNS)


@pytest.fixture
def app(store):
    for email, org, role in [("root@acme.test", "acme", "superadmin"),
                             ("admin@acme.test", "acme", "admin"),
                             ("viewer@acme.test", "acme", "viewer"),
                             ("root@globex.test", "globex", "superadmin")]:
        accounts.create_user(store.client, email, org, role, PASSWORD)
    for org in ("acme", "globex"):
        accounts.set_module(store.client, org, accounts.AUDIT_MODULE, True)
    seed(store, [{"attrs": audit_attrs(**{"upmetr.org.id": "acme", "user.email": f"a{i}@acme.test"})}
                 for i in range(30)]
         + [{"attrs": audit_attrs(**{"upmetr.org.id": "globex", "user.email": "g@globex.test",
                                     "upmetr.audit.reason": "globex secret"})}])
    return create_app({"STORE_CLIENT": store.client, "SECRET_KEY": "k" * 40, "TESTING": True})


def signed_in(app, email):
    client = app.test_client()
    html = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    assert client.post("/login", data={"email": email, "password": PASSWORD,
                                       "csrf_token": token}).status_code == 302
    return client


ENDPOINTS = ["/audit", "/api/v1/summary", "/api/v1/events", "/api/v1/export?format=ndjson"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("email,allowed", [("root@acme.test", True), ("admin@acme.test", False),
                                           ("viewer@acme.test", False)])
def test_authorization_matrix(app, endpoint, email, allowed):
    r = signed_in(app, email).get(endpoint)
    assert r.status_code == (200 if allowed else 403)
    body = r.get_data(as_text=True)
    assert "globex" not in body  # never another org's data
    if allowed and endpoint != "/api/v1/summary":
        assert "@acme.test" in body


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_anonymous_gets_nothing(app, endpoint):
    r = app.test_client().get(endpoint)
    assert r.status_code in (302, 401) and "acme.test" not in r.get_data(as_text=True)


def test_org_cannot_be_widened_by_a_parameter(app):
    client = signed_in(app, "root@acme.test")
    for param in ("org", "org_id", "upmetr.org.id"):
        body = client.get(f"/api/v1/events?{param}=globex&per_page=100").get_data(as_text=True)
        assert "globex" not in body
    globex_id = json.loads(signed_in(app, "root@globex.test").get(
        "/api/v1/events").get_data())["events"][0]["event_id"]
    assert client.get(f"/api/v1/events/{globex_id}").status_code == 404
    assert client.get(f"/audit/events/{globex_id}").status_code == 404


@pytest.mark.parametrize("query,field", [
    ("since=yesterday", "since"), ("ip=10.0.0.0/33", "ip"), ("per_page=30", "per_page"),
    ("cursor=not-a-cursor", "cursor"), ("action=auth.teleport", "action"),
    ("status=maybe", "status"), ("format=xml", "format"),
])
def test_bad_filters_answer_400_naming_the_field(app, query, field):
    endpoint = "/api/v1/export" if field == "format" else "/api/v1/events"
    r = signed_in(app, "root@acme.test").get(f"{endpoint}?{query}")
    assert r.status_code == 400
    assert r.get_json() == {"ok": False, "error": {"field": field, "message": r.get_json()[
        "error"]["message"]}} and r.get_json()["error"]["message"]


def test_bad_filter_on_the_page_is_a_clear_400(app):
    r = signed_in(app, "root@acme.test").get("/audit?per_page=7")
    assert r.status_code == 400 and "per_page" in r.get_data(as_text=True)


@pytest.mark.parametrize("junk", ["'", "%00", "%ff%fe", "a" * 5000, "{x:String}", "1' OR '1'='1",
                                  "\\", "${jndi:ldap://x}", "%E2%80%AE"])
def test_no_junk_in_any_filter_causes_a_500(app, junk):
    client = signed_in(app, "root@acme.test")
    for name, _, _ in FILTER_PARAMETERS:
        for path in ("/api/v1/events", "/audit"):
            r = client.get(f"{path}?{name}={junk}")
            assert r.status_code in (200, 400), (name, junk, r.status_code)


def test_stored_xss_renders_inert(app, store):
    seed(store, [{"attrs": audit_attrs(**{"upmetr.org.id": "acme", "user.email": x + "@x.test",
                                          "upmetr.audit.reason": x, "upmetr.resource.id": x,
                                          "upmetr.resource.type": x})} for x in XSS])
    client = signed_in(app, "root@acme.test")
    page = client.get("/audit?per_page=100").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page and "<svg/onload" not in page
    assert "onerror=alert(1)>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    ids = [e["event_id"] for e in client.get("/api/v1/events?per_page=100").get_json()["events"]
           if e["reason"] in XSS]
    detail = client.get(f"/audit/events/{ids[0]}").get_data(as_text=True)
    assert "<script>alert" not in detail and "<img src=x" not in detail


def test_export_streams_the_filtered_events(app):
    client = signed_in(app, "root@acme.test")
    r = client.get("/api/v1/export?format=csv&user=a3@acme.test")
    assert r.status_code == 200 and r.mimetype == "text/csv"
    assert r.is_streamed
    lines = r.get_data(as_text=True).strip().splitlines()
    assert len(lines) == 2 and "a3@acme.test" in lines[1]
    nd = client.get("/api/v1/export?format=ndjson").get_data(as_text=True).strip().splitlines()
    assert len(nd) == 30 and all(json.loads(x)["org_id"] == "acme" for x in nd)


@pytest.mark.parametrize("org", ["société", "東京", 'a"b', "a;b\\c d"])
def test_export_of_any_org_id_downloads_under_its_name(store, org):
    accounts.create_user(store.client, "root@x.test", org, "superadmin", PASSWORD)
    accounts.set_module(store.client, org, accounts.AUDIT_MODULE, True)
    seed(store, [{"attrs": audit_attrs(**{"upmetr.org.id": org})}])
    app = create_app({"STORE_CLIENT": store.client, "SECRET_KEY": "k" * 40, "TESTING": True})
    r = signed_in(app, "root@x.test").get("/api/v1/export?format=csv")
    header = r.headers["Content-Disposition"]
    assert r.status_code == 200 and header.isascii()  # HTTP header values are Latin-1 at most
    assert parse_options_header(header) == ("attachment", {"filename": f"audit-{org}.csv"})
    assert len(r.get_data(as_text=True).strip().splitlines()) == 2


@pytest.mark.parametrize("field,attribute,value", [
    ("user", "user.email", "vic\ttim@acme.test"),
    ("user", "user.email", " padded@acme.test "),
    ("user", "user.email", "a" * 300 + "@acme.test"),
    ("resource_type", "upmetr.resource.type", " monitor"),
    ("resource_id", "upmetr.resource.id", "mon-1\n"),
])
def test_exact_filters_match_the_stored_value_as_it_is(app, store, field, attribute, value):
    seed(store, [{"attrs": audit_attrs(**{"upmetr.org.id": "acme", attribute: value})}
                 for _ in range(2)])
    client = signed_in(app, "root@acme.test")
    r = client.get("/api/v1/events", query_string={field: value})
    assert r.status_code == 200, r.get_json()
    assert [e[field if field != "user" else "user_email"] for e in r.get_json()["events"]] == [value] * 2
    page = client.get("/audit", query_string={field: value})
    assert page.status_code == 200 and "No audit events match" not in page.get_data(as_text=True)


@pytest.mark.parametrize("value,message", [
    ("a\x00b@acme.test", "user: contains a NUL character"),
    ("a" * (MAX_EXACT_LEN + 1), f"user: is too long (at most {MAX_EXACT_LEN} characters)"),
])
def test_exact_filters_refuse_only_nul_and_absurd_lengths(app, value, message):
    r = signed_in(app, "root@acme.test").get("/api/v1/events", query_string={"user": value})
    assert r.status_code == 400
    assert r.get_json() == {"ok": False, "error": {"field": "user", "message": message}}


def test_api_errors_are_json_in_the_api_error_shape_never_the_html_page(app, store):
    client = signed_in(app, "root@acme.test")
    bearer = {"Authorization": f"Bearer {accounts.create_token(store.client, 'root@acme.test')}"}
    ack = f"/api/v1/alerts/{uuid.uuid4()}/ack"
    cases = [
        (client.post(ack), 400, "csrf_token"),  # a session without the CSRF token
        (client.get("/api/v1/event"), 404, "path"),
        (client.delete("/api/v1/events", headers=bearer), 405, "method"),
        (client.post(ack, data={"x": "y" * 70_000}), 413, "body"),  # over MAX_CONTENT_LENGTH
    ]
    for r, status, field in cases:
        assert (r.status_code, r.mimetype) == (status, "application/json"), r.request.path
        body = r.get_json()
        assert body == {"ok": False, "error": {"field": field, "message": body["error"]["message"]}}
        assert body["error"]["message"]
    assert "GET" in cases[2][0].headers["Allow"]
    page = client.get("/audit/nowhere")  # the page keeps its HTML error page
    assert (page.status_code, page.mimetype) == (404, "text/html")

def test_pagination_links_walk_every_event(app):
    client = signed_in(app, "root@acme.test")
    seen, url = [], "/api/v1/events?per_page=25"
    while url:
        body = client.get(url).get_json()
        seen += [e["event_id"] for e in body["events"]]
        url = f"/api/v1/events?per_page=25&cursor={body['next_cursor']}" if body["next_cursor"] else None
    assert len(seen) == len(set(seen)) == 30


def test_openapi_document_matches_the_routes(app):
    doc = signed_in(app, "root@acme.test").get("/api/v1/openapi.json").get_json()
    assert doc == json.loads(json.dumps(document()))
    routes = {re.sub(r"<(\w+)>", r"{\1}", r.rule) for r in app.url_map.iter_rules()
              if r.rule.startswith("/api/v1/") and r.rule != "/api/v1/openapi.json"}
    assert routes == set(doc["paths"])


def test_openapi_parameters_are_exactly_the_filters(app):
    from dataclasses import fields

    from upmetr_audit.web.queries import Filters
    documented = {name for name, _, _ in FILTER_PARAMETERS}
    assert documented == {f.name for f in fields(Filters)}


def test_the_form_has_every_filter_and_they_narrow_the_page(app, store):
    seed(store, [{"attrs": audit_attrs(**{"upmetr.org.id": "acme", "user.email": "r@acme.test",
                                          "upmetr.resource.type": "monitor",
                                          "upmetr.resource.id": f"mon-{i}"})} for i in range(3)])
    client = signed_in(app, "root@acme.test")
    page = client.get("/audit").get_data(as_text=True)
    for name, kind in [("since", "datetime-local"), ("until", "datetime-local"), ("category", None),
                       ("resource_type", None), ("resource_id", None)]:
        field_id = re.search(rf'<(?:input|select) id="([^"]+)" name="{name}"'
                             + (rf' type="{kind}"' if kind else ""), page).group(1)
        assert f'<label for="{field_id}">' in page
    assert '<option value="auth" >' in page and "(UTC" in page
    narrowed = client.get("/audit?resource_type=monitor&resource_id=mon-1").get_data(as_text=True)
    assert narrowed.count("<code>mon-") == 1 and 'value="mon-1"' in narrowed
    assert client.get("/audit?category=auth&resource_id=mon-1").get_data(as_text=True).count(
        "<code>mon-") == 1
    assert "No audit events match" in client.get("/audit?category=monitor").get_data(as_text=True)
    future = client.get("/audit?since=2200-01-01T00:00").get_data(as_text=True)
    assert "No audit events match" in future and 'value="2200-01-01T00:00:00"' in future
    past = client.get("/audit?until=2000-01-01T00:00:00&resource_id=mon-2").get_data(as_text=True)
    assert "No audit events match" in past
    assert client.get("/audit?since=2000-01-01T00:00&resource_id=mon-2").get_data(
        as_text=True).count("<code>mon-") == 1

"""Sign-in, roles, the module gate, CSRF, cookies, headers, rate limit and the
page's own audit events — with the Flask test client on a real store and the
self-audit going through the real shipper and collector."""

import http.client
import re
import time
from urllib.parse import urlencode

import pytest

from upmetr_audit.shipper import AuditLogger
from upmetr_audit.web import accounts
from upmetr_audit.web.app import create_app
from upmetr_audit.web.server import WebServer

from helpers import TOKEN

PASSWORD = "correct horse battery"


@pytest.fixture
def audit_logger(collector, tmp_path):
    audit = AuditLogger(service_name="upmetr-audit-web", endpoint=collector.logs_url,
                        spool_dir=str(tmp_path / "web-spool"),
                        headers={"authorization": f"Bearer {TOKEN}"})
    yield audit
    audit.shutdown(timeout_s=2)


@pytest.fixture
def app(store, audit_logger):
    for email, org, role in [("root@acme.test", "acme", "superadmin"),
                             ("admin@acme.test", "acme", "admin"),
                             ("viewer@acme.test", "acme", "viewer"),
                             ("root@globex.test", "globex", "superadmin")]:
        accounts.create_user(store.client, email, org, role, PASSWORD)
    accounts.set_module(store.client, "acme", accounts.AUDIT_MODULE, True)
    return create_app({"STORE_CLIENT": store.client, "SECRET_KEY": "k" * 40,
                       "AUDIT_EMIT": audit_logger.emit, "TESTING": True})


def csrf(client, path="/login"):
    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def login(client, email, password=PASSWORD, **extra):
    return client.post("/login" + extra.pop("query", ""), data={
        "email": email, "password": password, "csrf_token": csrf(client), **extra})


def events(store, audit_logger, action):
    assert audit_logger.flush(30)
    return [r for r in store.client.query(
        "SELECT user_email, status, org_id, reason FROM audit.audit_events "
        "WHERE action = {a:String}", parameters={"a": action}).result_rows]


def test_superadmin_signs_in_and_sees_the_page(app, store, audit_logger):
    client = app.test_client()
    r = login(client, "root@acme.test")
    assert r.status_code == 302 and r.headers["Location"] == "/audit"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert client.get("/audit").status_code == 200
    assert events(store, audit_logger, "auth.login") == [("root@acme.test", "success", "acme", "")]


@pytest.mark.parametrize("email,password", [("root@acme.test", "wrong password!"),
                                            ("nobody@acme.test", PASSWORD)])
def test_failed_sign_in_has_one_message_and_is_audited(app, store, audit_logger, email, password):
    r = login(app.test_client(), email, password)
    assert r.status_code == 401
    assert "Invalid email or password." in r.get_data(as_text=True)
    (row,) = events(store, audit_logger, "auth.login")
    assert row[:2] == (email, "failure") and row[3] == "invalid credentials"


@pytest.mark.parametrize("email", ["admin@acme.test", "viewer@acme.test"])
def test_admin_and_viewer_get_403_saying_why(app, email):
    client = app.test_client()
    login(client, email)
    r = client.get("/audit")
    assert r.status_code == 403
    assert "Only Superadmins can view audit logs; ask your organization's Superadmin" in \
        r.get_data(as_text=True)


def test_module_gate_explains_the_enterprise_module(app, store):
    client = app.test_client()
    login(client, "root@globex.test")  # globex has no audit_logs module
    r = client.get("/audit")
    assert r.status_code == 403 and "audit_logs" in r.get_data(as_text=True)
    accounts.set_module(store.client, "globex", accounts.AUDIT_MODULE, True)
    assert client.get("/audit").status_code == 200
    accounts.set_module(store.client, "globex", accounts.AUDIT_MODULE, False)
    assert client.get("/audit").status_code == 403


def test_post_without_csrf_token_is_refused(app):
    client = app.test_client()
    client.get("/login")
    r = client.post("/login", data={"email": "root@acme.test", "password": PASSWORD})
    assert r.status_code == 400 and "CSRF" in r.get_data(as_text=True)


def test_sign_out_needs_post_with_csrf_and_is_audited(app, store, audit_logger):
    client = app.test_client()
    login(client, "root@acme.test")
    assert client.get("/logout").status_code == 405
    assert client.post("/logout").status_code == 400
    r = client.post("/logout", data={"csrf_token": csrf(client, "/audit")})
    assert r.status_code == 302
    assert client.get("/audit").status_code == 302  # signed out
    assert events(store, audit_logger, "auth.logout") == [("root@acme.test", "success", "acme", "")]


@pytest.mark.parametrize("target,expected", [
    ("/audit?status=failure", "/audit?status=failure"),
    ("//evil.example/x", "/audit"),
    ("https://evil.example/", "/audit"),
    # browsers drop tabs and newlines and read a backslash as a slash: //evil.example
    ("/\t/evil.example", "/audit"),
    ("/\r/evil.example", "/audit"),
    ("/\n/evil.example", "/audit"),
    ("/\\evil.example", "/audit"),
    ("/\\/evil.example", "/audit"),
    ("/\x00/evil.example", "/audit"),
])
def test_next_parameter_cannot_redirect_off_site(app, target, expected):
    r = login(app.test_client(), "root@acme.test", query="?" + urlencode({"next": target}))
    assert r.status_code == 302 and r.headers["Location"] == expected


def test_next_parameter_with_a_tab_cannot_redirect_off_site_on_the_real_server(store, tmp_path):
    accounts.create_user(store.client, "root@acme.test", "acme", "superadmin", PASSWORD)
    server = WebServer(store.client, "127.0.0.1", 0, str(tmp_path))
    server.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        path = "/login?" + urlencode({"next": "/\t/evil.example/phish"})
        conn.request("GET", path)
        r = conn.getresponse()
        token = re.search(r'name="csrf_token" value="([^"]+)"', r.read().decode()).group(1)
        conn.request("POST", path, headers={
            "Cookie": r.getheader("Set-Cookie").split(";")[0],
            "Content-Type": "application/x-www-form-urlencoded"}, body=urlencode({
                "email": "root@acme.test", "password": PASSWORD, "csrf_token": token}))
        r = conn.getresponse()
        r.read()
        assert r.status == 302 and r.getheader("Location") == "/audit"
    finally:
        server.shutdown()


def test_security_headers_on_every_page(app):
    r = app.test_client().get("/login")
    csp = r.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script>" not in r.get_data(as_text=True)


def test_https_deployments_send_strict_transport_security(store):
    def header(secure):
        app = create_app({"STORE_CLIENT": store.client, "SECRET_KEY": "k" * 40, "TESTING": True,
                          "SESSION_COOKIE_SECURE": secure})
        return app.test_client().get("/login").headers.get("Strict-Transport-Security")

    assert header(True) == "max-age=31536000"
    assert header(False) is None  # plain-HTTP localhost: browsers would pin HTTPS for it


def test_disabled_user_cannot_sign_in_and_is_signed_out(app, store):
    client = app.test_client()
    login(client, "root@acme.test")
    accounts.set_disabled(store.client, "root@acme.test")
    assert client.get("/audit").status_code == 302
    assert login(client, "root@acme.test").status_code == 401


def test_idle_session_expires(app):
    app.config["SESSION_IDLE_SECONDS"] = 0.2
    client = app.test_client()
    login(client, "root@acme.test")
    assert client.get("/audit").status_code == 200
    time.sleep(0.3)  # the idle timeout itself is what is under test
    assert client.get("/audit").status_code == 302


def test_sign_in_rate_limit_answers_429_and_is_audited(app, store, audit_logger):
    app.config["LOGIN_RATE_LIMIT"] = "3 per minute"
    client = app.test_client()
    codes = [login(client, "root@acme.test", "wrong password!").status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]
    (row,) = events(store, audit_logger, "system.rate_limit")
    assert row[1] == "failure" and "rate limit" in row[3]


def test_rate_limit_answers_429_even_for_an_oversized_body(app):
    # The 429 handler reads the sign-in form to name who was limited; a body
    # over MAX_CONTENT_LENGTH cannot be read, which must not turn into a 500.
    app.config.update(LOGIN_RATE_LIMIT="2 per minute", API_RATE_LIMIT="1 per minute")
    big = {"email": "root@acme.test", "password": "p" * 70_000}
    api = app.test_client()
    login(api, "root@acme.test")
    assert [api.get("/api/v1/summary", data=big).status_code for _ in range(2)] == [200, 429]
    client = app.test_client()
    no_csrf = {"Authorization": "Bearer x"}  # skips the CSRF check, which would refuse it first
    codes = [client.post("/login", data=big, headers=no_csrf).status_code for _ in range(2)]
    assert codes == [413, 429]  # the sign-in above used the first of the two


def test_secret_key_is_required():
    with pytest.raises(ValueError, match="SECRET_KEY"):
        create_app({"STORE_CLIENT": None, "SECRET_KEY": "short"})


@pytest.mark.parametrize("kwargs,message", [
    ({"email": "not-an-email", "org_id": "o", "role": "viewer"}, "invalid email"),
    ({"email": "a@b.c", "org_id": "o", "role": "owner"}, "role must be one of"),
    ({"email": "a@b.c", "org_id": "", "role": "viewer"}, "org is required"),
    ({"email": "a@b.c", "org_id": "o", "role": "viewer", "password": "short"}, "at least 10"),
])
def test_bad_account_data_is_refused(store, kwargs, message):
    with pytest.raises(accounts.AccountError, match=message):
        accounts.create_user(store.client, **kwargs)


def test_personal_api_token_reads_the_api_only(app, store):
    token = accounts.create_token(store.client, "root@acme.test")
    client = app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    r = client.get("/api/v1/summary", headers=auth)
    assert r.status_code == 200 and "total_events" in r.get_json()
    assert client.get("/audit", headers=auth).status_code == 302  # not a browser session
    bad = client.get("/api/v1/summary", headers={"Authorization": f"Bearer {token[:-1]}x"})
    assert bad.status_code == 401 and bad.get_json()["error"]["field"] == "authorization"
    with pytest.raises(accounts.AccountError, match="for superadmins"):
        accounts.create_token(store.client, "admin@acme.test")
    accounts.set_disabled(store.client, "root@acme.test")
    assert client.get("/api/v1/summary", headers=auth).status_code == 401


def test_api_rate_limit_answers_429(app):
    app.config["API_RATE_LIMIT"] = "2 per minute"
    client = app.test_client()
    login(client, "root@acme.test")
    codes = [client.get("/api/v1/summary").status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_failed_sign_ins_to_one_account_from_many_addresses_are_limited(app, store):
    app.config.update(LOGIN_RATE_LIMIT="1000 per minute", LOGIN_ACCOUNT_RATE_LIMIT="3 per hour")
    codes = []
    for i in range(4):  # a distributed attack: another address each time
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = f"198.51.100.{i + 1}"
        codes.append(login(client, "Root@Acme.test", "wrong password!").status_code)
    assert codes == [401, 401, 401, 429]
    other = app.test_client()
    assert login(other, "admin@acme.test").status_code == 302  # other accounts are not limited


def test_successful_sign_ins_do_not_use_up_the_account_limit(app):
    app.config.update(LOGIN_ACCOUNT_RATE_LIMIT="2 per hour")
    assert [login(app.test_client(), "root@acme.test").status_code for _ in range(4)] == [302] * 4

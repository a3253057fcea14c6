"""Sessions of the audit page end when they should: after the idle timeout,
after the absolute lifetime however busy, and on every device when the user
signs out or gets a new password — a copied cookie included. Flask test
client on a real store; the timeouts are scaled down to seconds."""

import datetime as dt
import re
import time

import pytest

from upmetr_audit.web import accounts
from upmetr_audit.web.app import create_app

from test_web_api import PASSWORD

COOKIE = "upmetr_audit_session"


@pytest.fixture
def app(store):
    accounts.create_user(store.client, "root@acme.test", "acme", "superadmin", PASSWORD)
    accounts.create_user(store.client, "other@acme.test", "acme", "superadmin", PASSWORD)
    accounts.set_module(store.client, "acme", accounts.AUDIT_MODULE, True)
    return create_app({"STORE_CLIENT": store.client, "SECRET_KEY": "k" * 40, "TESTING": True})


def csrf(client, path="/login"):
    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def login(client, email, password=PASSWORD):
    return client.post("/login", data={"email": email, "password": password,
                                       "csrf_token": csrf(client)})


def signed_in(app, email="root@acme.test"):
    client = app.test_client()
    assert login(client, email).status_code == 302
    return client


def replay(app, cookie: str):
    """Another browser that presents a copy of ``cookie``."""
    client = app.test_client()
    client.set_cookie(COOKIE, cookie)
    return client


def test_the_cookie_of_the_sign_in_itself_expires_when_idle(app):
    app.config["SESSION_IDLE_SECONDS"] = 0.5
    client = app.test_client()
    login(client, "root@acme.test")
    cookie = client.get_cookie(COOKIE).value  # as set by the sign-in response, never used since
    assert replay(app, cookie).get("/api/v1/summary").status_code == 200
    time.sleep(0.7)  # the idle timeout itself is what is under test
    assert replay(app, cookie).get("/api/v1/summary").status_code == 401


def test_a_session_without_issue_and_seen_stamps_is_refused(app):
    # e.g. a cookie signed by an earlier version, which stamped neither
    forged = app.session_interface.get_signing_serializer(app).dumps(
        {"user": "root@acme.test", "_permanent": True})
    assert replay(app, forged).get("/api/v1/summary").status_code == 401
    assert replay(app, forged).get("/audit").status_code == 302


def test_a_busy_session_still_ends_after_its_absolute_lifetime(app):
    app.config["PERMANENT_SESSION_LIFETIME"] = dt.timedelta(seconds=2)
    client = signed_in(app)
    codes = []
    for _ in range(12):  # a request every 0.25 s: never idle, 3 s in all
        codes.append(client.get("/api/v1/summary").status_code)
        time.sleep(0.25)
    assert codes[:3] == [200] * 3 and codes[-2:] == [401, 401]
    assert codes == sorted(codes)  # once ended, it stays ended
    assert client.get("/audit").status_code == 302


def test_signing_out_ends_the_users_sessions_on_every_device(app):
    laptop, phone = signed_in(app), signed_in(app)
    stolen = laptop.get_cookie(COOKIE).value
    colleague = signed_in(app, "other@acme.test")
    assert laptop.post("/logout", data={"csrf_token": csrf(laptop, "/audit")}).status_code == 302
    for client in (laptop, phone, replay(app, stolen)):
        assert client.get("/api/v1/summary").status_code == 401
        assert client.get("/audit").status_code == 302
    assert colleague.get("/api/v1/summary").status_code == 200  # other users keep theirs
    assert signed_in(app).get("/api/v1/summary").status_code == 200  # a new sign-in works


def test_a_new_password_ends_the_users_sessions_including_copied_cookies(app, store):
    client = signed_in(app)
    stolen = client.get_cookie(COOKIE).value
    accounts.set_password(store.client, "root@acme.test", "a brand new password")
    assert client.get("/api/v1/summary").status_code == 401
    assert replay(app, stolen).get("/api/v1/summary").status_code == 401
    assert login(app.test_client(), "root@acme.test").status_code == 401  # the old password
    fresh = app.test_client()
    assert login(fresh, "root@acme.test", "a brand new password").status_code == 302
    assert fresh.get("/api/v1/summary").status_code == 200


def test_ending_sessions_keeps_the_rest_of_the_account(store):
    accounts.create_user(store.client, "root@acme.test", "acme", "superadmin", PASSWORD)
    before = accounts.get_user(store.client, "root@acme.test")
    accounts.end_sessions(store.client, "root@acme.test")
    accounts.set_disabled(store.client, "root@acme.test")
    after = accounts.get_user(store.client, "root@acme.test")
    assert (after.org_id, after.role, after.password_hash) == (before.org_id, before.role,
                                                               before.password_hash)
    assert after.disabled and after.sessions_valid_after > before.sessions_valid_after == 0
    assert [u.email for u in accounts.list_users(store.client)] == ["root@acme.test"]
    with pytest.raises(accounts.AccountError, match="no user"):
        accounts.end_sessions(store.client, "nobody@acme.test")


def test_disabling_a_user_ends_sessions_and_tokens_for_good(app, store):
    client = signed_in(app)
    stolen = client.get_cookie(COOKIE).value
    token = accounts.create_token(store.client, "root@acme.test")
    accounts.set_disabled(store.client, "root@acme.test")
    accounts.set_disabled(store.client, "root@acme.test", False)  # enabled again later
    # The sessions and the token from before the disable stay dead.
    assert replay(app, stolen).get("/api/v1/summary").status_code == 401
    assert client.get("/api/v1/summary").status_code == 401
    assert app.test_client().get("/api/v1/summary", headers={
        "Authorization": f"Bearer {token}"}).status_code == 401
    assert signed_in(app).get("/api/v1/summary").status_code == 200  # a new sign-in works
    fresh = accounts.create_token(store.client, "root@acme.test")
    assert app.test_client().get("/api/v1/summary", headers={
        "Authorization": f"Bearer {fresh}"}).status_code == 200
    assert accounts.revoke_tokens(store.client, "root@acme.test") == 1
    assert app.test_client().get("/api/v1/summary", headers={
        "Authorization": f"Bearer {fresh}"}).status_code == 401
    assert accounts.revoke_tokens(store.client, "root@acme.test") == 0


def test_a_wrong_method_or_path_with_the_session_cookie_is_405_or_404_not_csrf(app):
    client = signed_in(app)
    r = client.put("/api/v1/events")
    assert r.status_code == 405 and r.get_json()["error"]["field"] == "method"
    r = client.delete("/api/v1/nothing-here")
    assert r.status_code == 404
    r = client.post("/audit/alerts/00000000-0000-0000-0000-000000000000/ack")  # a real route
    assert r.status_code == 400 and "csrf" in r.get_data(as_text=True).lower()

"""The audit page in a real browser: Debian's Chromium driven by Playwright
(no browser is downloaded). Screenshots go to test-artifacts/."""

import os
import shutil
import time

import pytest

from upmetr_audit.collector import schema
from upmetr_audit.collector.processors import to_batch
from upmetr_audit.web import accounts
from upmetr_audit.web.server import WebServer

from helpers import audit_attrs, otlp_request

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "test-artifacts")
PASSWORD = "correct horse battery"
CHANGES = '{"interval": {"before": 60, "after": 30}}'

pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM) and not os.environ.get("CI"),
                                reason="Debian chromium is not installed (CI installs it)")


def seed(store, records):
    batch = to_batch(otlp_request(records))
    store.client.insert(schema.INGEST_TABLE, batch.rows, column_names=schema.INGEST_COLUMNS)


@pytest.fixture
def web(store, tmp_path):
    # 60 events: 40 successful logins, 12 failed logins, 8 monitor updates, the last hour
    now = time.time_ns()
    records = [{"attrs": audit_attrs(**{"upmetr.org.id": "acme", "upmetr.audit.status": "success",
                                        "user.email": f"u{i}@acme.test"}),
                "time_unix_nano": now - i * 10**9} for i in range(40)]
    records += [{"attrs": audit_attrs(**{"upmetr.org.id": "acme", "user.email": "eve@acme.test"}),
                 "time_unix_nano": now - (40 + i) * 10**9} for i in range(12)]
    records += [{"event_name": "upmetr.audit.monitor.update",
                 "attrs": audit_attrs(**{"upmetr.org.id": "acme", "upmetr.audit.status": "success",
                                         "upmetr.resource.type": "monitor",
                                         "upmetr.resource.id": f"mon-{i}",
                                         "upmetr.audit.changes": CHANGES}),
                 "time_unix_nano": now - (52 + i) * 10**9} for i in range(8)]
    seed(store, records)
    accounts.create_user(store.client, "root@acme.test", "acme", "superadmin", PASSWORD)
    accounts.create_user(store.client, "viewer@acme.test", "acme", "viewer", PASSWORD)
    accounts.set_module(store.client, "acme", accounts.AUDIT_MODULE, True)
    server = WebServer(store.client, "127.0.0.1", 0, str(tmp_path))
    server.start()
    server.store = store
    yield f"http://127.0.0.1:{server.port}"
    server.shutdown()


@pytest.fixture
def page(tmp_path):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        context = browser.new_context(accept_downloads=True)
        yield context.new_page()
        context.close()
        browser.close()


def shot(page, name):
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, f"{name}.png"), full_page=True)


def sign_in(page, web, email):
    page.goto(web + "/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def test_superadmin_signs_in_and_out(web, page):
    sign_in(page, web, "root@acme.test")
    page.get_by_role("heading", name="Audit logs").wait_for()
    shot(page, "audit-page")
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("heading", name="Sign in").wait_for()


def test_wrong_password_shows_one_generic_message(web, page):
    page.goto(web + "/login")
    page.get_by_label("Email").fill("root@acme.test")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text() == "Invalid email or password."


def test_viewer_sees_403(web, page):
    sign_in(page, web, "viewer@acme.test")
    alert = page.get_by_role("alert")
    assert "Only Superadmins can view audit logs" in alert.inner_text()
    shot(page, "viewer-403")


def rows(page):
    return page.locator("table.events tbody tr")


def test_cards_filters_paging_detail_export_in_the_browser(web, page, store):
    sign_in(page, web, "root@acme.test")
    assert page.locator("[data-card=total]").inner_text() == "60"
    assert page.locator("[data-card=logins]").inner_text() == "40"
    assert page.locator("[data-card=failed]").inner_text() == "12"
    assert rows(page).count() == 25
    page.wait_for_load_state("domcontentloaded")  # deferred app.js has run
    stamp = rows(page).first.locator("time")  # app.js: the local time as a tooltip
    assert stamp.get_attribute("title") not in ("", stamp.get_attribute("datetime"))
    shot(page, "audit-page")

    # choose an action and a status
    page.get_by_label("Action").select_option("auth.login")
    page.get_by_label("Status").select_option("failure")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**status=failure**")
    assert rows(page).count() == 12
    assert "action=auth.login" in page.url  # the URL holds the filter state

    # per page 50, then page through everything
    page.get_by_role("link", name="Clear all").click()
    page.get_by_label("Per Page").select_option("50")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**per_page=50**")
    assert rows(page).count() == 50
    page.get_by_role("link", name="Older »").click()
    page.wait_for_url("**cursor=**")
    assert rows(page).count() == 10
    assert page.get_by_role("link", name="Older »").count() == 0

    # Clear all resets the URL
    page.get_by_role("link", name="Clear all").click()
    page.wait_for_url(web + "/audit")
    assert rows(page).count() == 25

    # Refresh shows an event that was just written
    seed(store, [{"attrs": audit_attrs(**{"upmetr.org.id": "acme", "user.email": "new@acme.test"})}])
    page.get_by_role("link", name="Refresh").click()
    page.wait_for_load_state()
    assert rows(page).first.locator("td").first.inner_text() == "new@acme.test"

    # the detail view shows the changes as a before/after diff
    page.get_by_label("Action").select_option("monitor.update")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**action=monitor.update**")
    rows(page).first.get_by_role("link").click()
    page.get_by_role("heading", name="Changes").wait_for()
    assert page.locator("td.before").first.inner_text() == "60"
    assert page.locator("td.after").first.inner_text() == "30"
    shot(page, "detail")

    # download an export of the current filter
    page.go_back()
    with page.expect_download() as download:
        page.get_by_role("link", name="CSV").click()
    lines = open(download.value.path()).read().strip().splitlines()
    assert len(lines) == 1 + 8 and "monitor.update" in lines[1]

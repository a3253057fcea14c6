"""The audit page in a real browser: Debian's Chromium driven by Playwright
(no browser is downloaded). Screenshots go to test-artifacts/."""

import os
import shutil

import pytest

from upmetr_audit.web import accounts
from upmetr_audit.web.server import WebServer

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "test-artifacts")
PASSWORD = "correct horse battery"

pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM) and not os.environ.get("CI"),
                                reason="Debian chromium is not installed (CI installs it)")


@pytest.fixture
def web(store, tmp_path):
    accounts.create_user(store.client, "root@acme.test", "acme", "superadmin", PASSWORD)
    accounts.create_user(store.client, "viewer@acme.test", "acme", "viewer", PASSWORD)
    accounts.set_module(store.client, "acme", accounts.AUDIT_MODULE, True)
    server = WebServer(store.client, "127.0.0.1", 0, str(tmp_path))
    server.start()
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

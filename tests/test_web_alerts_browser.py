"""A demo brute-force attack, sent through the real shipper and collector,
raises a banner in Chromium; its link filters the table to exactly the
attack's failed logins; acknowledging it clears the banner."""

import time

from upmetr_audit.collector.detector import Detector, current_alerts
from upmetr_audit.shipper import AuditLogger
from upmetr_audit.shipper.demo import DemoTraffic
from upmetr_audit.web import accounts
from upmetr_audit.web.server import WebServer

from helpers import TOKEN, count, wait_for
from test_web_browser import PASSWORD, page, shot, sign_in  # noqa: F401  (fixtures)


def test_banner_during_a_demo_attack_and_its_link(store, collector, tmp_path, page):  # noqa: F811
    audit = AuditLogger(service_name="upmetr-demo", endpoint=collector.logs_url,
                        spool_dir=str(tmp_path / "spool"), headers={"authorization": f"Bearer {TOKEN}"})
    demo = DemoTraffic(audit, orgs=1, seed=3)
    sent = demo.attack("brute_force", time.time_ns() - 12 * 60 * 10**9)
    audit.shutdown(timeout_s=30)
    wait_for(lambda: count(store) == sent)
    Detector(store.client).run_once()
    [alert] = [a for a in current_alerts(store.client) if a["rule"] == "user_brute_force"]
    org, victim = alert["org_id"], alert["key"]

    accounts.create_user(store.client, "root@acme.example", org, "superadmin", PASSWORD)
    accounts.set_module(store.client, org, accounts.AUDIT_MODULE, True)
    server = WebServer(store.client, "127.0.0.1", 0, str(tmp_path))
    server.start()
    try:
        web = f"http://127.0.0.1:{server.port}"
        sign_in(page, web, "root@acme.example")
        banner = page.locator(".banner[data-alert=user_brute_force]")
        banner.wait_for()
        text = banner.inner_text()
        assert "Brute force on one account" in text and victim in text
        assert f"{alert['value']:g} failed attempts in 15 min" in text
        firing = len(current_alerts(store.client, org_id=org, open_only=True))   # 1, or 2 with per-IP
        assert page.locator("[data-card=spike]").inner_text().startswith(f"spike: {firing} alert")
        shot(page, "alert-banner")

        banner.get_by_role("link", name="Show these events").click()
        page.wait_for_load_state()
        cells = page.locator("table.events tbody tr")
        n = cells.count()
        assert n == min(int(alert["value"]), 25)
        for i in range(n):
            row = cells.nth(i).inner_text()
            assert victim in row and "failure" in row and "Login" in row
        assert page.locator("#f-user").input_value() == victim
        assert page.locator("#f-status").input_value() == "failure"
        shot(page, "alert-filtered-table")

        page.goto(web + "/audit/alerts")
        for _ in range(firing):
            page.get_by_role("button", name="Acknowledge").first.click()
            page.wait_for_load_state()
        assert "acknowledged by root@acme.example" in page.content()
        page.goto(web + "/audit")
        assert page.locator(".banner").count() == 0
    finally:
        server.shutdown()

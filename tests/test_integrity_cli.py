"""The integrity commands end to end, on a real embedded store in a temp dir."""

import json
import os
import stat
import time

import pytest
from click.testing import CliRunner

from upmetr_audit.collector import report
from upmetr_audit.collector import store as store_mod
from upmetr_audit.collector.cli import cli

from integrity_helpers import HOUR, MIN, event, insert


def run(*args, ok=True):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if ok is not None:
        assert (result.exit_code == 0) == ok, (result.output, result.exception)
    return result


@pytest.fixture
def data(tmp_path):
    """A data dir with a key and events of three hours ago, sealed."""
    d = str(tmp_path / "var")
    run("keys", "generate", "--data-dir", d)
    now = time.time_ns() // 1000
    store = store_mod.open_store(f"chdb://{d}/clickhouse")
    try:
        store_mod.migrate(store.client)
        ids = insert(store.client, [
            event(received_us=now - 3 * HOUR, user="ana@example.com"),
            event(received_us=now - 3 * HOUR + MIN, user="bo@example.com"),
            event(org="org-b", received_us=now - 2 * HOUR, user="cy@example.com"),
        ])
    finally:
        store.close()
    out = run("seal", "--once", "--data-dir", d).output
    assert "sealed" in out and "of 2 orgs" in out
    return d, ids


def tamper(d, sql):
    store = store_mod.open_store(f"chdb://{d}/clickhouse")
    try:
        store.client.command(sql + " SETTINGS mutations_sync = 2")
    finally:
        store.close()


def test_keys_generate_rotate_export(tmp_path):
    d = str(tmp_path)
    out = run("keys", "generate", "--data-dir", d).output
    assert "generated signing key" in out
    assert stat.S_IMODE(os.stat(f"{d}/keys/signing.key").st_mode) == 0o600
    assert "already holds a keyring" in run("keys", "generate", "--data-dir", d, ok=False).output
    first = json.loads(run("keys", "export-public", "--data-dir", d).output)
    run("keys", "rotate", "--data-dir", d)
    ring = json.loads(run("keys", "export-public", "--data-dir", d).output)
    assert len(ring["keys"]) == 2 and ring["active"] != first["active"]
    assert [k["retired_at_us"] is not None for k in ring["keys"]] == [True, False]
    assert stat.S_IMODE(os.stat(f"{d}/keys/signing.key").st_mode) == 0o600
    assert "BEGIN" not in json.dumps(ring)  # no private material


def test_without_keys_verify_says_how_to_make_them(tmp_path):
    out = run("verify", "--data-dir", tmp_path, ok=False).output
    assert "Error: no signing keys" in out and "keys generate" in out


def test_verify_passes_then_names_a_deleted_event(data):
    d, ids = data
    result = run("verify", "--data-dir", d)
    assert result.output.splitlines()[-1].startswith("OK: ")
    parsed = json.loads(run("verify", "--data-dir", d, "--json").output)
    assert parsed["ok"] is True and parsed["events_checked"] == 3
    tamper(d, f"ALTER TABLE audit.audit_events DELETE WHERE event_id = '{ids[1]}'")
    result = run("verify", "--data-dir", d, ok=False)
    assert result.exit_code == 1
    assert "missing events" in result.output and ids[1] in result.output
    assert "INTEGRITY PROBLEM" in result.output.splitlines()[-1]
    assert run("verify", "--data-dir", d, "--org", "org-b").exit_code == 0
    assert "not an ISO 8601 time" in run("verify", "--data-dir", d, "--since", "yesterday",
                                          ok=False).output


def test_proof_round_trip_offline(data, tmp_path):
    d, ids = data
    proof = run("proof", ids[0], "--data-dir", d).output
    (tmp_path / "proof.json").write_text(proof)
    run("keys", "export-public", "--data-dir", d, "--out", tmp_path / "pub.json")
    out = run("verify-proof", tmp_path / "proof.json", "--public-key", tmp_path / "pub.json").output
    assert out.startswith("valid: event " + ids[0])
    bad = json.loads(proof)
    bad["event"]["action"] = "auth.logout"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    out = run("verify-proof", tmp_path / "bad.json", "--public-key", tmp_path / "pub.json", ok=False).output
    assert "Error: the event's fields do not lead to the sealed Merkle root" in out
    (tmp_path / "junk.json").write_text("{")
    assert "is not JSON" in run("verify-proof", tmp_path / "junk.json", "--public-key",
                                tmp_path / "pub.json", ok=False).output
    assert "no event with id" in run("proof", "nope", "--data-dir", d, ok=False).output


def test_erase_dry_run_unknown_and_real(data):
    d, _ = data
    out = run("erase", "--org", "org-a", "--user-email", "ana@example.com", "--dry-run",
              "--data-dir", d).output
    assert "would erase 1 events" in out
    out = run("erase", "--org", "org-a", "--user-email", "zed@example.com", "--data-dir", d,
              ok=False).output
    assert "refusing to erase an unknown person" in out
    out = run("erase", "--org", "org-a", "--user-email", "ana@example.com", "--actor", "dpo@example.com",
              "--data-dir", d).output
    assert "erased 1 events" in out and "pseudonym erased-" in out
    result = run("verify", "--data-dir", d, "-v")
    assert "erased" in result.output and result.output.splitlines()[-1].startswith("OK: ")


def test_a_locked_store_says_how_to_run_the_command(data):
    d, _ = data
    holder = store_mod.open_store(f"chdb://{d}/clickhouse")
    try:
        out = run("verify", "--data-dir", d, ok=False).output
    finally:
        holder.close()
    assert "is locked by process" in out and "stop `upmetr-audit serve`" in out


def test_monthly_report_is_escaped_signed_and_checkable(data, tmp_path):
    d, _ = data
    now = time.time_ns() // 1000
    store = store_mod.open_store(f"chdb://{d}/clickhouse")
    try:
        insert(store.client, [
            event(received_us=now - 2 * HOUR, user="<script>alert(1)</script>@x", status="failure"),
            event(received_us=now - 2 * HOUR, action="mfa.disable", user="ana@example.com"),
            event(received_us=now - 2 * HOUR, action="agent.token_regenerate", resource_type="agent",
                  resource_id="agent-7"),
            event(received_us=now - 2 * HOUR, action="team.user_update", resource_type="user",
                  resource_id="u-9", changes='{"role": {"before": "viewer", "after": "admin"}}'),
        ])
    finally:
        store.close()
    month = time.strftime("%Y-%m", time.gmtime((now - 2 * HOUR) / 1e6))
    out = run("report", "--org", "org-a", "--month", month, "--out", tmp_path / "r", "--data-dir", d).output
    assert "signed" in out
    html = (tmp_path / "r" / f"audit-review-org-a-{month}.html").read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;@x" in html
    for text in ("mfa.disable", "agent.token_regenerate", "team.user_update", "&#34;admin&#34;",
                 "failed logins"):
        assert text in html, text
    assert "<link" not in html and "src=" not in html  # self-contained
    run("keys", "export-public", "--data-dir", d, "--out", tmp_path / "pub.json")
    manifest = tmp_path / "r" / f"audit-review-org-a-{month}.json"
    assert run("verify-report", manifest, "--public-key", tmp_path / "pub.json").output.startswith("valid:")
    html_file = tmp_path / "r" / f"audit-review-org-a-{month}.html"
    html_file.write_text(html.replace("mfa.disable", "mfa.enable"))
    out = run("verify-report", manifest, "--public-key", tmp_path / "pub.json", ok=False).output
    assert "was changed after it was signed" in out
    assert [r["month"] for r in report.list_reports(str(tmp_path / "r"))] == [month]
    assert "is not YYYY-MM" in run("report", "--org", "org-a", "--month", "2026-13", "--data-dir", d,
                                   ok=False).output
    assert "unknown org '../x'" in run("report", "--org", "../x", "--month", month, "--data-dir", d,
                                       ok=False).output


def test_verify_benchmark_runs_at_tiny_size():
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, "bench", "verify.py"), "--events", "3000",
                        "--days", "1", "--json"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    # every org from its first event on: at most 24 windows each (measure() fails unless verify passed)
    assert result["events"] == 3000 and 0 < result["windows"] <= 24 * 50
    assert result["verify_events_per_s"] > 0

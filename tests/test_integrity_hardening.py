"""Tamper evidence under a running sealer, hostile inputs and unusable paths.

Real parts: an embedded store in a temp dir, the keys and digest files on
disk, the CLI through click's CliRunner or a subprocess.
"""

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
from click.testing import CliRunner

from upmetr_audit.collector import digests, keys, leafhash, sealing
from upmetr_audit.collector import store as store_mod
from upmetr_audit.collector import verify as verify_mod
from upmetr_audit.collector.cli import cli
from upmetr_audit.collector.integrity_job import IntegrityJob

from integrity_helpers import HOUR, MIN, T0, event, insert, sealed_data_dir

EXE = os.path.join(os.path.dirname(sys.executable), "upmetr-audit")
#: Three hours of events sealed "now": windows T0, T0+1h, T0+2h are due.
NOW = T0 + 3 * HOUR + 10 * MIN


def run(*args, ok=True):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if ok is not None:
        assert (result.exit_code == 0) == ok, (result.output, result.exception)
    return result


def one_line_error(result, *texts):
    """A clean failure: exit 1, a single ``Error: ...`` line holding ``texts``."""
    assert result.exit_code == 1 and not isinstance(result.exception, (OSError, RecursionError,
                                                                        OverflowError)), result.exception
    assert result.output.count("\n") == 1 and result.output.startswith("Error: "), result.output
    for text in texts:
        assert text in result.output, (text, result.output)


@pytest.fixture
def ring_dir(tmp_path):
    d = str(tmp_path / "keys")
    keys.generate(d, T0 - HOUR)
    return d


def statuses(result, org="org-a"):
    """``{hour after T0: status}`` of the windows of ``org`` that are not plain valid."""
    return {(w.window_start_us - T0) // HOUR: w.status for w in result.windows if w.org_id == org}


# -- 1. a key rotation while the sealer runs ------------------------------------


def test_serve_signs_with_the_new_key_after_a_rotation(store, tmp_path, ring_dir):
    d = str(tmp_path)
    insert(store.client, [event(received_us=T0 + h * HOUR + 10 * MIN) for h in range(3)])
    job = IntegrityJob(store.client, d)  # what serve builds at start
    job.run_once(T0 + HOUR + 6 * MIN)
    _, new = keys.rotate(ring_dir, T0 + HOUR + 30 * MIN)  # `keys rotate` while serve runs
    record = job.run_once(T0 + 3 * HOUR + 6 * MIN)
    assert record["ok"], record
    result = verify_mod.verify(store.client, keys.load(ring_dir, private=False), f"{d}/digests",
                               T0 + 3 * HOUR + 6 * MIN)
    assert result.ok and result.counts == {"valid": 3}, result.windows
    used = store.client.query("SELECT toUnixTimestamp64Micro(window_start), key_id FROM audit.audit_seals "
                              "ORDER BY window_start").result_rows
    assert [k for _, k in used][1:] == [new, new]


def test_a_retired_key_never_signs(ring_dir):
    ring = keys.load(ring_dir)
    active = ring.keys[ring.active]
    ring.keys[ring.active] = keys.PublicKey(active.key_id, active.raw, active.created_at_us, T0)
    with pytest.raises(keys.KeyFileError, match="is retired"):
        ring.sign(sealing.SEAL_DOMAIN, b"\0" * 32)


# -- 2. back-dated events of a new org ------------------------------------------


def test_a_new_org_is_not_sealed_before_the_horizon(store, tmp_path, ring_dir):
    client, ring, dd = store.client, keys.load(ring_dir), str(tmp_path / "digests")
    insert(client, [event(received_us=T0 + 10 * MIN), event(received_us=T0 + 2 * HOUR)])
    assert len(sealing.seal_once(client, ring, dd, NOW).seals) == 3  # first run: from the first event
    # Someone with database access adds an org whose events look three hours old,
    # and a genuine new org starts sending now.
    insert(client, [event(org="org-new", received_us=T0 + 20 * MIN),
                    event(org="org-late", received_us=T0 + 3 * HOUR + 20 * MIN)])
    run = sealing.seal_once(client, ring, dd, NOW + HOUR)
    assert run.backdated == ["org-new"]
    first = dict(client.query("SELECT org_id, toUnixTimestamp64Micro(min(window_start)) "
                              "FROM audit.audit_seals GROUP BY org_id").result_rows)
    assert first["org-new"] == T0 + 3 * HOUR and first["org-late"] == T0 + 3 * HOUR
    result = verify_mod.verify(client, ring, dd, NOW + HOUR)
    assert not result.ok and statuses(result, "org-new") == {0: "extra events"}
    assert statuses(result, "org-late") == {} and statuses(result) == {}


def test_serve_reports_a_back_dated_new_org_in_the_same_tick(store, tmp_path, ring_dir):
    insert(store.client, [event(received_us=T0 + 10 * MIN), event(received_us=T0 + 2 * HOUR)])
    job = IntegrityJob(store.client, str(tmp_path))
    assert job.run_once(NOW)["ok"]
    insert(store.client, [event(org="org-new", received_us=T0 + 20 * MIN)])
    record = job.run_once(NOW + HOUR)  # incremental otherwise: it would not look back at T0
    assert not record["ok"]
    assert [(w["org_id"], w["status"]) for w in record["windows"]] == [("org-new", "extra events")]


# -- 3. keys are made only by `keys generate` and serve's first run ---------------


def test_seal_never_makes_keys_nor_folders(tmp_path):
    d = tmp_path / "none" / "x"
    one_line_error(run("seal", "--once", "--data-dir", d, ok=None), "no signing keys", "keys generate")
    assert not (tmp_path / "none").exists()


def test_a_private_key_without_its_keyring_is_never_overwritten(tmp_path, ring_dir):
    d = str(tmp_path)
    private = open(f"{ring_dir}/signing.key", "rb").read()
    os.remove(f"{ring_dir}/keyring.json")
    for args in (("seal", "--once"), ("keys", "generate")):
        one_line_error(run(*args, "--data-dir", d, ok=None), "holds signing.key but no keyring.json")
    with pytest.raises(keys.KeyFileError, match="refusing to make a new key"):
        keys.load_or_generate(ring_dir, T0)  # serve
    assert open(f"{ring_dir}/signing.key", "rb").read() == private
    assert sorted(os.listdir(ring_dir)) == ["signing.key"]
    os.rename(f"{ring_dir}/signing.key", tmp_path / "signing.key.bak")
    assert keys.load_or_generate(ring_dir, T0).can_sign  # serve's first run: an empty keys folder


# -- 4. the horizon is believed only from signed seals, and bounded ----------------


@pytest.fixture
def sealed(store, tmp_path, ring_dir):
    insert(store.client, [event(received_us=T0 + 10 * MIN), event(received_us=T0 + 2 * HOUR),
                          event(org="org-b", received_us=T0 + 20 * MIN)])
    ring, dd = keys.load(ring_dir), str(tmp_path / "digests")
    assert len(sealing.seal_once(store.client, ring, dd, NOW).seals) == 6
    return store.client, ring, dd


def append_forged_line(dd, **fields):
    """A copy of a real digest line with other fields, its signature no longer matching."""
    name = sorted(os.listdir(dd))[0]
    with open(os.path.join(dd, name)) as f:
        line = json.loads(f.readline())
    line.update(fields)
    with open(os.path.join(dd, name), "a") as f:
        f.write(digests.dumps(line) + "\n")
    return name


def test_a_forged_digest_line_ahead_of_now_raises_no_false_alarm(sealed):
    client, ring, dd = sealed
    ws = NOW // HOUR * HOUR + 24 * HOUR
    name = append_forged_line(dd, window_start_us=ws, window_end_us=ws + HOUR)
    result = verify_mod.verify(client, ring, dd, NOW)
    assert result.windows == [] and result.through_us == T0 + 3 * HOUR
    assert result.problems == [] and list(result.org_problems) == ["org-a"]  # org-a's line
    [problem] = result.other_problems
    assert problem.startswith(f"{name} line 7: ") and "has not begun" in problem


def test_an_unsigned_digest_line_is_one_problem_not_a_missing_seal(sealed):
    client, ring, dd = sealed
    append_forged_line(dd, org_id="org-z")
    result = verify_mod.verify(client, ring, dd, NOW)
    assert result.windows == [] and list(result.org_problems) == ["org-z"]
    [problem] = result.other_problems
    assert "does not match its own hash" in problem and "not believed" in problem


def test_verify_ends_despite_a_far_future_line_or_range(tmp_path):
    d = str(tmp_path / "var")
    now = time.time_ns() // 1000
    sealed_data_dir(d, [event(received_us=now - 3 * HOUR)])
    append_forged_line(f"{d}/digests", window_start_us=253402214400000000 - HOUR,
                       window_end_us=253402214400000000)  # 9999-12-31
    for args in ([], ["--since", "1970-01-02", "--until", "9999-12-31"]):
        r = subprocess.run([EXE, "verify", "--data-dir", d, "--json", *args], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 1, r.stderr
        out = json.loads(r.stdout)
        assert out["windows"] == [] and out["problems"] == [], out
        assert [len(p) for p in out["org_problems"].values()] == [1], out
        assert 0 < out["through_us"] <= now


# -- 5. a digest line cut short ------------------------------------------------------


def test_a_line_cut_short_stays_one_unreadable_line(tmp_path):
    dd = str(tmp_path)
    digests.append(dd, [(T0, {"type": "seal", "n": 1})])
    name = digests.file_for(T0)
    with open(os.path.join(dd, name), "ab") as f:
        f.write(b'{"type":"seal","n":')  # a crash in the middle of a write
    digests.append(dd, [(T0, {"type": "seal", "n": 3})])
    lines = list(digests.read(dd))
    assert [ln.obj for ln in lines] == [{"type": "seal", "n": 1}, None, {"type": "seal", "n": 3}]
    assert lines[1].error.startswith(f"{name} line 2 is not a digest record")


# -- 6. unusable paths are one line, not a traceback --------------------------------


def test_unusable_paths_are_one_clean_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    one_line_error(run("db", "migrate", "--data-dir", afile, ok=None), f"{afile}/clickhouse: Not a directory")
    one_line_error(run("keys", "generate", "--data-dir", afile, ok=None), f"{afile}/keys: Not a directory")
    one_line_error(run("db", "migrate", "--clickhouse-url", f"chdb://{afile}", ok=None),
                   f"{afile}: File exists")
    d = tmp_path / "var"
    sealed_data_dir(str(d), [])
    store = store_mod.open_store(f"chdb://{d}/clickhouse")
    try:
        insert(store.client, [event(received_us=time.time_ns() // 1000 - 3 * HOUR)])
    finally:
        store.close()
    (d / "digests").write_text("")  # nothing was sealed yet, so there is no folder
    one_line_error(run("seal", "--once", "--data-dir", d, ok=None), f"{d}/digests: File exists")
    os.remove(d / "digests")
    one_line_error(run("report", "--org", "org-a", "--month", "2026-10", "--out", afile / "r",
                       "--data-dir", d, ok=None), f"{afile}/r: Not a directory")


# -- 7. malformed proofs -------------------------------------------------------------


def test_malformed_proofs_are_reported_not_raised(tmp_path, ring_dir):
    event_fields = {name: "" for name, _ in leafhash.PUBLIC_FIELDS}
    event_fields.update(event_id=str(uuid.uuid4()), org_id="org-a", timestamp_us=2**70, received_at_us=T0)
    huge = {"format": "upmetr-audit-proof/1", "leaf_version": leafhash.LEAF_VERSION, "event": event_fields,
            "personal": {"erased": True, "commitment": "00" * 32}, "path": [], "seal": {}}
    (tmp_path / "huge.json").write_text(json.dumps(huge))
    (tmp_path / "deep.json").write_text("[" * 100_000)
    ring = f"{ring_dir}/keyring.json"
    one_line_error(run("verify-proof", tmp_path / "huge.json", "--public-key", ring, ok=None),
                   "malformed proof: OverflowError")
    one_line_error(run("verify-proof", tmp_path / "deep.json", "--public-key", ring, ok=None),
                   "malformed proof: ", "nested too deeply")


# -- 8, 9. unknown orgs; org ids with any character ---------------------------------


@pytest.fixture
def data(tmp_path):
    d = str(tmp_path / "var")
    now = time.time_ns() // 1000
    sealed_data_dir(d, [event(received_us=now - 3 * HOUR), event(org="acme:eu", received_us=now - 3 * HOUR),
                        event(org="../x", received_us=now - 3 * HOUR)])
    return d, time.strftime("%Y-%m", time.gmtime((now - 3 * HOUR) / 1e6))


def test_an_unknown_org_is_an_error(data, tmp_path):
    d, month = data
    one_line_error(run("verify", "--data-dir", d, "--org", "nope", ok=None), "unknown org 'nope'")
    one_line_error(run("report", "--org", "nope", "--month", month, "--out", tmp_path / "r",
                       "--data-dir", d, ok=None), "unknown org 'nope'")
    assert not (tmp_path / "r").exists()
    assert run("verify", "--data-dir", d, "--org", "acme:eu").output.startswith("OK: ")


@pytest.mark.parametrize("org", ["acme:eu", "../x"])
def test_a_report_for_any_org_id_gets_a_safe_file_name(data, tmp_path, org):
    d, month = data
    out = tmp_path / "r"
    run("report", "--org", org, "--month", month, "--out", out, "--data-dir", d)
    names = sorted(os.listdir(out))
    assert len(names) == 2 and all(n.startswith("audit-review-") and "/" not in n for n in names)
    assert ":" not in "".join(names)
    run("keys", "export-public", "--data-dir", d, "--out", tmp_path / "pub.json")
    manifest = out / [n for n in names if n.endswith(".json")][0]
    assert json.loads(manifest.read_text())["org_id"] == org
    assert run("verify-report", manifest, "--public-key", tmp_path / "pub.json").output.startswith("valid:")
    one_line_error(run("report", "--org", "", "--month", month, "--data-dir", d, ok=None),
                   "must not be empty")


# -- 10. events checked in a range ---------------------------------------------------


def test_events_checked_counts_only_the_range(sealed):
    client, ring, dd = sealed
    result = verify_mod.verify(client, ring, dd, NOW, since_us=T0 + 2 * HOUR, until_us=T0 + 3 * HOUR)
    assert result.ok and result.events_checked == 1
    assert verify_mod.verify(client, ring, dd, NOW).events_checked == 3

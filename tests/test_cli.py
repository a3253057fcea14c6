"""The upmetr-audit command line: help, settings precedence, serve end to end."""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request

import click
import pytest
from click.testing import CliRunner

from upmetr_audit.collector import schema
from upmetr_audit.collector import store as store_mod
from upmetr_audit.collector.cli import cli
from upmetr_audit.collector.settings import SETTINGS

EXE = os.path.join(os.path.dirname(sys.executable), "upmetr-audit")


def all_commands(group=cli, path=()):
    yield path, group
    if isinstance(group, click.Group):
        for name, cmd in group.commands.items():
            yield from all_commands(cmd, (*path, name))


@pytest.mark.parametrize("path", [p for p, _ in all_commands()], ids=lambda p: " ".join(p) or "-")
def test_every_command_has_help(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_every_option_has_an_upmetr_audit_env_var():
    for path, cmd in all_commands():
        for p in cmd.params:
            if isinstance(p, click.Option) and p.name not in ("help", "version"):
                assert p.envvar == f"UPMETR_AUDIT_{p.name.upper()}", (path, p.name)


def test_required_settings_exist_with_their_defaults():
    assert SETTINGS["data_dir"].default == "./var"
    assert SETTINGS["otlp_http_addr"].default == "127.0.0.1:4318"
    assert SETTINGS["otlp_grpc_addr"].default == "127.0.0.1:4317"
    assert SETTINGS["web_addr"].default == "127.0.0.1:8080"
    for name in ("clickhouse_url", "ingest_tokens"):
        assert SETTINGS[name].envvar == f"UPMETR_AUDIT_{name.upper()}"


def store_path(output: str) -> str:
    return re.search(r"store: chdb://(\S+)", output).group(1)


def test_settings_precedence_cli_over_env_over_config_file(tmp_path, monkeypatch):
    cfg = tmp_path / "audit.toml"
    cfg.write_text(f'data_dir = "{tmp_path}/from-config"\n')
    runner = CliRunner()
    r = runner.invoke(cli, ["--config", str(cfg), "db", "check"])
    assert store_path(r.output) == f"{tmp_path}/from-config/clickhouse"
    monkeypatch.setenv("UPMETR_AUDIT_DATA_DIR", f"{tmp_path}/from-env")
    r = runner.invoke(cli, ["--config", str(cfg), "db", "check"])
    assert store_path(r.output) == f"{tmp_path}/from-env/clickhouse"
    r = runner.invoke(cli, ["--config", str(cfg), "db", "check", "--data-dir", f"{tmp_path}/cli"])
    assert store_path(r.output) == f"{tmp_path}/cli/clickhouse"


@pytest.mark.parametrize("content,message", [
    ('data_dri = "x"\n', "unknown setting(s) data_dri"),
    ("data_dir = \n", "not valid TOML"),
])
def test_bad_config_file_is_a_usage_error(tmp_path, content, message):
    cfg = tmp_path / "audit.toml"
    cfg.write_text(content)
    r = CliRunner().invoke(cli, ["--config", str(cfg), "db", "check"])
    assert r.exit_code == 2 and message in r.output


def test_migrate_then_check_reports_version_and_retention(tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["db", "check", "--data-dir", str(tmp_path)])
    assert r.exit_code == 1 and "db migrate" in r.output
    r = runner.invoke(cli, ["db", "migrate", "--data-dir", str(tmp_path)])
    assert r.exit_code == 0 and "applied migrations 1, 2, 3" in r.output
    r = runner.invoke(cli, ["db", "migrate", "--data-dir", str(tmp_path)])
    assert "up to date" in r.output
    r = runner.invoke(cli, ["db", "check", "--data-dir", str(tmp_path)])
    assert r.exit_code == 0
    assert f"schema version: {schema.LATEST_VERSION}" in r.output
    assert re.search(r"audit_events\s+MergeTree\s+rows=0\s+retention=indefinite", r.output)


def test_collector_without_tokens_refuses_to_start(tmp_path):
    r = CliRunner().invoke(cli, ["collector", "--data-dir", str(tmp_path)])
    assert r.exit_code == 1 and "--insecure-no-auth" in r.output


@pytest.mark.parametrize("addr", ["4318", "localhost:", "host:99999", "host:http"])
def test_bad_listen_address_is_an_error(tmp_path, addr):
    r = CliRunner().invoke(cli, ["collector", "--data-dir", str(tmp_path), "--insecure-no-auth",
                                 "--otlp-http-addr", addr])
    assert r.exit_code == 1 and "invalid address" in r.output


def test_serve_on_a_busy_web_port_names_it_and_shows_no_endpoint_or_token(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(
            [EXE, "serve", "--data-dir", str(tmp_path), "--otlp-http-addr", "127.0.0.1:0",
             "--otlp-grpc-addr", "127.0.0.1:0", "--web-addr", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr
    assert "OTLP/HTTP" not in r.stdout and "Bearer" not in r.stdout


def test_serve_with_a_keys_folder_it_must_not_overwrite_fails_before_opening_the_store(tmp_path):
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    (keys_dir / "signing.key").write_text("a key whose keyring.json was lost\n")
    r = subprocess.run(
        [EXE, "serve", "--data-dir", str(tmp_path), "--otlp-http-addr", "127.0.0.1:0",
         "--otlp-grpc-addr", "127.0.0.1:0", "--web-addr", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "holds signing.key but no keyring.json" in r.stderr
    # Nothing was started or shown: no store, no superadmin password, no endpoint.
    assert r.stdout == ""
    assert not (tmp_path / "clickhouse").exists()
    assert (keys_dir / "signing.key").read_text() == "a key whose keyring.json was lost\n"


def test_serve_demo_end_to_end_then_lock_then_clean_shutdown(tmp_path):
    proc = subprocess.Popen(
        [EXE, "serve", "--demo", "--data-dir", str(tmp_path), "--otlp-http-addr", "127.0.0.1:0",
         "--otlp-grpc-addr", "127.0.0.1:0", "--web-addr", "127.0.0.1:0",
         "--summary-interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killer = threading.Timer(120, proc.kill)
    killer.start()
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            m = re.search(r"accepted=(\d+)", line)
            if m and int(m.group(1)) > 0:
                break
        out = "".join(seen)
        assert re.search(r"OTLP/HTTP  http://127\.0\.0\.1:\d+/v1/logs", out), out
        assert "send with  Authorization: Bearer " in out
        web = re.search(r"web        (http://localhost:\d+/)", out).group(1)
        login = re.search(r"login      (\S+) / (\S+)   \(shown once", out)
        assert login.group(1) == "superadmin@upmetr.local" and len(login.group(2)) >= 10
        page = urllib.request.urlopen(web + "login", timeout=30)
        assert page.status == 200 and b"Sign in" in page.read()
        token_file = tmp_path / "ingest-token"
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"

        # While serve runs, a second process gets one clear line naming the holder.
        r = subprocess.run([EXE, "db", "check", "--data-dir", str(tmp_path)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1
        assert r.stderr.strip().count("\n") == 0
        assert f"locked by process {proc.pid}" in r.stderr

        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "shutting down" in rest
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
    r = subprocess.run([EXE, "db", "check", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    rows = int(re.search(r"audit_events\s+MergeTree\s+rows=(\d+)", r.stdout).group(1))
    assert r.returncode == 0 and rows > 0


def test_users_and_tokens_commands_create_disable_and_revoke(tmp_path):
    from upmetr_audit.web import accounts

    runner = CliRunner()
    base = ["--data-dir", str(tmp_path)]
    r = runner.invoke(cli, ["users", "create", "--email", "root@acme.test", "--org", "acme",
                            "--role", "superadmin", "--password", "a long enough password", *base])
    assert r.exit_code == 0, r.output
    first = runner.invoke(cli, ["tokens", "create", "--user", "root@acme.test", *base]).output.strip()
    second = runner.invoke(cli, ["tokens", "create", "--user", "root@acme.test", *base]).output.strip()
    assert first.startswith(accounts.TOKEN_PREFIX) and second != first
    r = runner.invoke(cli, ["tokens", "revoke", "--user", "root@acme.test", *base])
    assert r.exit_code == 0 and r.output == "root@acme.test: 2 token(s) revoked\n"
    third = runner.invoke(cli, ["tokens", "create", "--user", "root@acme.test", *base]).output.strip()
    r = runner.invoke(cli, ["users", "disable", "root@acme.test", *base])
    assert r.exit_code == 0 and r.output == "root@acme.test disabled\n"
    store = store_mod.open_store(store_mod.default_url(str(tmp_path)))
    try:
        assert [accounts.user_for_token(store.client, t) for t in (first, second, third)] == [None] * 3
    finally:
        store.close()

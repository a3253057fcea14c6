"""``upmetr-audit keys | seal | verify | proof | verify-proof | erase | report | verify-report``."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import sys
import threading
import time

import click

from . import digests, keys, logs
from . import store as store_mod
from .cli import _fail_cleanly, _resolve_url
from .errors import StoreLocked
from .settings import ENV_PREFIX, options

LOCKED_HINT = ("these integrity commands read the store directly: stop `upmetr-audit serve` "
               "(Ctrl-C), run the command, then start serve again; serve seals on its own "
               "schedule, so nothing is lost meanwhile (OTLP clients retry)")


def _option(*decls, **kwargs):
    """A click option with its UPMETR_AUDIT_<NAME> environment variable."""
    name = next((d for d in decls if not d.startswith("-")), None) or max(
        (d for d in decls if d.startswith("--")), key=len)[2:].replace("-", "_")
    return click.option(*decls, envvar=ENV_PREFIX + name.upper(), show_envvar=True, **kwargs)


def _now_us() -> int:
    return time.time_ns() // 1000


@contextlib.contextmanager
def _open(data_dir, clickhouse_url):
    try:
        store = store_mod.open_store(_resolve_url(data_dir, clickhouse_url))
    except StoreLocked as exc:
        raise StoreLocked(exc.path, exc.pid, LOCKED_HINT) from None
    try:
        store_mod.require_current_schema(store.client)   # no DDL: least-privilege users
        yield store
    finally:
        store.close()


@contextlib.contextmanager
def _store(data_dir, clickhouse_url):
    with _open(data_dir, clickhouse_url) as store:
        yield store.client


class _Time(click.ParamType):
    """An ISO 8601 date or time; UTC when it has no offset. Converted to microseconds."""

    name = "TIME"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 time (e.g. 2026-10-01 or 2026-10-01T12:00Z)",
                      param, ctx)
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.UTC)
        return int(t.timestamp() * 1_000_000)


TIME = _Time()


def _keys_dir(data_dir: str) -> str:
    return keys.keys_dir_for(data_dir)


# -- keys ---------------------------------------------------------------------------


@click.group("keys")
def keys_group():
    """Ed25519 keys that sign the seals (in <data dir>/keys)."""


@keys_group.command("generate")
@options("data_dir")
@_fail_cleanly
def keys_generate(data_dir):
    """Create the signing key (private key file mode 0600) and the keyring."""
    kid = keys.generate(_keys_dir(data_dir), _now_us())
    click.echo(f"generated signing key {kid} in {_keys_dir(data_dir)}")


@keys_group.command("rotate")
@options("data_dir")
@_fail_cleanly
def keys_rotate(data_dir):
    """Retire the signing key (its private half is deleted; its public half stays
    in the keyring, so older seals still verify) and create a new one."""
    old, new = keys.rotate(_keys_dir(data_dir), _now_us())
    click.echo(f"retired key {old}; new signing key {new}. Export the keyring again for auditors: "
               f"upmetr-audit keys export-public")


@keys_group.command("export-public")
@options("data_dir")
@_option("--out", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write here instead of standard output.")
@_fail_cleanly
def keys_export_public(data_dir, out):
    """Print the public keyring (every key, retired ones too) for auditors."""
    text = keys.load(_keys_dir(data_dir), private=False).public_json()
    if out:
        with open(out, "w") as f:
            f.write(text)
        click.echo(f"public keyring written to {out}", err=True)
    else:
        click.echo(text, nl=False)


# -- seal ---------------------------------------------------------------------------


@click.command()
@options("data_dir", "clickhouse_url", "log_level")
@_option("--once", is_flag=True, help="Seal what is due, then exit.")
@_option("--interval", type=click.FloatRange(1), default=300.0, show_default=True,
              help="Seconds between sealing runs (loop mode).")
@_option("--window", type=click.IntRange(60), default=3600, show_default=True,
              help="Window length in seconds, for orgs not sealed yet (an org keeps its first).")
@_option("--grace", type=click.IntRange(0), default=300, show_default=True,
              help="Seconds after a window ends before it is sealed.")
@_fail_cleanly
def seal(data_dir, clickhouse_url, log_level, once, interval, window, grace):
    """Seal every ended window of every org: Merkle root, chain, Ed25519 signature.

    Seals go to audit.audit_seals and to <data dir>/digests. With the embedded
    store, `serve` does this itself; run this alone with a ClickHouse server,
    or while serve is stopped.
    """
    from .sealing import seal_once

    logs.setup(log_level)
    signing = keys.KeyringFile(_keys_dir(data_dir))  # reloaded after `keys rotate`
    signing.current()  # no keys: fail before opening the store; seal never makes a key
    stop = threading.Event()
    if not once:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    with _store(data_dir, clickhouse_url) as client:
        while True:
            now = _now_us()
            run = seal_once(client, signing.current(), digests.digests_dir_for(data_dir), now,
                            window_us=window * 1_000_000, grace_us=grace * 1_000_000)
            click.echo(f"sealed     {len(run.seals)} windows of {run.orgs} orgs"
                       + "".join(f"; {org} skipped: {why}" for org, why in run.skipped.items()))
            if once or stop.wait(interval):
                break


# -- verify ---------------------------------------------------------------------------


def _public_keyring(data_dir, public_key):
    return keys.load_public(public_key) if public_key else keys.load(_keys_dir(data_dir), private=False)


def _print_window(w) -> None:
    from .sealing import iso

    events = "; ".join(f"{kind}: {', '.join(ids)}" for kind, ids in w.events.items())
    click.echo(f"{w.status:<16} {w.org_id:<20} {iso(w.window_start_us)}  "
               + "; ".join(w.problems) + (f"; {events}" if events else ""))


@click.command()
@options("data_dir", "clickhouse_url")
@_option("--org", default=None, help="Only this org.")
@_option("--since", type=TIME, default=None, help="Only windows ending after this time.")
@_option("--until", type=TIME, default=None, help="Only windows starting before this time.")
@_option("--digests", "digest_dir", type=click.Path(file_okay=False), default=None,
              help="Digest files to check against. Default: <data dir>/digests.")
@_option("--public-key", type=click.Path(dir_okay=False), default=None,
              help="Exported keyring or PEM public key. Default: <data dir>/keys/keyring.json.")
@_option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_option("-v", "--verbose", is_flag=True, help="Also list erased windows.")
@_fail_cleanly
def verify(data_dir, clickhouse_url, org, since, until, digest_dir, public_key, as_json, verbose):
    """Recompute every sealed window from ClickHouse and check it against its seal,
    the chain, the signatures and the digest files.

    Reports each window that is not valid (modified, missing events, extra
    events, missing seal, broken chain, bad signature, digest mismatch;
    erased is not a problem) and a summary. Exits 1 on any integrity problem.
    """
    from rich.console import Console
    from rich.progress import Progress

    from . import verify as verify_mod

    if since is not None and until is not None and since >= until:
        raise click.BadParameter("--since must be before --until")
    ring = _public_keyring(data_dir, public_key)
    console = Console(stderr=True)
    with _store(data_dir, clickhouse_url) as client, Progress(
            console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("verifying", total=None)
        result = verify_mod.verify(
            client, ring, digest_dir or digests.digests_dir_for(data_dir), _now_us(), org=org,
            since_us=since, until_us=until,
            progress=lambda done, total: progress.update(task, completed=done, total=total))
    if org is None and since is None and until is None:
        verify_mod.save_latest(data_dir, result)
    if as_json:
        click.echo(json.dumps(result.to_json()))
    else:
        for w in result.windows:
            if w.status != "erased" or verbose:
                _print_window(w)
        for problem in result.other_problems:
            click.echo(f"{'problem':<16} {problem}")
        click.echo(result.summary())
    if not result.ok:
        sys.exit(1)


# -- proofs -----------------------------------------------------------------------------


@click.command()
@click.argument("event_id")
@options("data_dir", "clickhouse_url")
@_fail_cleanly
def proof(event_id, data_dir, clickhouse_url):
    """Print the inclusion proof of one event (JSON): its fields, its Merkle path
    and the signed seal of its window. Check it with `verify-proof`."""
    from . import proof as proof_mod

    with _store(data_dir, clickhouse_url) as client:
        made = proof_mod.build(client, event_id)
    click.echo(json.dumps(made, indent=2, ensure_ascii=False))


@click.command("verify-proof")
@click.argument("proof_file", type=click.File("rb"))
@_option("--public-key", type=click.Path(dir_okay=False), required=True,
              help="Exported keyring (keys export-public) or PEM public key.")
@_fail_cleanly
def verify_proof(proof_file, public_key):
    """Check a proof offline: no database, only the public key."""
    from . import proof as proof_mod

    ring = keys.load_public(public_key)
    try:
        data = json.loads(proof_file.read())
    except (ValueError, UnicodeDecodeError):
        raise proof_mod.ProofError(f"{proof_file.name} is not JSON") from None
    except RecursionError:
        raise proof_mod.ProofError(f"malformed proof: {proof_file.name} is nested too deeply") from None
    click.echo("valid: " + proof_mod.check(data, ring))


# -- erase --------------------------------------------------------------------------------


@click.command()
@_option("--org", required=True, help="The org whose events to erase from.")
@_option("--user-email", required=True, help="The person (matched exactly).")
@_option("--actor", default=None,
              help="Who erases, recorded in the audit event. Default: $USER@<host>.")
@_option("--dry-run", is_flag=True, help="Only count the events.")
@options("data_dir", "clickhouse_url")
@_fail_cleanly
def erase(org, user_email, actor, dry_run, data_dir, clickhouse_url):
    """Pseudonymize one person's events (GDPR erasure); the seals still verify.

    Replaces the email and user id by a pseudonym, clears the IP and user
    agent and personal values in changes/details, and shreds the salt of
    their commitment; replaces the person in refused rows and alert keys.
    The erasure is recorded as an audit event.
    """
    import socket

    from . import erasure

    actor = actor or f"{os.environ.get('USER', 'unknown')}@{socket.gethostname()}"
    ring = keys.load(_keys_dir(data_dir)) if not dry_run else keys.Keyring({}, None)
    # Ctrl-C, SIGTERM or SIGHUP let the erasure finish its steps (stopping half-way
    # would leave the person erased but not recorded); they cut the last wait short.
    stop = threading.Event()

    def finish_first(*_):
        if not stop.is_set():
            click.echo("stopping: the erasure finishes its steps first", err=True)
        stop.set()

    with _open(data_dir, clickhouse_url) as store:  # chDB sets its own handlers when it starts
        before = {sig: signal.signal(sig, finish_first)
                  for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            done = erasure.erase(store.client, ring, digests.digests_dir_for(data_dir), org, user_email,
                                 now_us=_now_us(), actor=actor, dry_run=dry_run,
                                 embedded=store.embedded, stop=stop,
                                 progress=lambda message: click.echo(message, err=True))
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)
    if dry_run:
        click.echo(f"dry run: would erase {done.event_count} events of {user_email} in {org}")
        return
    click.echo(f"erased {done.event_count} events of {user_email} in {org}; pseudonym "
               f"{done.subject}, erasure {done.erasure_id} (audit event {done.audit_event_id})")
    if done.rejects or done.alerts:
        click.echo(f"also replaced in {done.rejects} refused row(s) and {done.alerts} alert row(s)")
    if done.old_copies_deleted is False:
        click.secho("warning: ClickHouse had not deleted the old copies of the changed rows yet; "
                    "it deletes them within about 8 minutes of the store being open (`serve`)",
                    fg="yellow", err=True)
    elif done.old_copies_deleted is None:
        click.echo("the ClickHouse server deletes the old copies of the changed rows after its "
                   "old_parts_lifetime (8 minutes by default)")


# -- monthly report ------------------------------------------------------------------------


@click.command()
@_option("--org", required=True, help="The org.")
@_option("--month", required=True, help="The month, YYYY-MM (UTC).")
@_option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
         help="Folder of the report. Default: <data dir>/reports.")
@options("data_dir", "clickhouse_url")
@_fail_cleanly
def report(org, month, out_dir, data_dir, clickhouse_url):
    """Write the monthly review (HTML, self-contained) and its signed manifest:
    failed logins, spike alerts, team, MFA, token and settings changes, and
    the month's seal verification."""
    from . import report as report_mod
    from . import verify as verify_mod

    report_mod.check_org(org)
    start, end = report_mod.month_range(month)
    ring = keys.load(_keys_dir(data_dir))
    out_dir = out_dir or os.path.join(data_dir, "reports")
    now = _now_us()
    with _store(data_dir, clickhouse_url) as client:
        integrity = verify_mod.verify(client, ring, digests.digests_dir_for(data_dir), now, org=org,
                                      since_us=int(start.timestamp() * 1e6),
                                      until_us=int(end.timestamp() * 1e6))
        html, manifest = report_mod.build(client, ring, org, month, out_dir, now, integrity)
    click.echo(f"report     {html}\nsigned     {manifest}\nintegrity  {integrity.summary()}")


@click.command("verify-report")
@click.argument("manifest", type=click.Path(dir_okay=False))
@_option("--public-key", type=click.Path(dir_okay=False), required=True,
         help="Exported keyring (keys export-public) or PEM public key.")
@_fail_cleanly
def verify_report(manifest, public_key):
    """Check a report against its signed manifest (offline)."""
    from . import report as report_mod

    click.echo("valid: " + report_mod.check(manifest, keys.load_public(public_key)))


COMMANDS = (keys_group, seal, verify, proof, verify_proof, erase, report, verify_report)

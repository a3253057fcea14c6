"""Alert notifications delivered to real local receivers: a signed webhook that
fails then recovers, a restart with notifications still in the outbox, Slack
format, a receiver that refuses for good, and email over SMTP."""

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from upmetr_audit.collector import rules
from upmetr_audit.collector.detector import Detector
from upmetr_audit.collector.notify import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    Email,
    Notifier,
    Webhook,
    payload,
    verify_signature,
)

import scenarios as sc
from helpers import insert_events, wait_for

SECRET = "webhook-secret-for-tests"


class Receiver:
    """A local HTTP server answering with scripted status codes (then 200)."""

    def __init__(self, statuses=()):
        self.statuses = list(statuses)
        self.requests = []
        self.accepted = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                receiver.requests.append((dict(self.headers), body, status))
                if status == 200:
                    receiver.accepted.append((dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(statuses=()):
        r = Receiver(statuses)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def alert_row(change="opened", version=1, severity="warning"):
    t = sc.m(4)
    return {"alert_id": "9b2f0e0c-6a59-5d43-9d0c-0c3f1f7a2b11", "version": version, "change": change,
            "state": "resolved" if change == "resolved" else "firing", "rule": "user_brute_force",
            "severity": severity, "org_id": "org-a", "key_type": "user", "key": "victim@acme.test",
            "value": 6.0, "threshold": 5.0, "failures": 6, "window_start": t - timedelta(minutes=15),
            "window_end": t, "first_seen": sc.m(0), "last_seen": sc.m(2.5), "samples": ["e1", "e2"]}


RULE = rules.DEFAULT_RULES["user_brute_force"]


def test_the_webhook_body_has_everything_and_a_signature_that_verifies(tmp_path, receiver):
    r = receiver()
    n = Notifier(str(tmp_path / "outbox"), [Webhook(r.url, SECRET)], "https://audit.example.com")
    n.notify(alert_row(), RULE)
    assert n.drain() == 0
    n.close()
    [(headers, body)] = r.accepted
    assert verify_signature(SECRET, body, headers[SIGNATURE_HEADER])
    assert not verify_signature("another-secret", body, headers[SIGNATURE_HEADER])
    assert not verify_signature(SECRET, body + b" ", headers[SIGNATURE_HEADER])
    p = json.loads(body)
    assert (p["event"], p["rule"], p["severity"], p["org_id"], p["key"], p["value"], p["failures"]) == (
        "opened", "user_brute_force", "warning", "org-a", "victim@acme.test", 6.0, 6)
    assert p["window"] == {"start": "2026-11-20T11:49:00Z", "end": "2026-11-20T12:04:00Z", "minutes": 15}
    assert p["sample_event_ids"] == ["e1", "e2"]
    assert p["link"] == ("https://audit.example.com/audit?action=auth.login%2Cmfa.verify%2Cmagic_link.verify"
                         "&status=failure&since=2026-11-20T11%3A49%3A00Z&until=2026-11-20T12%3A04%3A00Z"
                         "&user=victim%40acme.test&user_case=any")
    assert headers[DELIVERY_HEADER] == p["id"] == "9b2f0e0c-6a59-5d43-9d0c-0c3f1f7a2b11.1"


def test_a_receiver_failing_then_recovering_gets_exactly_one_delivery_each(tmp_path, receiver):
    r = receiver(statuses=[500, 503])
    n = Notifier(str(tmp_path / "outbox"), [Webhook(r.url, SECRET)], "http://x",
                 backoff_initial_s=0.01, backoff_max_s=0.05)
    n.start()
    n.notify(alert_row(), RULE)
    n.notify(alert_row("escalated", 2, "critical"), RULE)
    wait_for(lambda: len(r.accepted) == 2)
    wait_for(lambda: n.pending() == 0)
    n.close()
    assert [s for _, _, s in r.requests] == [500, 503, 200, 200]
    assert [json.loads(b)["event"] for _, b in r.accepted] == ["opened", "escalated"]


def test_the_outbox_survives_a_restart_while_the_receiver_is_down(tmp_path, receiver):
    outbox = str(tmp_path / "outbox")
    down = Webhook("http://127.0.0.1:9/unreachable", SECRET, timeout_s=2)
    first = Notifier(outbox, [down], "http://x")
    first.notify(alert_row(), RULE)
    first.notify(alert_row("resolved", 2), RULE)
    assert first.drain() == 2          # connection refused: both kept
    first.close()                      # the process stops
    r = receiver()
    again = Notifier(outbox, [Webhook(r.url, SECRET)], "http://x")
    assert again.pending() == 2
    assert again.drain() == 0
    again.close()
    assert [json.loads(b)["event"] for _, b in r.accepted] == ["opened", "resolved"]
    third = Notifier(outbox, [Webhook(r.url, SECRET)], "http://x")
    assert third.drain() == 0 and len(r.accepted) == 2      # nothing delivered twice
    third.close()


def test_a_refused_notification_goes_to_the_dead_letter_file_and_does_not_block(tmp_path, receiver):
    r = receiver(statuses=[400])
    n = Notifier(str(tmp_path / "outbox"), [Webhook(r.url, SECRET)], "http://x")
    n.notify(alert_row(), RULE)
    n.notify(alert_row("resolved", 2), RULE)
    assert n.drain() == 0
    n.close()
    [dead] = [json.loads(line) for line in open(tmp_path / "outbox" / "webhook.dead.jsonl")]
    assert dead["error"] == "HTTP 400" and dead["notification"]["event"] == "opened"
    assert [json.loads(b)["event"] for _, b in r.accepted] == ["resolved"]


def test_slack_format(tmp_path, receiver):
    r = receiver()
    n = Notifier(str(tmp_path / "outbox"), [Webhook(r.url, fmt="slack")], "http://audit")
    n.notify(alert_row("escalated", 2, "critical"), RULE)
    n.drain()
    n.close()
    [(headers, body)] = r.accepted
    text = json.loads(body)["text"]
    assert text.startswith("[ESCALATED] critical: Brute force on one account — user victim@acme.test")
    assert "|Open the audit log>" in text and SIGNATURE_HEADER not in headers


@pytest.mark.parametrize("url, fmt", [("ftp://x", "json"), ("", "json"), ("http://x", "xml")])
def test_bad_webhook_settings_are_refused(url, fmt):
    with pytest.raises(ValueError):
        Webhook(url, fmt=fmt)


def test_email_over_smtp(tmp_path):
    from aiosmtpd.controller import Controller

    class Inbox:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):
            self.messages.append(envelope)
            return "250 OK"

    import socket
    with socket.socket() as probe:        # a free port (aiosmtpd's start-up check needs a real one)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        n = Notifier(str(tmp_path / "outbox"),
                     [Email("127.0.0.1", port, "audit@upmetr.test", ["sec@acme.test"])], "http://audit")
        n.notify(alert_row(), RULE)
        assert n.drain() == 0
        n.close()
    finally:
        smtp.stop()
    [msg] = inbox.messages
    assert msg.rcpt_tos == ["sec@acme.test"]
    text = msg.content.decode()
    assert "Subject: [FIRING] warning: Brute force on one account" in text
    assert "http://audit/audit?action=" in text


def test_detector_to_webhook_end_to_end(store, tmp_path, receiver):
    """Open, escalate and resolve a real alert: three notifications, no more."""
    r = receiver()
    n = Notifier(str(tmp_path / "outbox"), [Webhook(r.url, SECRET)], "http://audit")
    det = Detector(store.client, notify=n.notify)
    insert_events(store.client, sc.brute_force(6))
    det.run_once(sc.m(4))
    det.run_once(sc.m(5))
    insert_events(store.client, sc.brute_force(5, start=4))
    det.run_once(sc.m(8))
    det.run_once(sc.m(60))
    n.drain()
    n.close()
    events = [json.loads(b) for _, b in r.accepted]
    assert [(e["event"], e["severity"]) for e in events] == [
        ("opened", "warning"), ("escalated", "critical"), ("resolved", "critical")]
    assert len({e["id"] for e in events}) == 3
    assert all(verify_signature(SECRET, b, h[SIGNATURE_HEADER]) for h, b in r.accepted)


def test_payload_times_are_utc_iso():
    p = payload(alert_row(), RULE, "http://a")
    assert p["first_seen"] == "2026-11-20T12:00:00Z"
    assert datetime.fromisoformat(p["last_seen"]).tzinfo == UTC


# -- fixes from the review of the alerting (each test fails without its fix) --


def _free_port() -> int:
    import socket
    with socket.socket() as probe:        # aiosmtpd's start-up check needs a real port
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _self_signed(tmp_path):
    """A certificate for 127.0.0.1 that no system trusts, and its key."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "upmetr test smtp")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "smtp.pem", tmp_path / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


class _Inbox:
    def __init__(self):
        self.messages = []
        self.logins = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope)
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, data):
        from aiosmtpd.smtp import AuthResult
        self.logins.append((data.login, data.password))
        return AuthResult(success=True)


def test_starttls_verifies_the_server_certificate_before_sending_the_password(tmp_path):
    import ssl

    from aiosmtpd.controller import Controller

    cert, key = _self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    inbox, port = _Inbox(), _free_port()
    smtp = Controller(inbox, hostname="127.0.0.1", port=port, tls_context=server_tls,
                      require_starttls=True, authenticator=inbox.authenticate, auth_require_tls=True)
    smtp.start()
    try:
        p = payload(alert_row(), RULE, "http://audit")
        untrusted = Email("127.0.0.1", port, "audit@upmetr.test", ["sec@acme.test"], user="alerts",
                          password="s3cret-smtp-pw", starttls=True)
        with pytest.raises(ssl.SSLCertVerificationError):
            untrusted.send(p)
        assert inbox.logins == [] and inbox.messages == []
        trusted = Email("127.0.0.1", port, "audit@upmetr.test", ["sec@acme.test"], user="alerts",
                        password="s3cret-smtp-pw", starttls=True, cafile=cert)
        trusted.send(p)
    finally:
        smtp.stop()
    assert inbox.logins == [(b"alerts", b"s3cret-smtp-pw")] and len(inbox.messages) == 1


def test_a_hostile_key_cannot_add_email_headers_or_stop_the_email_thread(tmp_path):
    from aiosmtpd.controller import Controller

    inbox, port = _Inbox(), _free_port()
    smtp = Controller(inbox, hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        n = Notifier(str(tmp_path / "outbox"), [Email("127.0.0.1", port, "audit@upmetr.test",
                                                      ["sec@acme.test"])], "http://audit",
                     backoff_initial_s=0.01, backoff_max_s=0.05)
        n.start()
        n.notify(dict(alert_row(), key="evil@x.test\r\nBcc: attacker@evil.test"), RULE)
        n.notify(dict(alert_row("resolved", 2), key="b@acme.test"), RULE)
        wait_for(lambda: len(inbox.messages) == 2)
        n.close()
    finally:
        smtp.stop()
    assert [m.rcpt_tos for m in inbox.messages] == [["sec@acme.test"]] * 2
    first = inbox.messages[0].content.decode()
    assert "\nBcc:" not in first and "evil@x.test\\r\\nBcc: attacker@evil.test" in first


def test_a_malformed_answer_is_dead_lettered_and_the_thread_keeps_delivering(tmp_path):
    """A receiver answering garbage (http.client.BadStatusLine, not an OSError)
    once: that notification goes to the dead-letter file, the next one arrives."""
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    answers = [b"garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]
    bodies = []

    def serve():
        for answer in answers:
            conn, _ = srv.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
                        data.split(b"Content-Length: ")[1].split(b"\r\n")[0]):
                    data += conn.recv(65536)
                bodies.append(data.split(b"\r\n\r\n", 1)[1])
                conn.sendall(answer)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    n = Notifier(str(tmp_path / "outbox"), [Webhook(f"http://127.0.0.1:{srv.getsockname()[1]}/h")],
                 "http://x", backoff_initial_s=0.01, backoff_max_s=0.05)
    n.start()
    n.notify(alert_row(), RULE)
    n.notify(alert_row("resolved", 2), RULE)
    wait_for(lambda: n.delivered == 1)
    assert n._threads[0].is_alive()
    n.close()
    srv.close()
    [dead] = [json.loads(line) for line in open(tmp_path / "outbox" / "webhook.dead.jsonl")]
    assert dead["notification"]["event"] == "opened" and "BadStatusLine" in dead["error"]
    assert [json.loads(b)["event"] for b in bodies] == ["opened", "resolved"]
    assert (n.delivered, n.dead_lettered, n.pending()) == (1, 1, 0)


def test_a_redirect_is_not_delivered_and_stays_queued(tmp_path):
    """urllib would follow a 302 with a GET without the body; the 200 at the
    end is no delivery. The notification stays in the outbox for a retry."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def handle_one(self):
            seen.append((self.command, self.path))
            self.send_response(302 if self.path == "/hook" else 200)
            self.send_header("Location", "/moved")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_GET = handle_one

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        n = Notifier(str(tmp_path / "outbox"), [Webhook(f"http://127.0.0.1:{server.server_port}/hook")],
                     "http://x")
        n.notify(alert_row(), RULE)
        assert n.drain() == 1
        n.close()
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [("POST", "/hook")]
    assert (n.delivered, n.dead_lettered) == (0, 0)


def test_dead_lettered_notifications_are_not_counted_as_delivered(tmp_path, receiver):
    r = receiver(statuses=[410])
    n = Notifier(str(tmp_path / "outbox"), [Webhook(r.url)], "http://x")
    n.notify(alert_row(), RULE)
    n.notify(alert_row("resolved", 2), RULE)
    assert n.drain() == 0
    n.close()
    assert (n.delivered, n.dead_lettered) == (1, 1)


def test_slack_text_escapes_what_the_attacker_chose(tmp_path, receiver):
    r = receiver()
    n = Notifier(str(tmp_path / "outbox"), [Webhook(r.url, fmt="slack")], "http://audit")
    n.notify(dict(alert_row(), key="<https://evil.test/sso|Re-authenticate here> & <!channel>"), RULE)
    n.drain()
    n.close()
    [(_, body)] = r.accepted
    text = json.loads(body)["text"]
    assert "&lt;https://evil.test/sso|Re-authenticate here&gt; &amp; &lt;!channel&gt;" in text
    assert "<https://evil" not in text and "<!channel>" not in text
    assert text.count("<") == 1 and text.endswith("|Open the audit log>")


def test_an_error_outside_the_send_does_not_stop_the_delivery_thread(tmp_path, receiver):
    """The dead-letter file cannot be written (here: a directory is in its
    place): the thread logs, keeps the notification and retries; once the file
    can be written, the queue moves on."""
    r = receiver(statuses=[400] * 10_000)
    outbox = tmp_path / "outbox"
    n = Notifier(str(outbox), [Webhook(r.url)], "http://x", backoff_initial_s=0.01, backoff_max_s=0.05)
    (outbox / "webhook.dead.jsonl").mkdir()
    n.start()
    n.notify(alert_row(), RULE)
    wait_for(lambda: len(r.requests) >= 2)
    assert n._threads[0].is_alive() and n.pending() == 1
    (outbox / "webhook.dead.jsonl").rmdir()
    wait_for(lambda: n.dead_lettered == 1)
    assert n.pending() == 0 and n._threads[0].is_alive()
    n.close()

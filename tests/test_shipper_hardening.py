"""The shipper's sending thread and emit under hostile conditions: a disk
error in the sending thread, a fork, odd input, odd server answers, a slow
server at shutdown; and dead-letter entries a collector can take back."""

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from upmetr_audit.shipper import AuditLogger

from helpers import TOKEN, post, rows, run_on_a_small_disk, wait_for


class Scripted:
    """A tiny real OTLP/HTTP server: ``answer(n, body)`` gives the n-th
    request's (status, headers, body); request times and bodies are kept."""

    def __init__(self, answer):
        self.answer, self.requests = answer, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests.append((time.monotonic(), body))
                status, headers, out = outer.answer(len(outer.requests), body)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/logs"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


OK = (200, {"Content-Type": "application/x-protobuf"}, b"")


@pytest.fixture
def scripted():
    made = []

    def make(answer):
        made.append(Scripted(answer))
        return made[-1]

    yield make
    for s in made:
        s.close()


@pytest.fixture
def shipper(tmp_path):
    made = []

    def make(endpoint, **kwargs):
        kwargs.setdefault("spool_dir", str(tmp_path / "spool"))
        kwargs.setdefault("linger_s", 0.01)
        made.append(AuditLogger(service_name="hardening", endpoint=endpoint,
                                headers={"authorization": f"Bearer {TOKEN}"}, **kwargs))
        return made[-1]

    yield make
    for s in made:
        s.shutdown(timeout_s=1)


def test_the_default_segment_is_a_quarter_of_a_small_spool_at_most(shipper, scripted):
    audit = shipper(scripted(lambda n, b: OK).url, spool_max_bytes=256 * 1024)
    assert audit.processor.queue.segment_bytes <= 64 * 1024


def test_a_disk_error_in_the_sending_thread_is_retried_and_shown_not_fatal(shipper, scripted,
                                                                           tmp_path):
    server = scripted(lambda n, b: OK)
    audit = shipper(server.url, backoff_max_s=0.05)
    # the cursor cannot be written (as on a full disk): the acknowledgement fails
    os.makedirs(tmp_path / "spool" / "cursor.tmp")
    audit.auth.logout(org="acme", user="a@acme.test")
    wait_for(lambda: audit.stats()["sender_error"])
    assert "cursor.tmp" in audit.stats()["sender_error"]
    assert audit.stats()["sender_alive"] and audit.stats()["pending"] == 1
    os.rmdir(tmp_path / "spool" / "cursor.tmp")  # space again
    audit.auth.logout(org="acme", user="b@acme.test")
    assert audit.flush(10)
    stats = audit.stats()
    assert stats["sender_error"] == "" and stats["sent"] == 2 and stats["pending"] == 0


def test_a_failed_ack_is_retried_alone_not_the_send(shipper, scripted, tmp_path):
    """A batch the collector refused is dead-lettered once, and a delivered one
    sent once, however often its acknowledgement fails."""
    refused = (400, {"Content-Type": "application/json"}, b'{"message": "bad"}')
    server = scripted(lambda n, b: refused if n == 1 else OK)
    audit = shipper(server.url, backoff_max_s=0.05)
    os.makedirs(tmp_path / "spool" / "cursor.tmp")  # the cursor cannot be written
    audit.auth.logout(org="acme", user="a@acme.test")
    wait_for(lambda: "cursor.tmp" in audit.stats()["sender_error"])  # sent once, not acknowledged
    os.rmdir(tmp_path / "spool" / "cursor.tmp")
    assert audit.flush(10)
    audit.auth.logout(org="acme", user="b@acme.test")
    assert audit.flush(10)
    lines = (tmp_path / "spool" / "dead-letter.jsonl").read_text().splitlines()
    assert len(lines) == 1 and len(server.requests) == 2
    stats = audit.stats()
    assert (stats["dead_lettered"], stats["sent"], stats["pending"]) == (1, 1, 0)


REFUSED = (400, {"Content-Type": "application/json"}, b'{"message": "bad"}')


def dead_letter_ids(path) -> list[str]:
    out = []
    for line in path.read_text().splitlines():
        [rec] = json.loads(line)["request"]["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
        out += [a["value"]["stringValue"] for a in rec["attributes"] if a["key"] == "log.record.uid"]
    return out


def test_a_dead_letter_file_that_cannot_be_written_is_retried_not_the_send(shipper, scripted, tmp_path):
    server = scripted(lambda n, b: REFUSED)
    audit = shipper(server.url, backoff_max_s=0.05)
    dead = tmp_path / "spool" / "dead-letter.jsonl"
    dead.mkdir()  # the dead-letter file cannot be written (as on a full disk)
    audit.auth.logout(org="acme", user="a@acme.test")
    wait_for(lambda: "dead-letter.jsonl" in audit.stats()["sender_error"])
    dead.rmdir()
    assert audit.flush(10)
    assert len(server.requests) == 1 and len(dead_letter_ids(dead)) == 1
    stats = audit.stats()
    assert (stats["dead_lettered"], stats["sent"], stats["pending"]) == (1, 0, 0)


def test_an_answer_that_comes_after_shutdown_gave_up_settles_nothing(shipper, scripted, tmp_path):
    answer = threading.Event()
    slow = scripted(lambda n, b: (answer.wait(20), REFUSED)[1])
    audit = shipper(slow.url)
    audit.auth.logout(org="acme", user="a@acme.test")
    wait_for(lambda: slow.requests)
    assert audit.shutdown(timeout_s=0.2) == 1  # it gives up on the send under way
    answer.set()  # the refusal arrives now
    wait_for(lambda: not audit.processor._worker.is_alive())
    dead = tmp_path / "spool" / "dead-letter.jsonl"
    assert not dead.exists() and audit.stats()["pending"] == 1 and audit.stats()["dead_lettered"] == 0
    again = shipper(scripted(lambda n, b: REFUSED).url)  # the next run sends it, once
    assert again.stats()["pending"] == 1 and again.flush(10)
    assert len(dead_letter_ids(dead)) == 1


def test_a_dead_letter_write_cut_short_by_a_full_disk_leaves_no_torn_entry(tmp_path):
    result = run_on_a_small_disk(tmp_path, APPEND_ON_A_FULL_DISK)
    assert result == {"raised": True, "size_unchanged": True, "then_appended": True}


APPEND_ON_A_FULL_DISK = r"""
import json, os, sys
from upmetr_audit.shipper.spool import append_whole
disk = sys.argv[1]
path = os.path.join(disk, "dead-letter.jsonl")
append_whole(path, '{"first": 1}\n')
fill(os.path.join(disk, "filler"))
size = os.path.getsize(path)
try:
    append_whole(path, '{"big": "' + "x" * 64 * 1024 + '"}\n')
    raised = False
except OSError:
    raised = True
unchanged = os.path.getsize(path) == size
os.unlink(os.path.join(disk, "filler"))
append_whole(path, '{"second": 2}\n')
lines = [json.loads(line) for line in open(path)]
print(json.dumps({"raised": raised, "size_unchanged": unchanged,
                  "then_appended": lines == [{"first": 1}, {"second": 2}]}))
"""


def test_an_ack_after_close_leaves_the_spool_as_it_was(tmp_path):
    from upmetr_audit.shipper.spool import Spool
    spool = Spool(str(tmp_path / "spool"))
    spool.append(b"one")
    payloads, pos = spool.read(10)
    spool.close()
    spool.ack(pos)  # a sending thread that outlived a shutdown timeout
    assert not (tmp_path / "spool" / "cursor").exists()
    again = Spool(str(tmp_path / "spool"))
    try:
        assert again.read(10)[0] == payloads == [b"one"]  # sent again by the next owner
    finally:
        again.close()


def test_a_forked_child_cannot_emit_into_the_parents_spool(shipper, scripted):
    server = scripted(lambda n, b: OK)
    audit = shipper(server.url)
    audit.auth.logout(org="acme", user="parent-0@acme.test")
    assert audit.flush(10)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what emit, flush and shutdown do, then leave at once
        try:
            os.close(read)
            try:
                audit.auth.logout(org="acme", user="child@acme.test")
                out = "emit returned"
            except RuntimeError as exc:
                out = str(exc)
            out += f"|shutdown={audit.shutdown(timeout_s=5)}"
            os.write(write, out.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        out = f.read()
    os.waitpid(pid, 0)
    message, shutdown = out.split("|")
    assert "before os.fork()" in message and "create a new AuditLogger" in message
    assert shutdown == "shutdown=0"
    audit.auth.logout(org="acme", user="parent-1@acme.test")  # the parent's logger still works
    assert audit.flush(10)
    stats = audit.stats()
    assert stats["pending"] == 0 and stats["sent"] == 2
    sent = b"".join(body for _, body in server.requests)
    assert b"parent-1@acme.test" in sent and b"child@acme.test" not in sent


@pytest.mark.parametrize("kwargs,message", [
    ({"timestamp": 1_700_000_000}, "not seconds or milliseconds"),
    ({"timestamp": 1_700_000_000_000}, "not seconds or milliseconds"),
    ({"timestamp": 1_700_000_000.5}, "int nanoseconds"),
    ({"timestamp": "2024-01-01T00:00:00Z"}, "int nanoseconds"),
    ({"user": "ana\udcff@acme.test"}, "lone surrogate"),
    ({"note": "x\udcff"}, "lone surrogate"),
    ({"tags": ["ok", "\ud800"]}, "lone surrogate"),
    ({"n": 2**70}, "64 bits"),
    ({"event_id": "not-a-uuid"}, "is not a UUID"),
    ({"log.record.uid": "nope"}, "is not a UUID"),
])
def test_emit_refuses_what_the_collector_or_the_encoder_would_drop(shipper, scripted, kwargs,
                                                                    message):
    audit = shipper(scripted(lambda n, b: OK).url)
    fields = {"org": "acme", "user": "ana@acme.test", "status": "success", **kwargs}
    with pytest.raises(ValueError, match=message):
        audit.emit("auth.login", **fields)
    assert audit.stats()["pending"] == 0


def test_emit_takes_nanoseconds_and_aware_datetimes(shipper, scripted):
    import datetime as dt
    audit = shipper(scripted(lambda n, b: OK).url)
    audit.emit("auth.login", org="acme", user="a@acme.test", status="success",
               timestamp=time.time_ns(), n=2**63 - 1)
    audit.emit("auth.login", org="acme", user="a@acme.test", status="success",
               timestamp=dt.datetime.now(dt.UTC), note="été")
    assert audit.flush(10)


@pytest.mark.parametrize("retry_after", ["86400", "0"])
def test_retry_after_is_kept_within_the_backoff_bounds(shipper, scripted, retry_after, caplog):
    server = scripted(lambda n, b: (503, {"Retry-After": retry_after}, b"") if n <= 2 else OK)
    audit = shipper(server.url, backoff_max_s=0.6)
    audit.auth.logout(org="acme", user="a@acme.test")
    assert audit.flush(10)  # a day would park delivery
    times = [t for t, _ in server.requests]
    assert len(times) == 3
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(0.45 <= g <= 1.5 for g in gaps), gaps  # 0 would hammer the server
    assert "retry delay is out of range" in caplog.text


def test_a_200_that_is_not_otlp_is_not_taken_for_a_delivery(shipper, scripted):
    server = scripted(lambda n, b: (200, {"Content-Type": "text/html"}, b"<html>It works!</html>")
                      if n == 1 else OK)
    audit = shipper(server.url, backoff_max_s=0.05)
    audit.auth.logout(org="acme", user="a@acme.test")
    assert audit.flush(10)
    assert len(server.requests) == 2 and audit.stats()["retried"] == 1


def test_shutdown_returns_within_its_timeout_while_a_send_hangs(shipper, scripted):
    release = threading.Event()
    server = scripted(lambda n, b: (release.wait(30), OK)[1])
    audit = shipper(server.url)
    audit.auth.logout(org="acme", user="a@acme.test")
    wait_for(lambda: server.requests)
    start = time.monotonic()
    try:
        assert audit.shutdown(timeout_s=0.5) == 1
        assert time.monotonic() - start < 2.0
    finally:
        release.set()


def test_dead_letter_entries_are_otlp_json_a_collector_takes_back(collector, store, shipper,
                                                                  scripted):
    server = scripted(lambda n, b: (400, {}, b"refused"))
    audit = shipper(server.url)
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("request") as span:
        audit.auth.logout(org="acme", user="a@acme.test")
        ctx = span.get_span_context()
    assert audit.flush(10)
    with open(os.path.join(audit.spool_dir, "dead-letter.jsonl")) as f:
        request = json.loads(f.readline())["request"]
    record = request["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    assert record["traceId"] == trace.format_trace_id(ctx.trace_id)
    assert record["spanId"] == trace.format_span_id(ctx.span_id)
    assert isinstance(record["severityNumber"], int)
    status, _, _ = post(collector.logs_url, json.dumps(request).encode(), "application/json")
    assert status == 200
    (row,) = rows(store)
    assert row["trace_id"] == trace.format_trace_id(ctx.trace_id)

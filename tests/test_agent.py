"""`upmetr-audit ship`: JSON Lines files through the durable shipper, across
rotations and restarts; bad lines to dead-letter with file and line number."""

import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid

import pytest
from test_cli import EXE

from upmetr_audit.shipper import AuditLogger
from upmetr_audit.shipper.agent import Agent

from helpers import TOKEN, run_on_a_small_disk


def event(i, **extra):
    return {"event_name": "upmetr.audit.auth.logout", "time_unix_nano": str(time.time_ns()),
            "upmetr.org.id": "acme", "user.email": f"u{i}@acme.test",
            "upmetr.audit.status": "success", "client.address": "192.0.2.1", "line": i, **extra}


def write(path, *events, end="\n"):
    with open(path, "a") as f:
        f.write("".join(json.dumps(e) + end for e in events))


@pytest.fixture
def agent_for(collector, tmp_path):
    made = []

    def make(pattern, **kwargs):
        audit = AuditLogger(service_name="agent-test", endpoint=collector.logs_url,
                            spool_dir=str(tmp_path / "state" / "spool"),
                            headers={"authorization": f"Bearer {TOKEN}"})
        agent = Agent(audit, [pattern], str(tmp_path / "state"), **kwargs)
        made.append(agent)
        return agent

    yield make
    for a in made:
        a.save_checkpoints()
        a.audit.shutdown(timeout_s=2)


def stored_lines(store, agent):
    assert agent.audit.flush(30)
    return sorted(int(r[0]) for r in store.client.query(
        "SELECT details['line'] FROM audit.audit_events").result_rows)


def test_rename_and_create_rotation(agent_for, store, tmp_path):
    log = tmp_path / "app.log"
    write(log, *[event(i) for i in range(3)])
    agent = agent_for(str(log))
    agent.poll_once()
    write(log, event(3))                 # written just before the rename
    os.rename(log, tmp_path / "app.log.1")
    write(tmp_path / "app.log.1", event(4))  # a writer still holding the old file
    write(log, event(5), event(6))       # the new file
    agent.poll_once()
    agent.poll_once()
    assert stored_lines(store, agent) == list(range(7))


def test_copytruncate_rotation(agent_for, store, tmp_path):
    log = tmp_path / "app.log"
    write(log, *[event(i, pad="x" * 100) for i in range(5)])
    agent = agent_for(str(log))
    agent.poll_once()
    shutil.copy(log, tmp_path / "app.log.1")
    with open(log, "r+") as f:
        f.truncate(0)
    write(log, event(5))
    agent.poll_once()
    assert stored_lines(store, agent) == list(range(6))


def test_file_deleted_while_being_read_is_read_to_its_end(agent_for, store, tmp_path):
    log = tmp_path / "app.log"
    write(log, event(0))
    agent = agent_for(str(log), rotate_wait_s=0)  # closed as soon as it is read to its end
    agent.poll_once()
    write(log, event(1), event(2))
    os.unlink(log)
    agent.poll_once()
    assert stored_lines(store, agent) == [0, 1, 2]
    assert agent.files == {}


def test_partial_last_line_waits_for_its_newline(agent_for, store, tmp_path):
    log = tmp_path / "app.log"
    text = json.dumps(event(0))
    with open(log, "w") as f:
        f.write(text[:20])
    agent = agent_for(str(log))
    agent.poll_once()
    assert agent.shipped == 0
    with open(log, "a") as f:
        f.write(text[20:] + "\n")
    agent.poll_once()
    assert agent.shipped == 1 and stored_lines(store, agent) == [0]


def test_new_files_matching_the_glob_are_picked_up(agent_for, store, tmp_path):
    agent = agent_for(str(tmp_path / "*.jsonl"))
    agent.poll_once()
    write(tmp_path / "a.jsonl", event(0))
    agent.poll_once()
    write(tmp_path / "b.jsonl", event(1))
    write(tmp_path / "ignored.txt", event(99))
    agent.poll_once()
    assert stored_lines(store, agent) == [0, 1]


def test_restart_continues_from_the_checkpoint(agent_for, store, tmp_path):
    log = tmp_path / "app.log"
    write(log, *[event(i) for i in range(4)])
    first = agent_for(str(log))
    first.poll_once()
    first.save_checkpoints()
    first.audit.shutdown(timeout_s=5)
    write(log, event(4))
    second = agent_for(str(log))
    second.poll_once()
    assert second.shipped == 1   # only the new line
    assert stored_lines(store, second) == list(range(5))


def test_lines_read_twice_are_one_event(agent_for, store, tmp_path):
    log = tmp_path / "app.log"
    write(log, event(0), event(1))
    agent = agent_for(str(log))
    agent.poll_once()
    os.unlink(tmp_path / "state" / "checkpoints.json")  # a crash before any checkpoint
    again = Agent(agent.audit, [str(log)], str(tmp_path / "state"))
    again.poll_once()
    assert again.shipped == 2
    assert stored_lines(store, agent) == [0, 1]   # de-duplicated by the derived event id


def test_bad_lines_go_to_dead_letter_with_file_and_line_and_nothing_stops(agent_for, store,
                                                                           tmp_path):
    log = tmp_path / "app.log"
    with open(log, "w") as f:
        f.write(json.dumps(event(0)) + "\n")
        f.write("{not json\n")
        f.write(json.dumps({**event(2), "upmetr.audit.status": "maybe"}) + "\n")
        f.write(json.dumps({**event(3), "event_name": "upmetr.audit.nope"}) + "\n")
        f.write(json.dumps({k: v for k, v in event(4).items() if k != "time_unix_nano"}) + "\n")
        f.write("[1, 2]\n")
        f.write(json.dumps({**event(6), "log.record.uid": str(uuid.uuid4())}) + "\n")
    agent = agent_for(str(log))
    agent.poll_once()
    assert (agent.lines_read, agent.shipped, agent.dead_lettered) == (7, 2, 5)
    assert stored_lines(store, agent) == [0, 6]
    dead = [json.loads(x) for x in (tmp_path / "state" / "dead-letter.jsonl").read_text().splitlines()]
    assert [d["line"] for d in dead] == [2, 3, 4, 5, 6]
    assert all(d["file"] == str(log) for d in dead)
    assert dead[0]["error"].startswith("not valid JSON")
    assert dead[1]["error"] == "invalid status" and dead[2]["error"] == "unknown action"
    assert "missing time" in dead[3]["error"]


def test_ship_command_runs_and_stops_cleanly_on_sigterm(collector, store, tmp_path):
    log = tmp_path / "app.log"
    write(log, *[event(i) for i in range(20)])
    proc = subprocess.Popen([EXE, "ship", str(tmp_path / "*.log"), "--endpoint", collector.logs_url,
                             "--ingest-tokens", TOKEN, "--data-dir", str(tmp_path / "d"),
                             "--poll-interval", "0.05"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while store.client.command("SELECT count() FROM audit.audit_events") < 20:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert re.search(r"progress\s+read=20 shipped=20 dead_lettered=0 pending=0", out)
    assert "0 events left in the spool" in out


FULL_DISK_AGENT = r"""
import json, os, sys
from upmetr_audit.shipper import AuditLogger
from upmetr_audit.shipper.agent import Agent
from upmetr_audit.shipper.spool import Spool
disk, log_path, endpoint = sys.argv[1:4]  # disk: a 512 KiB tmpfs of its own
audit = AuditLogger(service_name="agent-test", endpoint=endpoint,
                    spool_dir=os.path.join(disk, "state", "spool"))
agent = Agent(audit, [log_path], os.path.join(disk, "state"))
fill(os.path.join(disk, "ballast"))
agent.poll_once()
full = {"shipped": agent.shipped, "waiting": agent.spool_error}
os.unlink(os.path.join(disk, "ballast"))
agent.poll_once()
after = {"shipped": agent.shipped, "waiting": agent.spool_error}
agent.save_checkpoints()
audit.shutdown(timeout_s=0.1)  # nothing listens at the endpoint: the events stay spooled
spool = Spool(os.path.join(disk, "state", "spool"))
print(json.dumps({"full": full, "after": after, "spooled": len(spool.read(10_000)[0])}))
spool.close()
"""


def test_a_full_disk_makes_reading_wait_and_loses_or_doubles_no_line(tmp_path):
    # A real full disk; the collector is not reachable, so the events stay
    # in the spool to be counted.
    import socket

    log = tmp_path / "app.log"
    write(log, *[event(i, padding="p" * 2000) for i in range(200)])
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}/v1/logs"
    result = run_on_a_small_disk(tmp_path, FULL_DISK_AGENT, str(log), endpoint)
    # The disk filled up part-way: reading stopped at a line and said why.
    assert result["full"]["shipped"] < 200
    assert "No space left on device" in result["full"]["waiting"] or \
        "is the disk full?" in result["full"]["waiting"]
    # Space again: reading went on from that line, and every line is spooled once.
    assert result["after"] == {"shipped": 200, "waiting": None}
    assert result["spooled"] == 200

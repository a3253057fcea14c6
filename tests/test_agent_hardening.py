"""`upmetr-audit ship` against poison lines, reused inodes, rotations while
stopped or without a final newline, copytruncate, over-long lines, and a stop
while the spool is full."""

import hashlib
import json
import os
import threading

import pytest
from test_agent import event, stored_lines, write

from upmetr_audit.shipper import AuditLogger
from upmetr_audit.shipper.agent import Agent

from helpers import TOKEN


@pytest.fixture
def agent_for(collector, tmp_path):
    """An agent on the real collector; ``restart()`` makes a new one on the same state."""
    made = []

    def make(pattern, **kwargs):
        audit = AuditLogger(service_name="agent-test", endpoint=collector.logs_url,
                            spool_dir=str(tmp_path / "state" / "spool"), linger_s=0.01,
                            headers={"authorization": f"Bearer {TOKEN}"})
        agent = Agent(audit, [pattern], str(tmp_path / "state"), **kwargs)
        made.append(agent)
        return agent

    yield make
    for a in made:
        stop(a)


def stop(agent):
    """What the end of ``Agent.run`` does, and the logger's shutdown."""
    if agent.audit.processor._shutdown:
        return
    agent.save_checkpoints()
    for f in agent.files.values():
        if f.fd is not None:
            os.close(f.fd)
            f.fd = None
    agent.audit.flush(10)
    agent.audit.shutdown(timeout_s=2)


def dead_letters(tmp_path):
    path = tmp_path / "state" / "dead-letter.jsonl"
    return [json.loads(line) for line in open(path)] if path.exists() else []


@pytest.mark.parametrize("bad", ["1e999", "-1e999", "NaN", '"99999999999999999999999999"',
                                 "[1]", '{"a": 1}'])
def test_a_time_that_cannot_be_converted_is_dead_lettered_and_reading_goes_on(
        agent_for, store, tmp_path, bad):
    log = tmp_path / "app.log"
    with open(log, "w") as f:
        f.write(json.dumps(event(0)) + "\n")
        f.write(json.dumps(event(1))[:-1] + ', "time_unix_nano": ' + bad + "}\n")
        f.write(json.dumps(event(2)) + "\n")
    agent = agent_for(str(log))
    agent.poll_once()
    assert stored_lines(store, agent) == [0, 2]
    (dead,) = dead_letters(tmp_path)
    assert dead["line"] == 2


def test_a_checkpoint_is_not_applied_to_a_new_file_that_reuses_the_inode(agent_for, store,
                                                                        tmp_path):
    log = tmp_path / "app.log"
    write(log, *[event(i) for i in range(3)])
    st = os.stat(log)
    # the checkpoint of a deleted file whose inode the new app.log now has
    old = b"".join(json.dumps(event(100 + i)).encode() + b"\n" for i in range(2))
    (tmp_path / "state").mkdir()
    with open(tmp_path / "state" / "checkpoints.json", "w") as f:
        json.dump([{"path": str(log), "dev": st.st_dev, "ino": st.st_ino, "offset": len(old),
                    "head_len": len(old[:1024]),
                    "head_sha256": hashlib.sha256(old[:1024]).hexdigest()}], f)
    agent = agent_for(str(log))
    agent.poll_once()
    assert stored_lines(store, agent) == [0, 1, 2]


def test_a_checkpoint_resumes_its_own_file_and_is_used_once(agent_for, store, tmp_path):
    log = tmp_path / "app.log"
    write(log, *[event(i) for i in range(3)])
    agent = agent_for(str(log))
    agent.poll_once()
    stop(agent)
    write(log, event(3))
    agent = agent_for(str(log))
    agent.poll_once()
    assert agent._saved == {}
    assert stored_lines(store, agent) == [0, 1, 2, 3]
    assert store.client.command("SELECT count() FROM audit.audit_events") == 4


@pytest.mark.parametrize("how", ["rename", "delete"])
def test_the_last_line_of_a_rotated_or_deleted_file_without_a_newline_is_read(
        agent_for, store, tmp_path, how, caplog):
    log = tmp_path / "app.log"
    write(log, event(0), event(1))
    write(log, event(2), end="")  # the writer stopped without a final newline
    agent = agent_for(str(log), rotate_wait_s=0)  # no writer holds the file: no wait
    agent.poll_once()
    if how == "rename":
        os.rename(log, tmp_path / "app.log.1")
        write(log, event(3))
    else:
        os.unlink(log)
    agent.poll_once()
    agent.poll_once()
    assert stored_lines(store, agent) == ([0, 1, 2, 3] if how == "rename" else [0, 1, 2])
    assert "ends without a newline" in caplog.text
    assert [f.path for f in agent.files.values()] == ([str(log)] if how == "rename" else [])


def test_a_writer_that_still_holds_a_rotated_file_may_finish_its_last_line(
        agent_for, store, tmp_path, caplog):
    log = tmp_path / "app.log"
    text = json.dumps(event(1))
    write(log, event(0))
    with open(log, "a") as writer:
        writer.write(text[:25])  # half a line, then the file is renamed under the writer
        writer.flush()
        agent = agent_for(str(log), rotate_wait_s=3600)
        agent.poll_once()
        os.rename(log, tmp_path / "app.log.1")
        agent.poll_once()  # read to its end and gone, but within the wait: kept, the half line too
        writer.write(text[25:] + "\n")  # the writer finishes its line in the old file
    agent.poll_once()
    assert stored_lines(store, agent) == [0, 1]
    assert dead_letters(tmp_path) == [] and "ends without a newline" not in caplog.text
    assert len(agent.files) == 1  # the rotated file, still within the wait
    agent.rotate_wait_s = 0  # the wait is over: the file is closed and dropped
    agent.poll_once()
    assert agent.files == {}


def test_the_rest_of_a_line_too_long_is_skipped_after_a_restart(agent_for, store, tmp_path,
                                                              monkeypatch):
    from upmetr_audit.shipper import agent as agent_mod
    monkeypatch.setattr(agent_mod, "MAX_LINE_BYTES", 4096)
    log = tmp_path / "app.log"
    write(log, event(0))
    line = json.dumps(event(1, filler="x" * 64 * 1024)) + "\n"
    with open(log, "a") as f:
        f.write(line[:16 * 1024])  # the writer is in the middle of a line too long
    agent = agent_for(str(log))
    agent.poll_once()
    assert stored_lines(store, agent) == [0] and len(dead_letters(tmp_path)) == 1
    stop(agent)
    with open(log, "a") as f:
        f.write(line[16 * 1024:])
    write(log, event(2))
    again = agent_for(str(log))
    again.poll_once()
    assert stored_lines(store, again) == [0, 2]
    (dead,) = dead_letters(tmp_path)  # the rest of the long line is not a second, bogus entry
    assert "line longer than" in dead["error"]


def read_then_stopped(agent_for, tmp_path, *lines):
    """``app.log`` with ``lines``, read by an agent that then stopped; its path."""
    log = tmp_path / "app.log"
    write(log, *lines)
    agent = agent_for(str(log))
    agent.poll_once()
    stop(agent)
    return log


def test_a_file_rotated_while_the_agent_was_stopped_is_read_to_its_end(agent_for, store,
                                                                      tmp_path):
    log = read_then_stopped(agent_for, tmp_path, event(0), event(1))
    write(log, event(2), event(3))  # written while the agent is stopped
    os.rename(log, tmp_path / "app.log.1")
    write(log, event(4))
    agent = agent_for(str(log), rotate_wait_s=0)
    agent.poll_once()
    agent.poll_once()
    assert stored_lines(store, agent) == [0, 1, 2, 3, 4]
    assert [f.path for f in agent.files.values()] == [str(log)]  # the rotated one is done


def test_a_checkpointed_file_that_is_gone_is_reported(agent_for, store, tmp_path, caplog):
    log = read_then_stopped(agent_for, tmp_path, event(0))
    os.unlink(log)
    agent = agent_for(str(log))
    agent.poll_once()
    assert "a checkpointed file is gone" in caplog.text


def test_copytruncate_is_noticed_when_the_file_grew_back_past_the_offset(agent_for, store,
                                                                         tmp_path):
    log = tmp_path / "app.log"
    write(log, event(0), event(1))
    agent = agent_for(str(log))
    agent.poll_once()
    os.truncate(log, 0)  # copytruncate, then more than before is written before the next poll
    write(log, *[event(i) for i in range(10, 15)])
    agent.poll_once()
    assert stored_lines(store, agent) == [0, 1, 10, 11, 12, 13, 14]


def test_a_line_too_long_is_one_dead_letter_entry(agent_for, store, tmp_path, monkeypatch):
    from upmetr_audit.shipper import agent as agent_mod
    monkeypatch.setattr(agent_mod, "MAX_LINE_BYTES", 4096)
    log = tmp_path / "app.log"
    write(log, event(0))
    write(log, event(1, filler="x" * 3 * 1024 * 1024))  # longer than one read
    write(log, event(2))
    agent = agent_for(str(log))
    agent.poll_once()
    assert stored_lines(store, agent) == [0, 2]
    (dead,) = dead_letters(tmp_path)
    assert "line longer than" in dead["error"] and dead["line"] == 2


def test_the_agent_stops_while_the_spool_is_full(tmp_path):
    audit = AuditLogger(service_name="agent-test", endpoint="http://127.0.0.1:9/v1/logs",
                        spool_dir=str(tmp_path / "state" / "spool"), spool_max_bytes=16 * 1024,
                        emit_timeout_s=0.2)
    log = tmp_path / "app.log"
    write(log, *[event(i) for i in range(200)])  # more than the spool holds
    agent = Agent(audit, [str(log)], str(tmp_path / "state"), poll_interval_s=0.05)
    stop_event = threading.Event()
    runner = threading.Thread(target=agent.run, args=(stop_event,), daemon=True)
    runner.start()
    try:
        assert not runner.join(1.0) and runner.is_alive()
        stop_event.set()
        runner.join(5)
        assert not runner.is_alive()
        saved = json.load(open(tmp_path / "state" / "checkpoints.json"))
        assert 0 < saved[0]["offset"] < os.path.getsize(log)  # the rest waits in the file
        assert agent.shipped == audit.stats()["pending"]
    finally:
        audit.shutdown(timeout_s=0.5)


def test_a_deleted_files_last_line_is_read_when_the_agent_stops_during_the_rotate_wait(
        agent_for, store, tmp_path, caplog):
    log = tmp_path / "app.log"
    write(log, event(0))
    write(log, event(1), end="")  # its writer stopped without a final newline
    agent = agent_for(str(log), rotate_wait_s=3600)
    agent.poll_once()
    os.unlink(log)
    agent.poll_once()  # within the wait: kept open
    assert len(agent.files) == 1
    stop_now = threading.Event()
    stop_now.set()
    agent.run(stop_now)  # the last read: a deleted file could not be found after a restart
    assert stored_lines(store, agent) == [0, 1] and agent.files == {}
    stop(agent)
    again = agent_for(str(log))
    again.poll_once()
    assert "a checkpointed file is gone" not in caplog.text


def test_a_dead_letter_file_that_cannot_be_written_makes_reading_wait_not_die(agent_for, store, tmp_path):
    log = tmp_path / "app.log"
    write(log, event(0))
    with open(log, "a") as f:
        f.write("this is not json\n")
    write(log, event(2))
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "dead-letter.jsonl").mkdir()  # cannot be written (as on a full disk)
    agent = agent_for(str(log))
    agent.poll_once()
    assert agent.spool_error and "dead-letter" in agent.spool_error
    assert stored_lines(store, agent) == [0]  # the bad line, and what follows it, wait
    (tmp_path / "state" / "dead-letter.jsonl").rmdir()
    agent.poll_once()
    assert stored_lines(store, agent) == [0, 2] and agent.spool_error is None
    assert [d["line"] for d in dead_letters(tmp_path)] == [2]


def test_a_file_rotated_to_a_name_the_glob_also_matches_is_not_read_again(agent_for, store, tmp_path):
    write(tmp_path / "app.log", event(0), event(1))
    with open(tmp_path / "app.log", "a") as f:
        f.write("this is not json\n")
    agent = agent_for(str(tmp_path / "*.log"), rotate_wait_s=0)
    agent.poll_once()
    os.rename(tmp_path / "app.log", tmp_path / "app-20260101.log")
    write(tmp_path / "app.log", event(2))
    for _ in range(3):
        agent.poll_once()
    write(tmp_path / "app-20260101.log", event(3))  # a writer that still holds it
    agent.poll_once()
    assert agent.audit.flush(30)
    lines = [int(r[0]) for r in store.client.query(
        "SELECT details['line'] FROM audit.audit_events ORDER BY details['line']").result_rows]
    assert lines == [0, 1, 2, 3] and agent.shipped == 4  # none sent twice
    assert len(dead_letters(tmp_path)) == 1

"""The shipper's on-disk spool: durable appends, ordered reads, acks that
reclaim disk, torn tails skipped, bounded size."""

import json
import os
import threading

import pytest

from upmetr_audit.shipper.durable import MemoryQueue
from upmetr_audit.shipper.spool import Spool, SpoolError, SpoolFullError

from helpers import run_on_a_small_disk


def drain(spool, n=1000):
    out = []
    while True:
        payloads, pos = spool.read(n)
        if not payloads:
            return out
        out.extend(payloads)
        spool.ack(pos)


def segments(path):
    return sorted(f for f in os.listdir(path) if f.startswith("seg-"))


def test_appends_are_read_back_in_order_across_segments(tmp_path):
    spool = Spool(tmp_path, segment_bytes=4096, max_bytes=1 << 20)
    sent = [f"event-{i}".encode() * 20 for i in range(300)]
    for p in sent:
        spool.append(p)
    assert len(segments(tmp_path)) > 3
    assert drain(spool, n=7) == sent
    assert len(segments(tmp_path)) == 1  # delivered segments were deleted
    spool.close()


def test_concurrent_appends_share_fsyncs_and_lose_nothing(tmp_path):
    spool = Spool(tmp_path, segment_bytes=64 * 1024, max_bytes=16 << 20)

    def writer(k):
        for i in range(250):
            spool.append(f"{k}:{i}".encode())

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = drain(spool)
    assert sorted(got) == sorted(f"{k}:{i}".encode() for k in range(8) for i in range(250))
    for k in range(8):  # each writer's events stay in its order
        mine = [int(p.split(b":")[1]) for p in got if p.startswith(f"{k}:".encode())]
        assert mine == sorted(mine)
    spool.close()


def test_unacknowledged_events_are_read_again_after_a_restart(tmp_path):
    spool = Spool(tmp_path)
    for i in range(10):
        spool.append(str(i).encode())
    payloads, pos = spool.read(4)
    spool.ack(pos)
    spool.read(3)  # read but never acknowledged: the process "crashes" here
    spool.close()
    again = Spool(tmp_path)
    assert drain(again) == [str(i).encode() for i in range(4, 10)]
    again.close()


def test_rewind_reads_again_from_the_last_ack(tmp_path):
    spool = Spool(tmp_path)
    for i in range(5):
        spool.append(str(i).encode())
    spool.read(3)
    spool.rewind()
    assert spool.read(10)[0] == [str(i).encode() for i in range(5)]
    spool.close()


@pytest.mark.parametrize("damage", ["torn header", "torn payload", "bad checksum", "garbage"])
def test_torn_or_corrupt_tail_is_skipped_and_the_rest_delivered(tmp_path, damage, caplog):
    spool = Spool(tmp_path)
    spool.append(b"before-1")
    spool.append(b"before-2")
    spool.close()
    (last,) = segments(tmp_path)
    path = tmp_path / last
    data = path.read_bytes()
    if damage == "torn header":
        path.write_bytes(data + b"UA\x10")
    elif damage == "torn payload":
        path.write_bytes(data + b"UA\x10\x00\x00\x00\x00\x00\x00\x00part")
    elif damage == "bad checksum":
        path.write_bytes(data[:-1] + b"X")
    else:
        path.write_bytes(data + os.urandom(64))
    spool = Spool(tmp_path)
    spool.append(b"after")
    got = drain(spool)
    expected = [b"before-1", b"after"] if damage == "bad checksum" else [b"before-1", b"before-2",
                                                                         b"after"]
    assert got == expected
    assert "torn or corrupt" in caplog.text
    spool.close()


def test_full_spool_blocks_then_raises(tmp_path):
    spool = Spool(tmp_path, segment_bytes=4096, max_bytes=8192)
    with pytest.raises(SpoolFullError, match="is full"):
        for _ in range(100):
            spool.append(b"x" * 500, timeout_s=0.2)
    spool.close()


def test_full_spool_unblocks_when_delivery_frees_space(tmp_path):
    spool = Spool(tmp_path, segment_bytes=4096, max_bytes=8192)
    while spool.size_bytes + 520 <= 8192:
        spool.append(b"x" * 500)
    waiter = threading.Thread(target=spool.append, args=(b"y" * 500,), kwargs={"timeout_s": 30})
    waiter.start()
    drain(spool)
    waiter.join(30)
    assert not waiter.is_alive()
    assert drain(spool) == [b"y" * 500]
    spool.close()


@pytest.mark.parametrize("interval", [0.0, 0.05])
def test_a_spool_as_small_as_its_segment_takes_more_than_its_size_once_delivered(tmp_path,
                                                                                  interval):
    spool = Spool(tmp_path, segment_bytes=8192, max_bytes=8192, sync_interval_s=interval)
    for i in range(100):  # 100 x 520 bytes: six times the bound, each one delivered
        spool.append(b"x" * 500, timeout_s=0.2)
        assert drain(spool) == [b"x" * 500], i
    assert spool.size_bytes == 0
    spool.close()


def test_second_process_cannot_open_the_same_spool(tmp_path):
    import subprocess
    import sys
    spool = Spool(tmp_path)
    code = ("from upmetr_audit.shipper.spool import Spool, SpoolError\n"
            f"try:\n    Spool({str(tmp_path)!r})\nexcept SpoolError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "in use by another process" in out.stdout
    spool.close()


def test_unusable_directory_is_a_clear_error(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(SpoolError, match="cannot use spool directory"):
        Spool(tmp_path / "a-file" / "spool")


def test_interval_sync_appends_without_waiting_for_a_sync_then_syncs_in_the_background(
        tmp_path, monkeypatch):
    import upmetr_audit.shipper.spool as spool_mod

    synced = threading.Event()
    real = os.fdatasync

    def recording_fdatasync(fd):
        real(fd)
        synced.set()

    monkeypatch.setattr(spool_mod.os, "fdatasync", recording_fdatasync)
    spool = Spool(tmp_path, sync_interval_s=0.05)
    spool.append(b"one")
    spool.append(b"two")
    assert spool._synced < spool._written  # the appends returned before any sync
    assert synced.wait(10)                  # the background thread synced them
    assert drain(spool) == [b"one", b"two"]
    spool.close()


@pytest.mark.parametrize("interval", [-1, 61])
def test_a_sync_interval_out_of_range_is_refused(tmp_path, interval):
    with pytest.raises(ValueError, match="sync_interval_s"):
        Spool(tmp_path, sync_interval_s=interval)


KILLED_WRITER = r"""
import sys
from upmetr_audit.shipper.spool import Spool
spool = Spool(sys.argv[1], sync_interval_s=60)  # no sync will run before the kill
for i in range(int(sys.argv[2])):
    spool.append(f"event-{i}".encode())
print("appended", flush=True)
sys.stdin.read()  # wait to be killed
"""


def test_interval_sync_appends_survive_a_sigkill_of_the_process(tmp_path):
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path), "2000"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "appended"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    spool = Spool(tmp_path)
    assert drain(spool) == [f"event-{i}".encode() for i in range(2000)]
    spool.close()


def test_reserved_space_is_given_back_when_a_segment_is_sealed_or_found_after_a_kill(tmp_path):
    import signal
    import subprocess
    import sys

    def on_disk(name):
        return os.stat(tmp_path / name).st_blocks * 512

    spool = Spool(tmp_path, segment_bytes=1 << 20, sync_interval_s=0.05)
    first = segments(tmp_path)[-1]
    assert on_disk(first) >= 1 << 20  # reserved while it is written
    spool.append(b"x" * 100)
    spool.close()
    assert on_disk(first) <= 4096  # sealed: back to what it holds
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path), "10"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "appended"
    killed = segments(tmp_path)[-1]
    assert on_disk(killed) >= 8 << 20  # the killed run's segment keeps its reservation...
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    spool = Spool(tmp_path)
    assert on_disk(killed) <= 4096  # ...until the next run opens the spool
    assert len(drain(spool)) == 11
    spool.close()


# -- interval sync: appends without a lock -----------------------------------------


def test_unlocked_appends_across_rolls_with_a_reader_lose_and_reorder_nothing(tmp_path, caplog):
    # 8 threads append while a reader reads and acknowledges; small segments,
    # so rolls (which wait for the writers inside the old segment) happen all
    # the time, and the reader meets frames still being written.
    spool = Spool(tmp_path, segment_bytes=4096, sync_interval_s=0.05)
    threads, per_thread = 8, 400
    got, done = [], threading.Event()

    def reader():
        while not done.is_set() or len(got) < threads * per_thread:
            payloads, pos = spool.read(100)
            got.extend(payloads)
            if payloads:
                spool.ack(pos)

    def writer(k):
        for i in range(per_thread):
            spool.append(f"{k}:{i}:".encode() + b"x" * (i % 97))

    r = threading.Thread(target=reader)
    r.start()
    ws = [threading.Thread(target=writer, args=(k,)) for k in range(threads)]
    for w in ws:
        w.start()
    for w in ws:
        w.join(60)
    done.set()
    r.join(60)
    assert not r.is_alive()
    assert len(got) == threads * per_thread
    for k in range(threads):
        mine = [int(p.split(b":")[1]) for p in got if p.startswith(f"{k}:".encode())]
        assert mine == list(range(per_thread))
    assert "torn" not in caplog.text
    spool.close()
    assert len(segments(tmp_path)) <= 1  # acknowledged segments were deleted


def test_the_reader_waits_for_a_frame_still_being_written(tmp_path, caplog):
    from upmetr_audit.shipper.spool import encode_frame

    spool = Spool(tmp_path, sync_interval_s=0.05)
    spool.append(b"whole")
    frame = encode_frame(b"being written")
    active = os.path.join(tmp_path, segments(tmp_path)[-1])
    fd = os.open(active, os.O_WRONLY | os.O_APPEND)
    os.write(fd, frame[:7])  # what a reader may see while write(2) copies the frame
    assert drain(spool) == [b"whole"]
    os.write(fd, frame[7:])
    os.close(fd)
    assert drain(spool) == [b"being written"]
    assert "torn" not in caplog.text
    spool.close()


def test_a_roll_waits_for_a_writer_inside_the_old_segment(tmp_path, monkeypatch):
    import upmetr_audit.shipper.spool as spool_mod

    spool = Spool(tmp_path, segment_bytes=4096, sync_interval_s=0.05)
    inside, release = threading.Event(), threading.Event()
    real_write = spool_mod._write_keeping_gil

    def paused_write(fd, data):
        if data.endswith(b"paused"):
            inside.set()
            assert release.wait(10)
        return real_write(fd, data)

    monkeypatch.setattr(spool_mod, "_write_keeping_gil", paused_write)
    writer = threading.Thread(target=spool.append, args=(b"paused",))
    writer.start()
    assert inside.wait(10)  # announced in the active segment, not written yet
    big = [f"{i}:".encode() + b"r" * 1000 for i in range(6)]  # more than a segment: a roll
    roller = threading.Thread(target=lambda: [spool.append(p) for p in big])
    roller.start()
    roller.join(0.5)
    assert roller.is_alive()  # the roll waits for the writer inside the old segment
    release.set()
    writer.join(10)
    roller.join(10)
    assert sorted(drain(spool)) == sorted([b"paused", *big])
    spool.close()


def test_a_writer_that_arrives_after_the_seal_writes_to_the_new_segment(tmp_path):
    spool = Spool(tmp_path, segment_bytes=4096, sync_interval_s=0.05)
    arrived, release = threading.Event(), threading.Event()

    class PausingWriters(list):
        """The old segment's writer list: the late writer stops before announcing itself."""

        def append(self, item):
            if threading.current_thread().name == "late":
                arrived.set()
                assert release.wait(10)
            super().append(item)

    spool._seg.writers = PausingWriters()
    late = threading.Thread(target=spool.append, args=(b"late",), name="late")
    late.start()
    assert arrived.wait(10)  # it holds the old segment, unannounced
    big = [f"{i}:".encode() + b"r" * 1000 for i in range(6)]
    for p in big:  # fills the segment: it is sealed and closed, a new one started
        spool.append(p)
    release.set()
    late.join(10)
    assert sorted(drain(spool)) == sorted([b"late", *big])
    spool.close()


def test_close_stops_unlocked_appends_and_keeps_every_one_that_returned(tmp_path):
    spool = Spool(tmp_path, segment_bytes=4096, sync_interval_s=0.05)
    returned, refused = [], []
    started, enough = threading.Barrier(5), threading.Event()

    def writer(k):
        started.wait()
        i = 0
        while True:
            payload = f"{k}:{i}".encode()
            try:
                spool.append(payload)
            except SpoolError:
                refused.append(k)
                return
            returned.append(payload)
            if len(returned) >= 2000:
                enough.set()
            i += 1

    ws = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for w in ws:
        w.start()
    started.wait()
    assert enough.wait(30)
    spool.close()
    for w in ws:
        w.join(30)
    assert sorted(refused) == [0, 1, 2, 3]  # every writer was told the spool is closed
    reopened = Spool(tmp_path)
    assert sorted(drain(reopened)) == sorted(returned)
    reopened.close()


# -- fast mode's in-memory queue (same interface) -------------------------------


def test_fast_queue_appends_do_not_wait_for_the_sending_thread():
    # While the sending thread holds the queue's lock (reading or acknowledging
    # a batch), emitting threads still append: a lock that every emit takes
    # makes CPython threads queue behind the GIL (P5, docs/benchmarks.md).
    q = MemoryQueue()
    done = threading.Event()
    with q._cond:
        t = threading.Thread(target=lambda: (q.append(b"e1"), done.set()))
        t.start()
        assert done.wait(10)
    t.join(10)
    assert q.read(10)[0] == [b"e1"]


def test_fast_queue_concurrent_appends_lose_and_reorder_nothing():
    q = MemoryQueue(max_records=100_000)
    per_thread = 2_000

    def emit(k):
        for i in range(per_thread):
            q.append(f"{k}:{i}".encode())

    threads = [threading.Thread(target=emit, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    got = drain(q)
    assert len(got) == 8 * per_thread
    for k in range(8):
        mine = [int(p.split(b":")[1]) for p in got if p.startswith(f"{k}:".encode())]
        assert mine == list(range(per_thread))  # each thread's events in its order


def test_fast_queue_full_blocks_then_refuses_and_closed_refuses():
    q = MemoryQueue(max_records=2)
    q.append(b"a")
    q.append(b"b")
    with pytest.raises(SpoolFullError):
        q.append(b"c", timeout_s=0.05)
    q.ack(q.read(1)[1])  # one delivered: room for one
    q.append(b"c", timeout_s=5)
    q.close()
    with pytest.raises(SpoolError, match="closed"):
        q.append(b"d")


# -- a full disk: a write that stops part-way -------------------------------------

SHORT_WRITE = r"""
import json, resource, signal, sys
from upmetr_audit.shipper.spool import Spool, SpoolError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails, not the process
directory, interval = sys.argv[1], float(sys.argv[2])
spool = Spool(directory, segment_bytes=64 * 1024, sync_interval_s=interval)
hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
# Frames are 110 bytes: the file-size limit cuts the 10th one after 50 bytes,
# as a disk that fills up does (write(2) returns fewer bytes than asked).
resource.setrlimit(resource.RLIMIT_FSIZE, (9 * 110 + 50, hard))
ok, errors = [], {}
for i in range(30):
    if i == 10:
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space again
    try:
        spool.append(b"%04d" % i + b"x" * 96)
        ok.append(i)
    except SpoolError as exc:
        errors[i] = str(exc)
spool.close()
print(json.dumps({"ok": ok, "errors": errors}))
"""


@pytest.mark.parametrize("interval", [0, 0.05], ids=["durable", "interval-sync"])
def test_a_write_cut_short_fails_that_append_and_loses_no_other(tmp_path, interval, caplog):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", SHORT_WRITE, str(tmp_path), str(interval)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    result = json.loads(out)
    # Only the append whose write was cut short failed, and it said so; the
    # next one went to a new segment, not after the partial frame.
    assert list(result["errors"]) == ["9"]
    assert "wrote 50 of 110 bytes" in result["errors"]["9"]
    assert result["ok"] == [i for i in range(30) if i != 9]
    spool = Spool(tmp_path)
    assert drain(spool) == [b"%04d" % i + b"x" * 96 for i in result["ok"]]
    spool.close()


FULL_DISK = r"""
import json, logging, os, sys
from upmetr_audit.shipper.spool import Spool, SpoolError
disk = sys.argv[1]  # a 512 KiB tmpfs of its own
warnings = []
class Keep(logging.Handler):
    def emit(self, record):
        warnings.append(record.getMessage())
logging.getLogger("upmetr_audit.shipper.spool").addHandler(Keep(logging.WARNING))
spool = Spool(os.path.join(disk, "spool"), segment_bytes=100 * 1024, max_bytes=1 << 20,
              sync_interval_s=0.05)
fill(os.path.join(disk, "ballast"))  # the disk is full now
ok, errors = [], []
for i in range(2500):
    if i == 2000:
        os.unlink(os.path.join(disk, "ballast"))  # space again
    try:
        spool.append(b"%05d" % i + b"x" * 95)
        ok.append(i)
    except SpoolError as exc:
        errors.append((i, str(exc)))
spool.close()
spool = Spool(os.path.join(disk, "spool"))
read = []
while True:
    payloads, pos = spool.read(500)
    if not payloads:
        break
    read.extend(int(p[:5]) for p in payloads)
    spool.ack(pos)
spool.close()
print(json.dumps({"ok": ok, "errors": errors, "read": read, "warnings": warnings}))
"""


def test_a_full_disk_fails_appends_cleanly_and_loses_none_that_returned(tmp_path):
    result = run_on_a_small_disk(tmp_path, FULL_DISK)  # a real full disk
    ok, errors = result["ok"], dict(result["errors"])
    # The first segment's space was reserved when the spool opened: its
    # appends succeed on the full disk (100 KiB of 110-byte frames).
    assert ok[:900] == list(range(900))
    # Then appends fail, each with a clear error, and none is half-written
    # in a way that costs the others: one write was cut short part-way.
    assert errors and all(900 <= i < 2000 for i in errors)
    assert all("No space left on device" in e or "is the disk full?" in e for e in errors.values())
    assert any("is the disk full?" in e for e in errors.values())
    assert ok[-500:] == list(range(2000, 2500))  # space again: appends succeed
    assert result["read"] == ok  # every append that returned is delivered, in order
    # Losing the reservation (slower, locked appends) is said once, and so is
    # getting it back, however many segments the full disk went through.
    said = [w for w in result["warnings"] if "reserve" in w]
    assert len(said) == 2, result["warnings"]
    assert "cannot reserve disk space" in said[0] and "No space left on device" in said[0]
    assert "reserved again" in said[1]

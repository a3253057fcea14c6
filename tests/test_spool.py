"""The shipper's on-disk spool: durable appends, ordered reads, acks that
reclaim disk, torn tails skipped, bounded size."""

import os
import threading

import pytest

from upmetr_audit.shipper.spool import Spool, SpoolError, SpoolFullError


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

"""The spool: an append-only, checksummed, on-disk queue of audit events.

Layout of a spool directory::

    seg-0000000000000001.log   frames: MAGIC(2) length(4, LE) crc32(4, LE) payload
    seg-0000000000000002.log   ... one segment is written at a time, then the next
    cursor                     "<segment> <offset>": everything before it is acknowledged
    spool.lock                 flock: one process per spool

``append`` returns once the frame is written and fsynced. fsync is group
committed: concurrent appends that arrive while one fsync runs share the
next one. With ``sync_interval_s`` > 0, ``append`` returns once the frame is
written (in the kernel: it survives a crash of the process) and a background
thread fdatasyncs what was written every ``sync_interval_s`` (a power loss can
lose at most that much). A reader (the shipper's worker) reads frames in order from the
cursor and calls ``ack`` once the collector has committed them; fully
acknowledged segments are deleted. A torn or corrupt frame (a crash during a
write, a damaged disk) fails its checksum: the rest of that segment is skipped
with a warning and reading goes on with the next segment. Every run writes to
a new segment, so nothing is ever appended after a torn tail.

A full disk must not tear a frame in the middle of a segment: the frames
after it would be skipped with it. Each segment's disk space is reserved when
it is created (``fallocate`` keeping the file's size; given back when it is
sealed, or by the next run after a kill), so appends into it cannot run out
of space; a disk that is already full fails the reservation, and that
segment takes only locked appends. A write that still stops part-way fails
its append and seals the segment, so the next append starts a new one after
the partial frame.

With ``sync_interval_s`` > 0 an append takes no lock: every emitting thread
passes here, and a lock they contend makes CPython threads queue behind the
GIL (P5 in docs/benchmarks.md: 4 threads fell to 8k emits/s, p50 ~0.5 ms).
The frame goes to the end of the file in one ``write(2)`` on an ``O_APPEND``
descriptor, made without releasing the GIL (it copies a few hundred bytes
into the page cache), so frames never interleave. A writer announces itself
on the segment before it writes; a roll (or close) marks the segment sealed,
then waits for the writers already announced, and only then closes it and
lets the reader treat it as complete. The reader reads the active segment up
to its current size and stops at a frame not fully written yet.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import re
import struct
import threading
import time
import zlib
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAGIC = b"UA"
_HEADER = struct.Struct("<2sII")
_SEGMENT_RE = re.compile(r"^seg-(\d{16})\.log$")
MAX_FRAME_BYTES = 4 * 1024 * 1024


class SpoolError(OSError):
    """The spool directory cannot be used (permissions, disk full, locked)."""


class SpoolFullError(Exception):
    """The spool stayed full for the whole timeout; the event was not written."""


@dataclass(frozen=True, order=True)
class Position:
    segment: int
    offset: int


_libc = ctypes.PyDLL(None, use_errno=True)  # PyDLL: calls keep the GIL
_libc.write.restype = ctypes.c_ssize_t
_libc.write.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t)


def _write_keeping_gil(fd: int, data: bytes) -> int:
    """``write(2)`` of ``data`` without letting other threads run meanwhile.
    Returns the bytes written: fewer than asked when the disk fills up."""
    n = _libc.write(fd, data, len(data))
    if n < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return n


_libc_threads = ctypes.CDLL(None, use_errno=True)  # a call that may take a while
_fallocate = getattr(_libc_threads, "fallocate", None)
if _fallocate is not None:
    _fallocate.restype = ctypes.c_int
    _fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_FALLOC_FL_KEEP_SIZE = 1


def _reserve(fd: int, nbytes: int) -> str:
    """Reserve disk blocks for the next ``nbytes`` of an empty file without
    changing its size (Linux ``fallocate(FALLOC_FL_KEEP_SIZE)``), so appends
    into them cannot run out of space part-way. Returns "" when reserved, or
    why not: the disk is full, or the file system cannot reserve."""
    if _fallocate is None:
        return "this system has no fallocate(2)"
    if _fallocate(fd, _FALLOC_FL_KEEP_SIZE, 0, nbytes) == 0:
        return ""
    return os.strerror(ctypes.get_errno())


class _Segment:
    """The segment being written: its descriptor, the writers inside it,
    whether its disk space is reserved, and its size (exact in durable mode,
    which writes under the lock; an estimate with interval sync, used only to
    decide when to roll and the spool's soft size bound; the reader goes by
    the file's size)."""

    __slots__ = ("seq", "fd", "size", "writers", "sealed", "reserved")

    def __init__(self, seq: int, fd: int, reserved: bool):
        self.seq, self.fd, self.size, self.sealed, self.reserved = seq, fd, 0, False, reserved
        self.writers: list[None] = []  # list.append / pop are atomic under the GIL


def append_whole(path: str, text: str) -> None:
    """Append ``text`` to a line file (a dead-letter file) whole or not at
    all: when the write fails part-way (a full disk), the file is cut back to
    where it was, so no torn entry is left, and the ``OSError`` is raised."""
    data = memoryview(text.encode("utf-8"))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError:
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass  # as it is
            raise
    finally:
        os.close(fd)


def _segment_name(seq: int) -> str:
    return f"seg-{seq:016d}.log"


def encode_frame(payload: bytes) -> bytes:
    return _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


class Spool:
    def __init__(self, directory: str, *, max_bytes: int = 256 * 1024 * 1024,
                 segment_bytes: int = 8 * 1024 * 1024, fsync: bool = True,
                 sync_interval_s: float = 0.0):
        if max_bytes < segment_bytes or segment_bytes < 4096:
            raise ValueError("need segment_bytes >= 4096 and max_bytes >= segment_bytes")
        if not 0 <= sync_interval_s <= 60:
            raise ValueError("sync_interval_s must be between 0 and 60 seconds")
        self.directory = os.path.abspath(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        try:
            os.makedirs(self.directory, exist_ok=True)
            self._lock_fd = os.open(os.path.join(self.directory, "spool.lock"),
                                    os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(exc.errno, f"cannot use spool directory {self.directory}: "
                                        f"{exc.strerror}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolError(0, f"spool {self.directory} is in use by another process; "
                                f"give each process its own spool directory") from None
        self._lock = threading.Lock()               # guards writing and sizes
        self._space = threading.Condition(self._lock)
        self._sync_cond = threading.Condition()     # guards the group fsync
        self._syncing = False
        self._written = 0                           # bytes appended by this run
        self._reserving = True                      # did the last segment reserve its space?
        self._synced = 0
        self._cursor = self._load_cursor()
        segments = self._segments()
        self._sizes = {s: os.path.getsize(self._path(s)) for s in segments if s >= self._cursor.segment}
        for s in segments:
            if s < self._cursor.segment:
                self._unlink(s)
            else:  # a run that did not close its spool left the segment's reserved blocks
                self._give_back_reserved(self._path(s), self._sizes[s])
        # _sizes: the segments no longer written (this run's and earlier ones')
        self._seg = self._new_segment(max([*segments, self._cursor.segment, 0]) + 1)
        self._read_pos = self._cursor
        self._closed = False
        self._ack_lock = threading.Lock()  # an ack and close: one after the other
        self.sync_interval_s = sync_interval_s if fsync else 0.0
        self._stop_syncer = threading.Event()
        self._syncer = None
        if self.sync_interval_s:
            self._syncer = threading.Thread(target=self._sync_periodically, daemon=True,
                                            name=f"spool-sync {self.directory}")
            self._syncer.start()

    # -- paths and files ------------------------------------------------------

    def _path(self, seq: int) -> str:
        return os.path.join(self.directory, _segment_name(seq))

    def _segments(self) -> list[int]:
        return sorted(int(m.group(1)) for n in os.listdir(self.directory)
                      if (m := _SEGMENT_RE.match(n)))

    def _new_segment(self, seq: int) -> _Segment:
        try:
            fd = os.open(self._path(seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            if self.fsync:
                self._fsync_dir()
        except OSError as exc:
            raise SpoolError(exc.errno, f"cannot create a spool segment in {self.directory}: "
                                        f"{exc.strerror}") from None
        # The slack covers the size estimate's lost additions (interval sync).
        why_not = _reserve(fd, self.segment_bytes + 64 * 1024)
        if why_not and self._reserving:
            log.warning("spool %s: cannot reserve disk space for a new segment (%s); appends "
                        "take the lock, one at a time, until space can be reserved again",
                        self.directory, why_not)
        elif not why_not and not self._reserving:
            log.warning("spool %s: disk space reserved again for a new segment", self.directory)
        self._reserving = not why_not
        return _Segment(seq, fd, reserved=not why_not)

    @staticmethod
    def _give_back_reserved(path: str, size: int) -> None:
        """Free the blocks reserved beyond a segment's end (truncating a file
        to its own size does, and changes nothing else)."""
        try:
            os.truncate(path, size)
        except OSError:
            pass

    def _fsync_dir(self) -> None:
        dfd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _unlink(self, seq: int) -> None:
        try:
            os.unlink(self._path(seq))
        except FileNotFoundError:
            pass
        self._sizes.pop(seq, None)

    def _load_cursor(self) -> Position:
        try:
            with open(os.path.join(self.directory, "cursor")) as f:
                seg, off = f.read().split()
            return Position(int(seg), int(off))
        except FileNotFoundError:
            return Position(0, 0)
        except ValueError:
            log.warning("spool cursor is unreadable; re-sending the whole spool "
                        "(the collector de-duplicates)", extra={"spool": self.directory})
            return Position(0, 0)

    # -- writing --------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        """Bytes not yet acknowledged: delivered bytes at the start of the
        cursor's segment do not count (a spool whose segment is as large as
        the bound would otherwise stay full once that segment was written)."""
        cursor, seg = self._cursor, self._seg
        acked = cursor.offset if cursor.segment == seg.seq or cursor.segment in self._sizes else 0
        return sum(self._sizes.values()) + seg.size - acked

    def append(self, payload: bytes, timeout_s: float | None = 5.0) -> None:
        """Write one event and return once it is on disk (fsynced, if enabled).

        Blocks while the spool is full, up to ``timeout_s``, then raises
        :class:`SpoolFullError`. Disk errors raise :class:`SpoolError`.
        """
        if len(payload) > MAX_FRAME_BYTES:
            raise ValueError(f"event is {len(payload)} bytes; the limit is {MAX_FRAME_BYTES}")
        frame = encode_frame(payload)
        if self.sync_interval_s and self._append_unlocked(frame):
            return
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            while self.size_bytes + len(frame) > self.max_bytes:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise SpoolFullError(
                        f"spool {self.directory} is full ({self.size_bytes} of {self.max_bytes} "
                        f"bytes) and did not drain within {timeout_s:g}s; is the collector reachable?")
                self._space.wait(remaining)
            if self._closed:
                raise SpoolError(0, "the spool is closed")
            if self._seg.sealed or (self._seg.size
                                    and self._seg.size + len(frame) > self.segment_bytes):
                self._roll()
            try:
                n = os.write(self._seg.fd, frame)
            except OSError as exc:
                raise self._write_error(exc) from None
            if n < len(frame):
                raise self._cut_short(self._seg, n, len(frame))
            self._seg.size += len(frame)
            self._written += len(frame)
            mine = self._written
        if self.fsync and not self.sync_interval_s:
            self._sync_to(mine)

    def _write_error(self, exc: OSError) -> SpoolError:
        return SpoolError(exc.errno, f"cannot write to spool {self.directory}: {exc.strerror}")

    def _cut_short(self, seg: _Segment, written: int, wanted: int) -> SpoolError:
        """A write stopped part-way (the disk filled up). Nothing may follow
        the partial frame, or the reader would skip what follows as corrupt:
        seal the segment so the next append starts a new one. Holds ``_lock``."""
        seg.sealed = True
        if self._seg is seg and not self._closed:
            try:
                self._roll()
            except SpoolError:  # no new segment now: the next append tries again
                pass
        return SpoolError(0, f"cannot write to spool {self.directory}: wrote {written} of "
                             f"{wanted} bytes (is the disk full?); the event was not written")

    def _append_unlocked(self, frame: bytes) -> bool:
        """Append without the lock (interval sync). False when the locked path
        must do it: the segment has no reserved space, is sealed or full, the
        spool full or closed."""
        seg = self._seg
        seg.writers.append(None)
        try:
            if (not seg.reserved or seg.sealed or seg.size + len(frame) > self.segment_bytes
                    or self.size_bytes + len(frame) > self.max_bytes):
                return False
            try:
                n = _write_keeping_gil(seg.fd, frame)
            except OSError as exc:
                raise self._write_error(exc) from None
            if n == len(frame):
                # Estimates (two threads may add at once and one sum be lost):
                # they only decide when to roll and when the background sync runs.
                seg.size += len(frame)
                self._written += len(frame)
                return True
            seg.sealed = True  # at once: no other writer may start after the partial frame
        finally:
            seg.writers.pop()
        with self._lock:  # after leaving the segment: rolling waits for its writers
            raise self._cut_short(seg, n, len(frame))

    def _seal(self) -> None:
        """Stop writes to the active segment, wait for the writers inside it,
        sync and close it, and record its size. Holds ``_lock``."""
        seg = self._seg
        seg.sealed = True
        while seg.writers:  # announced before the seal: each finishes one write
            time.sleep(0)
        size = os.fstat(seg.fd).st_size
        if seg.reserved:
            self._give_back_reserved(self._path(seg.seq), size)
        if self.fsync:
            os.fsync(seg.fd)
        self._sizes[seg.seq] = size
        os.close(seg.fd)

    def _sync_periodically(self) -> None:
        while not self._stop_syncer.wait(self.sync_interval_s):
            written = self._written
            if written > self._synced:
                try:
                    self._sync_to(written)
                except OSError as exc:  # the segment was rolled or closed meanwhile
                    log.warning("spool %s: background sync failed: %s", self.directory, exc)

    def _roll(self) -> None:
        """Close the full segment (synced) and start the next one. Holds ``_lock``."""
        new = self._new_segment(self._seg.seq + 1)
        self._seal()
        self._seg = new

    def _sync_to(self, position: int) -> None:
        """Group commit: one fsync covers every append made before it started."""
        with self._sync_cond:
            while self._synced < position:
                if self._syncing:
                    self._sync_cond.wait()
                    continue
                self._syncing = True
                with self._lock:
                    fd, target = os.dup(self._seg.fd), self._written
                self._sync_cond.release()
                try:
                    os.fdatasync(fd)  # data and size; other metadata is not needed to read it back
                finally:
                    os.close(fd)
                    self._sync_cond.acquire()
                    self._syncing = False
                    self._sync_cond.notify_all()
                # Bytes in earlier segments were synced when they were rolled.
                self._synced = max(self._synced, target)

    # -- reading and acknowledging --------------------------------------------

    def read(self, max_records: int) -> tuple[list[bytes], Position]:
        """Up to ``max_records`` payloads after the last read, and the position
        after them (pass it to :meth:`ack` once they are delivered)."""
        out: list[bytes] = []
        pos = self._read_pos
        while len(out) < max_records:
            with self._lock:
                active, limit = self._seg.seq, self._sizes.get(pos.segment)
            if pos.segment == active:  # being written: up to its current size
                try:
                    limit = os.path.getsize(self._path(active))
                except FileNotFoundError:
                    break
            if limit is None:  # a segment that is gone or was never written
                if pos.segment >= active:
                    break
                pos = Position(pos.segment + 1, 0)
                continue
            payloads, pos, done = self._read_segment(pos, limit, max_records - len(out),
                                                     final=pos.segment < active)
            out.extend(payloads)
            if not done:
                break
            if pos.segment >= active:
                break
            pos = Position(pos.segment + 1, 0)
        self._read_pos = pos
        return out, pos

    def _read_segment(self, pos: Position, limit: int, n: int, final: bool):
        """Read frames of one segment from ``pos`` up to ``limit`` bytes.
        Returns (payloads, new position, segment finished)."""
        out = []
        offset = pos.offset
        with open(self._path(pos.segment), "rb") as f:
            f.seek(offset)
            while len(out) < n and offset < limit:
                header = f.read(_HEADER.size)
                if len(header) == _HEADER.size:
                    magic, length, crc = _HEADER.unpack(header)
                    payload = f.read(length) if magic == MAGIC and length <= MAX_FRAME_BYTES else b""
                    if magic == MAGIC and len(payload) == length and zlib.crc32(payload) == crc:
                        out.append(payload)
                        offset += _HEADER.size + length
                        continue
                    if (not final and magic == MAGIC and length <= MAX_FRAME_BYTES
                            and len(payload) < length):
                        break  # the active segment's last frame, not all written yet
                elif not final:
                    break
                log.warning("spool segment has a torn or corrupt frame; skipping the rest of it",
                            extra={"segment": self._path(pos.segment), "offset": offset,
                                   "skipped_bytes": limit - offset})
                return out, Position(pos.segment, limit), True
        return out, Position(pos.segment, offset), final and offset >= limit

    def rewind(self) -> None:
        """Read again from the last acknowledged position (after a failed send)."""
        self._read_pos = self._cursor

    def ack(self, pos: Position) -> bool:
        """Everything before ``pos`` is delivered: persist the cursor, delete
        fully delivered segments, and wake appends waiting for space. After
        :meth:`close` it does nothing and returns False: the spool is no
        longer this process's (another may have opened it), and the batch is
        sent again by the next one (the collector de-duplicates)."""
        with self._ack_lock:
            if self._closed:
                return False
            self._ack(pos)
            return True

    def _ack(self, pos: Position) -> None:
        tmp = os.path.join(self.directory, "cursor.tmp")
        with open(tmp, "w") as f:
            f.write(f"{pos.segment} {pos.offset}\n")
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.directory, "cursor"))
        with self._lock:
            self._cursor = pos
            for seq in [s for s in self._sizes if s < pos.segment]:
                self._unlink(seq)
            if pos.segment != self._seg.seq and self._sizes.get(pos.segment) == pos.offset:
                self._unlink(pos.segment)
            self._space.notify_all()

    def close(self) -> None:
        if self._syncer is not None:
            self._stop_syncer.set()
            self._syncer.join()
        with self._ack_lock, self._lock:  # after an ack under way, before the lock is let go
            if self._closed:
                return
            self._closed = True
            self._seal()
            self._space.notify_all()
        os.close(self._lock_fd)

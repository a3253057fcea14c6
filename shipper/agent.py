"""The log-shipping agent behind ``upmetr-audit ship``: tail JSON Lines files
of audit events and send them through the durable shipper.

One event per line, with the wire-contract names: ``event_name``, a time
(``time_unix_nano`` or ``timestamp``: nanoseconds, or an RFC 3339 string),
and the attributes (``log.record.uid``, ``upmetr.org.id``, ``user.email``,
``upmetr.audit.status``, ...) at the top level; any other key is kept as an
attribute. A line without ``log.record.uid`` gets one derived from the file
identity, offset and content, so that a line read twice is one event.

Files are polled, so every rotation style works: rename + create (the old
file is read to its end, then the new one from its start), copytruncate (a
file shorter than the offset is read again from its start), a file deleted
while open (read to its end), a partial last line (kept until its newline),
and new files matching the globs. A file rotated away or deleted is kept
open for ``rotate_wait_s`` after its last growth, as fluent-bit's
``Rotate_Wait`` does: a writer that still holds it may finish its last line
there. Checkpoints (device, inode, offset, and whether the rest of a line too
long is being skipped) are saved after the lines before them are spooled; after a restart reading
resumes there, and the collector de-duplicates what was read twice.

When the spool cannot take a line (a full disk), that file's reading stops at
the line, with a warning, and goes on from it at the next poll: the lines wait
in their file, none is dropped or spooled twice.
"""

from __future__ import annotations

import datetime as dt
import glob
import hashlib
import json
import logging
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass

from . import contract as c
from .spool import SpoolError, SpoolFullError, append_whole

log = logging.getLogger(__name__)
MAX_LINE_BYTES = 1024 * 1024
#: The first bytes of a file identify it with its (device, inode): an inode
#: reused by a new file, or a copytruncated file written again past the old
#: offset, starts with other bytes.
HEAD_BYTES = 1024


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _has_head(head: bytes, saved: dict) -> bool:
    """Whether ``head`` (a file's first bytes) are those its checkpoint saw."""
    return len(head) == saved["head_len"] and _digest(head) == saved["head_sha256"]


@dataclass
class _File:
    path: str
    dev: int
    ino: int
    offset: int
    fd: int | None = None
    partial: bytes = b""
    head: bytes = b""            # the file's first min(offset, HEAD_BYTES) bytes
    saved: dict | None = None    # its checkpoint, checked against the file when it is opened
    rotated: bool = False        # found rotated away at start-up: read to its end, then dropped
    skipping: bool = False       # after a line too long: skip to the next newline
    gone_since: float | None = None  # when it was first found read to its end and gone


def parse_time(value) -> int:
    if isinstance(value, bool) or value is None:
        raise ValueError("missing time: give time_unix_nano (ns) or timestamp (RFC 3339)")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"invalid time {value!r}")
        return int(value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, str):
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if when.tzinfo is None:
            raise ValueError(f"timestamp {value!r} has no time zone")
        return int(when.timestamp()) * 10**9 + when.microsecond * 1000
    raise ValueError(f"invalid time {value!r}")


def line_to_record(text: bytes, dev: int, ino: int, offset: int) -> tuple[str, dict, int]:
    """(event_name, attributes, time ns) of one line, or ``ValueError``."""
    try:
        event = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(event, dict):
        raise ValueError("a line must be a JSON object")
    event_name = event.pop("event_name", None)
    if not isinstance(event_name, str) or not event_name:
        raise ValueError("missing event_name")
    try:
        ts = parse_time(event.pop("time_unix_nano", event.pop("timestamp", None)))
    except (TypeError, OverflowError) as exc:
        raise ValueError(f"invalid time: {exc}") from None
    if not event.get(c.EVENT_ID):
        digest = bytearray(hashlib.sha256(f"{dev}:{ino}:{offset}:".encode() + text).digest()[:16])
        digest[6] = (digest[6] & 0x0F) | 0x80  # version 8: a custom, name-derived UUID
        digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
        event[c.EVENT_ID] = str(uuid.UUID(bytes=bytes(digest)))
    return event_name, event, ts


class Agent:
    def __init__(self, audit_logger, patterns: list[str], state_dir: str,
                 poll_interval_s: float = 0.5, checkpoint_every_s: float = 1.0,
                 rotate_wait_s: float = 5.0):
        self.audit = audit_logger
        self.patterns = patterns
        self.state_dir = state_dir
        os.makedirs(state_dir, exist_ok=True)
        self.checkpoint_path = os.path.join(state_dir, "checkpoints.json")
        self.dead_letter_path = os.path.join(state_dir, "dead-letter.jsonl")
        self.poll_interval_s = poll_interval_s
        self.checkpoint_every_s = checkpoint_every_s
        self.rotate_wait_s = rotate_wait_s
        self.files: dict[tuple[int, int], _File] = {}
        self.lines_read = self.shipped = self.dead_lettered = 0
        self.spool_error: str | None = None  # why reading waits, while the spool refuses
        self._saved = self._load_checkpoints()  # emptied by the first poll
        self._last_checkpoint = 0.0
        self._stop = threading.Event()  # run()'s: a full spool does not hold a stop up

    # -- checkpoints ------------------------------------------------------------

    def _load_checkpoints(self) -> dict[tuple[int, int], dict]:
        try:
            with open(self.checkpoint_path) as f:
                entries = json.load(f)
            return {(e["dev"], e["ino"]): {"path": str(e.get("path", "")), "offset": int(e["offset"]),
                                           "head_len": int(e.get("head_len", 0)),
                                           "head_sha256": str(e.get("head_sha256", _digest(b""))),
                                           "skipping": e.get("skipping") is True}
                    for e in entries}
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError):
            log.warning("checkpoint file unreadable; reading every file from its start "
                        "(the collector de-duplicates)", extra={"path": self.checkpoint_path})
            return {}

    def save_checkpoints(self) -> None:
        entries = [{"path": f.path, "dev": f.dev, "ino": f.ino, "offset": f.offset,
                    "head_len": len(f.head), "head_sha256": _digest(f.head), "skipping": f.skipping}
                   if f.saved is None else {"dev": f.dev, "ino": f.ino, **f.saved}  # not opened yet
                   for f in self.files.values()]
        tmp = self.checkpoint_path + ".tmp"
        try:
            with open(tmp, "w") as out:
                json.dump(entries, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.checkpoint_path)
        except OSError as exc:  # a full disk: the last checkpoint stays, and is tried again
            log.warning("cannot save the checkpoints; after a restart, lines since the last "
                        "saved ones are read again (the collector de-duplicates)",
                        extra={"path": self.checkpoint_path, "error": str(exc)})
            return
        self._last_checkpoint = time.monotonic()

    # -- discovery --------------------------------------------------------------

    def _discover(self) -> None:
        for pattern in self.patterns:
            for path in sorted(glob.glob(pattern)):
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                key = (st.st_dev, st.st_ino)
                known = self.files.get(key)
                if known is None:
                    if os.path.isfile(path):
                        self.files[key] = _File(path, *key, offset=0, saved=self._saved.pop(key, None))
                elif known.rotated or (known.path != path and not self._is_at(known, known.path)):
                    # At a name the globs match (rotated to one): the same file, read on where it was.
                    known.path, known.rotated = path, False

    def _find_rotated(self) -> None:
        """At start-up: a checkpointed file no glob matches any more was
        rotated away while the agent was stopped. Find it next to its old path
        (``<path>.*``, same device, inode and first bytes) and read it to its
        end; if it cannot be found, say that its unread lines are lost."""
        for (dev, ino), saved in self._saved.items():
            path = saved["path"]
            for candidate in [path, *sorted(glob.glob(glob.escape(path) + ".*"))] if path else []:
                try:
                    st = os.stat(candidate)
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) == (dev, ino) and self._same_head(candidate, saved):
                    log.info("a file rotated while the agent was stopped: reading it to its end",
                             extra={"path": candidate, "was": path})
                    self.files[(dev, ino)] = _File(candidate, dev, ino, 0, saved=saved, rotated=True)
                    break
            else:
                log.warning("a checkpointed file is gone (rotated away or deleted while the agent "
                            "was stopped); lines written to it after the checkpoint were not shipped",
                            extra={"path": path, "offset": saved["offset"]})
        self._saved = {}

    @staticmethod
    def _is_at(f: _File, path: str) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == (f.dev, f.ino)

    @staticmethod
    def _same_head(path: str, saved: dict) -> bool:
        try:
            with open(path, "rb") as fh:
                return _has_head(fh.read(saved["head_len"]), saved)
        except OSError:
            return False

    def _open(self, f: _File) -> bool:
        if f.fd is None:
            try:
                f.fd = os.open(f.path, os.O_RDONLY)
            except FileNotFoundError:
                return False
            if os.fstat(f.fd).st_ino != f.ino:  # replaced between stat and open
                os.close(f.fd)
                f.fd = None
                return False
            if f.saved is not None:
                self._resume(f)
        return True

    def _resume(self, f: _File) -> None:
        """Continue at the checkpoint if the file still starts with the bytes it
        had: a new file that reuses a deleted file's inode is read from its start."""
        saved, f.saved = f.saved, None
        head = os.pread(f.fd, saved["head_len"], 0)
        if _has_head(head, saved):
            f.offset, f.head, f.skipping = saved["offset"], head, saved["skipping"]
        else:
            log.warning("a checkpointed inode now holds another file; reading it from its start",
                        extra={"path": f.path})

    # -- reading ----------------------------------------------------------------

    def poll_once(self, stopping: bool = False) -> int:
        """Read every new complete line of every file; returns lines handled.
        ``stopping``: the last read before a stop. A deleted file is finished
        then without the rotate wait: after a restart it could not be found."""
        self._discover()
        if self._saved:
            self._find_rotated()
        handled = 0
        for key, f in list(self.files.items()):
            if not self._open(f):
                if not os.path.exists(f.path):
                    del self.files[key]
                continue
            size = os.fstat(f.fd).st_size
            # copytruncate: the file started over (and may be past the old offset already)
            if size < f.offset or (f.head and os.pread(f.fd, len(f.head), 0) != f.head):
                log.info("file was truncated; reading it from the start", extra={"path": f.path})
                f.offset, f.partial, f.head, f.skipping = 0, b"", b"", False
            handled += self._read(f)
            if len(f.head) < min(f.offset, HEAD_BYTES):
                f.head = os.pread(f.fd, min(f.offset, HEAD_BYTES), 0)
            if self._gone(f):
                now = time.monotonic()
                if f.gone_since is None:
                    f.gone_since = now
                deleted = stopping and os.fstat(f.fd).st_nlink == 0
                if (deleted or now - f.gone_since >= self.rotate_wait_s) and self._finish(f):
                    os.close(f.fd)
                    del self.files[key]
            else:
                f.gone_since = None
        if time.monotonic() - self._last_checkpoint >= self.checkpoint_every_s:
            self.save_checkpoints()
        return handled

    def _gone(self, f: _File) -> bool:
        """Read to the end and no longer at its path (rotated away or deleted)."""
        if os.fstat(f.fd).st_size > f.offset + len(f.partial):
            return False
        return f.rotated or not self._is_at(f, f.path)

    def _finish(self, f: _File) -> bool:
        """A file read to its end and gone: its last line, if it has no
        newline, is read as it is (nothing will complete it). False if the
        spool cannot take it now (the file is kept for the next poll)."""
        if not f.partial:
            return True
        log.warning("a rotated or deleted file ends without a newline; reading its last line "
                    "as it is", extra={"path": f.path, "offset": f.offset})
        try:
            self._handle(f, f.partial, f.offset)
        except SpoolError as exc:
            self._spool_refused(f, exc)
            return False
        f.offset += len(f.partial)
        f.partial = b""
        return True

    def _read(self, f: _File) -> int:
        handled = 0
        while True:
            chunk = os.pread(f.fd, 1024 * 1024, f.offset + len(f.partial))
            if not chunk:
                return handled
            if f.skipping:  # the rest of a line too long, already dead-lettered
                nl = chunk.find(b"\n")
                f.offset += len(chunk) if nl == -1 else nl + 1
                f.skipping = nl == -1
                continue
            data = f.partial + chunk
            start = 0
            try:
                while (nl := data.find(b"\n", start)) != -1:
                    self._handle(f, data[start:nl], f.offset + start)
                    start = nl + 1
                    handled += 1
            except SpoolError as exc:  # a full disk: this line and the rest wait in the file
                f.offset += start
                f.partial = b""
                self._spool_refused(f, exc)
                return handled
            if self.spool_error is not None and start:
                log.info("the spool takes events again; reading goes on", extra={"path": f.path})
                self.spool_error = None
            f.offset += start
            f.partial = data[start:]
            if len(f.partial) > MAX_LINE_BYTES:
                try:
                    self._dead(f, f.offset, f.partial[:200], f"line longer than {MAX_LINE_BYTES} bytes")
                except SpoolError as exc:  # read again from its start at the next poll
                    f.partial = b""
                    self._spool_refused(f, exc, counted=False)
                    return handled
                f.offset += len(f.partial)
                f.partial = b""
                f.skipping = True

    def _spool_refused(self, f: _File, exc: SpoolError, counted: bool = True) -> None:
        """The spool refused a line: it is read again at the next poll (and is
        not counted as read, if ``_handle`` had ``counted`` it)."""
        if counted:
            self.lines_read -= 1
        if self.spool_error is None:
            log.warning("the spool cannot take events; reading waits until it can",
                        extra={"error": str(exc), "path": f.path})
        self.spool_error = str(exc)

    def _handle(self, f: _File, text: bytes, offset: int) -> None:
        self.lines_read += 1
        if not text.strip():
            return
        try:
            event_name, attrs, ts = line_to_record(text, f.dev, f.ino, offset)
        except ValueError as exc:
            self._dead(f, offset, text, str(exc))
            return
        while True:
            try:
                self.audit.emit_record(event_name, attrs, ts)
                break
            except (ValueError, TypeError, OverflowError) as exc:  # a value that cannot be sent
                self._dead(f, offset, text, str(exc))
                return
            except SpoolFullError as exc:  # the collector is away: wait, never drop
                if self._stop.is_set():  # the line waits in its file for the next run
                    raise SpoolError(0, f"stopping while the spool is full: {exc}") from None
                log.warning("spool full; waiting before reading on", extra={"error": str(exc)})
        self.shipped += 1

    def _line_number(self, f: _File, offset: int) -> int:
        with open(f"/proc/self/fd/{f.fd}", "rb") as fh:
            return fh.read(offset).count(b"\n") + 1

    def _dead(self, f: _File, offset: int, text: bytes, error: str) -> None:
        """Append the line to the dead-letter file. When that cannot be written
        (a full disk), :class:`SpoolError`: the line waits in its file, like a
        line the spool refuses, and no partial entry is left behind."""
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "file": f.path,
                 "line": self._line_number(f, offset), "offset": offset, "error": error,
                 "text": text.decode("utf-8", "replace")}
        try:
            append_whole(self.dead_letter_path, json.dumps(entry, ensure_ascii=False) + "\n")
        except OSError as exc:
            raise SpoolError(exc.errno or 0, f"cannot write the dead-letter file "
                                             f"{self.dead_letter_path}: {exc.strerror or exc}") from None
        self.dead_lettered += 1
        log.warning("bad audit line sent to dead-letter", extra=entry)

    def run(self, stop: threading.Event, progress=None, progress_every_s: float = 5.0) -> None:
        last = time.monotonic()
        self._stop = stop
        try:
            while not stop.is_set():
                self.poll_once()
                if progress and time.monotonic() - last >= progress_every_s:
                    progress(self)
                    last = time.monotonic()
                stop.wait(self.poll_interval_s)
            if self.spool_error is None:  # a last read, unless the spool refuses lines
                self.poll_once(stopping=True)
        finally:
            self.save_checkpoints()
            for f in self.files.values():
                if f.fd is not None:
                    os.close(f.fd)
                    f.fd = None

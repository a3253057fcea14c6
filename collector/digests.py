"""The digest files: seals and erasure manifests published outside ClickHouse.

Append-only JSON Lines under ``<data dir>/digests/``, one file per month
(``digests-YYYY-MM.jsonl``, by the window start of a seal or the time of an
erasure), one JSON object per line with sorted keys. A batch of lines is
written with one ``write`` under an exclusive ``flock`` and fsynced before
the seals go to ClickHouse, so a crash leaves at worst lines whose rows a
rerun writes again, identically, and perhaps a last line cut short: the next
write starts on a new line, so the fragment stays one unreadable line (a
problem verify reports) and the new records are intact.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

FILE_RE = re.compile(r"^digests-(\d{4})-(\d{2})\.jsonl$")


def digests_dir_for(data_dir: str) -> str:
    return os.path.join(data_dir, "digests")


def file_for(us: int) -> str:
    d = dt.datetime.fromtimestamp(us / 1e6, dt.UTC)
    return f"digests-{d.year:04d}-{d.month:02d}.jsonl"


def dumps(obj: dict) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def append(digest_dir: str, lines: list[tuple[int, dict]]) -> None:
    """Append ``(time_us, object)`` lines to their monthly files, fsynced."""
    if not lines:
        return
    os.makedirs(digest_dir, exist_ok=True)
    by_file: dict[str, list[str]] = {}
    for us, obj in lines:
        by_file.setdefault(file_for(us), []).append(dumps(obj) + "\n")
    for name in sorted(by_file):
        fd = os.open(os.path.join(digest_dir, name), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = "".join(by_file[name]).encode()
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # end a line cut short by a crash: it stays one unreadable line
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
    dfd = os.open(digest_dir, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass(frozen=True)
class Line:
    file: str
    number: int
    obj: dict | None  # None: not a JSON object
    error: str = ""


def read(digest_dir: str) -> Iterator[Line]:
    """Every line of every digest file, in file (month) order then line order."""
    try:
        names = sorted(n for n in os.listdir(digest_dir) if FILE_RE.match(n))
    except FileNotFoundError:
        return
    for name in names:
        with open(os.path.join(digest_dir, name), "rb") as f:
            for number, raw in enumerate(f, 1):
                try:
                    obj = json.loads(raw)
                    if not isinstance(obj, dict):
                        raise ValueError("not a JSON object")
                except (ValueError, UnicodeDecodeError) as exc:
                    yield Line(name, number, None, f"{name} line {number} is not a digest record ({exc})")
                    continue
                yield Line(name, number, obj)

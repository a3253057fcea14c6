"""Secrets kept in the data dir: read one, or create it once with mode 0600."""

from __future__ import annotations

import os
import secrets


def read_or_create(path: str, nbytes: int = 32) -> str:
    """The secret stored at ``path``; a new random one (URL-safe text) if the
    file is missing or empty. Created with O_EXCL and mode 0600."""
    try:
        with open(path) as f:
            value = f.read().strip()
        if value:
            return value
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    value = secrets.token_urlsafe(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value

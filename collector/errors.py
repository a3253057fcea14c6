"""Typed errors. Library code raises these; only the CLI turns them into exit codes."""


class UpmetrAuditError(Exception):
    """Base class: the message says what went wrong and what to do."""


class ConfigError(UpmetrAuditError):
    """A setting is missing or invalid."""


class StoreLocked(UpmetrAuditError):
    """The embedded chDB folder is held by another process."""

    def __init__(self, path: str, pid: int | None, hint: str = ""):
        self.path, self.pid = path, pid
        holder = f"process {pid}" if pid else "another process"
        super().__init__(
            f"the embedded store {path} is locked by {holder} (an `upmetr-audit serve` or "
            f"`collector`?); a chDB folder can be opened by one process at a time: stop that "
            f"process, or run this command against a ClickHouse server with --clickhouse-url "
            f"http://host:8123" + (f"; {hint}" if hint else "")
        )


class RetentionError(UpmetrAuditError):
    """A retained table has a TTL or is not a MergeTree: audit data could be deleted."""


class SchemaError(UpmetrAuditError):
    """The database schema is missing or newer than this program."""

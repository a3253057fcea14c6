"""The ``upmetr-audit`` console script. The base install (the shipper) has no
click or ClickHouse client; say how to get them instead of a traceback."""

import sys

#: Libraries chDB and clickhouse-connect import only for their DataFrame and
#: Arrow APIs, which no command uses. Both treat them as optional (a failed
#: import turns those APIs off), and together they are ~80 MB of RSS in every
#: process that opens a store (P6 in docs/benchmarks.md).
UNUSED_LIBRARIES = ("pandas", "pyarrow", "polars", "numpy")


def skip_unused_libraries() -> None:
    """Make importing :data:`UNUSED_LIBRARIES` fail in this process (a
    ``None`` entry in ``sys.modules`` is Python's way to say "not available")."""
    for name in UNUSED_LIBRARIES:
        sys.modules.setdefault(name, None)


def main() -> None:
    skip_unused_libraries()
    try:
        from .cli import main as cli_main
    except ImportError as exc:
        sys.exit(f"upmetr-audit: the command needs the server extra ({exc.name} is missing): "
                 f"pip install 'upmetr-audit[server]'")
    cli_main()

"""The ``upmetr-audit`` console script. The base install (the shipper) has no
click or ClickHouse client; say how to get them instead of a traceback."""

import sys


def main() -> None:
    try:
        from .cli import main as cli_main
    except ImportError as exc:
        sys.exit(f"upmetr-audit: the command needs the server extra ({exc.name} is missing): "
                 f"pip install 'upmetr-audit[server]'")
    cli_main()

"""A WSGI app on waitress (a production threaded server), run in a thread,
with a shutdown that finishes running requests and returns at once."""

from __future__ import annotations

import threading

import waitress.server


class ThreadedServer:
    def __init__(self, app, host: str, port: int, *, name: str, threads: int = 8, **adjustments):
        # poll(), not select(): select() fails on descriptors above 1023, which a
        # long-running process with an embedded ClickHouse reaches.
        try:
            self.server = waitress.server.create_server(app, host=host, port=port, threads=threads,
                                                        ident="upmetr-audit", asyncore_use_poll=True,
                                                        **adjustments)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {host}:{port} for {name}: "
                                     f"{exc.strerror or exc}") from None
        self.port = int(self.server.effective_port)
        self._thread = threading.Thread(target=self.server.run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _close_all(self) -> None:
        for channel in list(self.server._map.values()):
            if channel is not self.server and channel is not self.server.trigger:
                channel.close()
        self.server.close()  # the listening socket and the trigger

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Finish running requests, then close the socket and every connection."""
        self.server.task_dispatcher.shutdown(timeout=timeout_s)
        # Close from inside the server's own loop thread, which then exits at once.
        self.server.trigger.pull_trigger(self._close_all)
        if self._thread.is_alive():
            self._thread.join(timeout_s)

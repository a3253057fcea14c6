"""Sealing and a cheap check of the new seals, on a schedule inside ``serve``.

Each tick seals every window that is due (:func:`sealing.seal_once`), then
verifies only the windows since the last check (one window of overlap, so
the chain link to the previous seal is checked too) and merges the outcome
into ``<data dir>/integrity/verify-latest.json``, which the page's badge
reads. A problem, once found, stays in that file until a full
``upmetr-audit verify`` (which rewrites it) comes out clean.
"""

from __future__ import annotations

import logging
import threading
import time

from . import digests, keys, sealing
from . import verify as verify_mod

log = logging.getLogger("upmetr_audit.integrity")


def _now_us() -> int:
    return time.time_ns() // 1000


def _once(problems: list[str]) -> list[str]:
    return list(dict.fromkeys(problems))


def merge(previous: dict | None, new: verify_mod.VerifyResult, since_us: int | None) -> dict:
    """The badge's record after an incremental check: problems are sticky."""
    fresh = new.to_json()
    fresh["scope"] = "full" if since_us is None else "incremental"
    if previous is None or since_us is None:
        return fresh
    before = previous.get("org_problems", {})
    checked_again = {(w["org_id"], w["window_start_us"]) for w in fresh["windows"]}
    bad_windows = [w for w in previous.get("windows", []) if w["status"] not in verify_mod.OK_STATUSES
                   and (w["org_id"], w["window_start_us"]) not in checked_again]
    return {
        **fresh,
        "ok": previous.get("ok", True) and fresh["ok"],
        "through_us": fresh["through_us"] or previous.get("through_us"),
        # A problem found again by the next check is listed once.
        "problems": _once(previous.get("problems", []) + fresh["problems"]),
        "org_problems": {o: _once(before.get(o, []) + fresh["org_problems"].get(o, []))
                         for o in {*before, *fresh["org_problems"]}},
        "windows": bad_windows + fresh["windows"],
        "events_checked": previous.get("events_checked", 0) + fresh["events_checked"],
    }


class IntegrityJob:
    """``serve``'s sealer: every ``interval_s``, seal what is due, then check it."""

    def __init__(self, client, data_dir: str, *, interval_s: float = 300.0,
                 window_us: int = sealing.DEFAULT_WINDOW_US, grace_us: int = sealing.DEFAULT_GRACE_US):
        self.client = client
        self.data_dir = data_dir
        self.interval_s = interval_s
        self.window_us, self.grace_us = window_us, grace_us
        keys.load_or_generate(keys.keys_dir_for(data_dir), _now_us())  # serve's first run makes the key
        self.keys = keys.KeyringFile(keys.keys_dir_for(data_dir))  # reloaded after `keys rotate`
        self.digest_dir = digests.digests_dir_for(data_dir)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sealer", daemon=True)

    def run_once(self, now_us: int | None = None) -> dict:
        now_us = now_us or _now_us()
        ring = self.keys.current()  # after the clock reading: a key retired later signs only older windows
        run = sealing.seal_once(self.client, ring, self.digest_dir, now_us,
                                window_us=self.window_us, grace_us=self.grace_us)
        previous = verify_mod.latest_result(self.data_dir)
        since = None
        # A new org with events before the horizon (back-dated): check everything,
        # since the incremental check would not reach back to them.
        if previous and previous.get("through_us") and not run.backdated:
            since = previous["through_us"] - self.window_us
        result = verify_mod.verify(self.client, ring, self.digest_dir, now_us, since_us=since)
        record = merge(previous, result, since)
        verify_mod.save_latest(self.data_dir, record)
        if run.seals or not result.ok:
            log.info("sealed and checked", extra={"sealed": len(run.seals), "ok": record["ok"],
                                                  "summary": result.summary()})
        return record

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.run_once()
            except Exception:  # a failed tick must not stop serve; the next one retries
                log.exception("sealing or checking failed")
            self.stop_event.wait(self.interval_s)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(120)

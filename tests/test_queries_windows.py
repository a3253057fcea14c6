"""Newest-first reads try a 28-day, then a 168-day window below the top of the
page before the unbounded query (web/queries.py WINDOWS_US). Whichever
query answers, a page must be exactly the full order's slice."""

from datetime import UTC, datetime, timedelta

from test_queries import insert, spec

from upmetr_audit.web import queries as Q
from upmetr_audit.web.queries import parse_filters

NOW = datetime.now(UTC).replace(microsecond=0)
#: Ages in days: inside the first window, the second, and beyond both.
AGES = [0.1 * i for i in range(12)] + [30 + 10 * i for i in range(12)] + [170 + 15 * i for i in range(12)]


def _all_pages(store, args: dict, per_page: int = 25) -> list[str]:
    ids, cursor = [], ""
    while True:
        page = Q.list_events(store.client, "org-w", parse_filters({**args, "cursor": cursor,
                                                                   "per_page": str(per_page)}))
        ids += [e["event_id"] for e in page.events]
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


def test_pages_across_the_windows_equal_the_full_order(store):
    events = insert(store, [spec(org="org-w", ts=NOW - timedelta(days=age, seconds=k), status=st)
                            for age in AGES for k, st in enumerate(("success", "failure"))])
    newest_first = [e["id"] for e in sorted(events, key=lambda e: (e["ts"], e["id"]), reverse=True)]
    assert _all_pages(store, {}) == newest_first
    failed = [e["id"] for e in sorted(events, key=lambda e: (e["ts"], e["id"]), reverse=True)
              if e["status"] == "failure"]
    assert _all_pages(store, {"status": "failure"}) == failed
    # a first page that the 28-day window cannot fill, nor the 168-day one
    assert _all_pages(store, {"status": "failure"}, per_page=50) == failed
    until = (NOW - timedelta(days=100)).isoformat()
    assert _all_pages(store, {"until": until}) == [
        e["id"] for e in sorted(events, key=lambda e: (e["ts"], e["id"]), reverse=True)
        if e["ts"] < NOW - timedelta(days=100)]

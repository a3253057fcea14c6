"""Graceful shutdown: stop accepting, finish in-flight batches, then stop."""

import threading

from helpers import audit_attrs, count, otlp_request, post, wait_for


def test_shutdown_commits_in_flight_batches_and_refuses_new_ones(make_gated_collector, store):
    col = make_gated_collector()
    gate = col.gate
    results = []
    body = otlp_request([{"attrs": audit_attrs()} for _ in range(3)]).SerializeToString()
    inflight = threading.Thread(target=lambda: results.append(post(col.logs_url, body)[0]))
    inflight.start()
    assert gate.holding.wait(10)

    stopped = []
    stopper = threading.Thread(target=lambda: stopped.append(col.shutdown(timeout_s=30)))
    stopper.start()
    wait_for(lambda: not col.ready)
    # while draining, the receivers still answer, but ask for a retry
    late = otlp_request([{"attrs": audit_attrs()}]).SerializeToString()
    status, headers, _ = post(col.logs_url, late)
    assert status == 503 and headers["Retry-After"]

    gate.gate.set()
    inflight.join(30)
    stopper.join(30)
    assert results == [200] and stopped == [True]
    assert count(store) == 3
    assert col.shutdown() is True  # idempotent

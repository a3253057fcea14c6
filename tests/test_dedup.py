"""No duplicates: retries and overlapping batches store each event once."""

import threading

from helpers import audit_attrs, otlp_request, post


def invariant(store):
    return store.client.query(
        "SELECT count(), uniqExact(event_id) FROM audit.audit_events").result_rows[0]


def test_resent_batch_is_acknowledged_and_not_stored_twice(collector, store):
    body = otlp_request([{"attrs": audit_attrs()} for _ in range(50)]).SerializeToString()
    for _ in range(3):
        assert post(collector.logs_url, body)[0] == 200
    assert invariant(store) == (50, 50)
    assert collector.summary()["duplicates"] == 100


def test_duplicate_inside_one_request_is_stored_once(collector, store):
    attrs = audit_attrs()
    body = otlp_request([{"attrs": attrs}, {"attrs": attrs}]).SerializeToString()
    assert post(collector.logs_url, body)[0] == 200
    assert invariant(store) == (1, 1)


def test_concurrent_overlapping_batches_store_each_event_once(collector, store):
    shared = [{"attrs": audit_attrs()} for _ in range(200)]
    bodies = [otlp_request(shared[i * 50:i * 50 + 150]
                           + [{"attrs": audit_attrs()} for _ in range(20)]).SerializeToString()
              for i in range(2)] * 4  # 8 requests, every shared event sent several times
    results = []
    threads = [threading.Thread(target=lambda b=b: results.append(post(collector.logs_url, b)[0]))
               for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [200] * 8
    # 200 shared ids appear in these bodies: ids 0..149 and 50..199 → all 200; plus 2×20 own ids
    assert invariant(store) == (240, 240)


def test_same_event_id_in_another_org_is_a_different_event(collector, store):
    a = audit_attrs()
    b = dict(a, **{"upmetr.org.id": "org-b"})
    assert post(collector.logs_url, otlp_request([{"attrs": a}]).SerializeToString())[0] == 200
    assert post(collector.logs_url, otlp_request([{"attrs": b}]).SerializeToString())[0] == 200
    (n,) = store.client.query("SELECT count() FROM audit.audit_events").result_rows[0]
    assert n == 2

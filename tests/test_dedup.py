"""No duplicates: retries and overlapping batches store each event once."""

import threading
import time

from helpers import audit_attrs, otlp_request, post

TS = time.time_ns() - 3600 * 10**9


def invariant(store):
    return store.client.query(
        "SELECT count(), uniqExact(event_id) FROM audit.audit_events").result_rows[0]


def test_resent_batch_is_acknowledged_and_not_stored_twice(collector, store):
    body = otlp_request([{"attrs": audit_attrs()} for _ in range(50)]).SerializeToString()
    for _ in range(3):
        assert post(collector.logs_url, body)[0] == 200
    assert invariant(store) == (50, 50)
    assert collector.summary()["duplicates"] == 100


def test_a_record_sent_without_any_time_is_stored_once_however_often_it_is_resent(collector, store):
    # Stored with the time it was received, so each resend has another time.
    body = otlp_request([{"attrs": audit_attrs(), "time_unix_nano": 0,
                          "observed_time_unix_nano": 0}]).SerializeToString()
    for _ in range(3):
        assert post(collector.logs_url, body)[0] == 200
    assert invariant(store) == (1, 1)
    assert collector.summary()["duplicates"] == 2


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


def test_event_id_is_the_key_across_orgs_and_requests(collector, store):
    a = audit_attrs()
    b = dict(a, **{"upmetr.org.id": "org-b"})
    one_request = otlp_request([{"attrs": a, "time_unix_nano": TS},
                                {"attrs": b, "time_unix_nano": TS}])
    assert post(collector.logs_url, one_request.SerializeToString())[0] == 200
    later = otlp_request([{"attrs": b, "time_unix_nano": TS}])
    assert post(collector.logs_url, later.SerializeToString())[0] == 200
    assert invariant(store) == (1, 1)
    assert collector.summary()["duplicates"] == 2


def test_upper_and_lower_case_spellings_of_one_id_are_one_event(collector, store):
    a = audit_attrs()
    upper = dict(a, **{"log.record.uid": a["log.record.uid"].upper()})
    for attrs in (a, upper):
        assert post(collector.logs_url, otlp_request([{"attrs": attrs, "time_unix_nano": TS}])
                    .SerializeToString())[0] == 200
    assert invariant(store) == (1, 1)


def test_ids_at_the_edges_of_the_128_bit_range_are_found_again(collector, store):
    # The lookup sends each id as its 128-bit number: leading and trailing zero
    # bytes, and the largest value, must come back as the same UUID.
    edges = ["00000000-0000-0000-0000-000000000000", "00000000-0000-0000-0000-000000000001",
             "01000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff",
             "0000ffff-0000-ffff-0000-ffff0000ff00"]
    body = otlp_request([{"attrs": audit_attrs(**{"log.record.uid": e}), "time_unix_nano": TS}
                         for e in edges]).SerializeToString()
    for _ in range(2):
        assert post(collector.logs_url, body)[0] == 200
    assert invariant(store) == (5, 5)
    assert collector.summary()["duplicates"] == 5
    stored = {r[0] for r in store.client.query(
        "SELECT toString(event_id) FROM audit.audit_events").result_rows}
    assert stored == set(edges)

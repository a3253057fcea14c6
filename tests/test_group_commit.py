"""Group commit: the requests that queue while ClickHouse commits go in one
INSERT, and the writer waits a little for more only while waiting pays (a
lone client never waits twice). The real exporter and store, behind a gate."""

import threading

import pytest

from upmetr_audit.collector.metrics import Metrics
from upmetr_audit.collector.pipeline import ExportFailed, Pipeline
from upmetr_audit.collector.processors import to_batch

from helpers import GatedExporter, audit_attrs, count, otlp_request, wait_for


class GroupRecorder(GatedExporter):
    """The gated real exporter, noting how many requests each INSERT holds."""

    def __init__(self, client, metrics):
        super().__init__(client, metrics)
        self.groups = []

    def export(self, batches):
        self.groups.append(len(batches))
        super().export(batches)


def batch(records=1):
    return to_batch(otlp_request([{"attrs": audit_attrs()} for _ in range(records)]))


@pytest.fixture
def make_pipeline(store):
    made = []

    def make(**kwargs):
        exporter = GroupRecorder(store.client, Metrics())
        pipeline = Pipeline(exporter, Metrics(), **kwargs)
        pipeline.start()
        made.append((pipeline, exporter))
        return pipeline, exporter

    yield make
    for pipeline, exporter in made:
        exporter.gate.set()
        pipeline.shutdown(10)


def hold_first_commit(pipeline, exporter):
    """Start one request and hold its commit; returns its thread."""
    first = threading.Thread(target=pipeline.export, args=(batch(),))
    first.start()
    assert exporter.holding.wait(10)
    return first


def two_queued_behind_a_commit(pipeline, exporter):
    """Two requests queue while a first one commits; the commit then ends, so
    the writer finds the two. Returns their pending handles."""
    first = hold_first_commit(pipeline, exporter)
    queued = [pipeline.submit(batch()), pipeline.submit(batch())]
    exporter.gate.set()
    first.join(10)
    return queued


def test_requests_queued_during_a_commit_and_during_the_wait_share_one_insert(make_pipeline, store):
    pipeline, exporter = make_pipeline(group_wait_s=60, max_batch_records=4)
    queued = two_queued_behind_a_commit(pipeline, exporter)  # two found: the writer waits
    wait_for(lambda: pipeline.waiting_for_more)
    queued.append(pipeline.submit(batch(2)))  # fills the group (4 records): no more waiting
    for pending in queued:
        pipeline.wait(pending, 20)
    assert exporter.groups == [1, 3]
    assert count(store) == 5


def test_a_lone_client_never_waits_for_more(make_pipeline, store):
    pipeline, exporter = make_pipeline(group_wait_s=60)
    exporter.gate.set()
    for _ in range(3):
        pipeline.export(batch(), timeout_s=20)  # would raise ExportFailed after a 60 s wait
    assert exporter.groups == [1, 1, 1]
    assert count(store) == 3


def test_after_a_wait_that_brought_nobody_the_writer_stops_waiting(make_pipeline, store):
    pipeline, exporter = make_pipeline(group_wait_s=3)
    queued = two_queued_behind_a_commit(pipeline, exporter)
    for pending in queued:  # committed after a 3 s wait that nobody joined
        pipeline.wait(pending, 20)
    pipeline.export(batch(), timeout_s=2)  # a lone request again: no 3 s wait
    assert exporter.groups == [1, 2, 1]


def test_shutdown_during_the_wait_commits_at_once(make_pipeline, store):
    pipeline, exporter = make_pipeline(group_wait_s=60)
    queued = two_queued_behind_a_commit(pipeline, exporter)
    wait_for(lambda: pipeline.waiting_for_more)
    assert pipeline.shutdown(20)
    for pending in queued:
        pipeline.wait(pending, 1)
    assert count(store) == 3


def test_a_negative_wait_is_refused(store):
    with pytest.raises(ValueError, match="group_wait_s"):
        Pipeline(GroupRecorder(store.client, Metrics()), Metrics(), group_wait_s=-1)


def test_a_commit_that_fails_fails_every_request_of_its_group(make_pipeline, store):
    pipeline, exporter = make_pipeline(group_wait_s=60, max_batch_records=2)
    first = hold_first_commit(pipeline, exporter)
    queued = [pipeline.submit(batch()), pipeline.submit(batch())]
    store.client.command("ALTER TABLE audit.audit_events MODIFY SETTING parts_to_throw_insert = 1")
    exporter.gate.set()  # the first commits; the next INSERT hits TOO_MANY_PARTS
    first.join(10)
    for pending in queued:
        with pytest.raises(ExportFailed):
            pipeline.wait(pending, 20)
    assert exporter.groups == [1, 2, 1, 1]  # the group, then each request on its own


def test_a_request_clickhouse_refuses_fails_alone_and_its_group_is_committed(make_pipeline, store):
    pipeline, exporter = make_pipeline(group_wait_s=60, max_batch_records=3)
    first = hold_first_commit(pipeline, exporter)
    poisoned = batch()
    poisoned.rows[0][5] = -1  # a value the UInt8 SeverityNumber column cannot hold
    queued = [pipeline.submit(batch()), pipeline.submit(poisoned), pipeline.submit(batch())]
    exporter.gate.set()
    first.join(10)
    pipeline.wait(queued[0], 20)
    with pytest.raises(ExportFailed, match="SeverityNumber"):
        pipeline.wait(queued[1], 20)
    pipeline.wait(queued[2], 20)
    assert exporter.groups == [1, 3, 1, 1, 1]
    assert count(store) == 3  # the first request and the poisoned one's two neighbours

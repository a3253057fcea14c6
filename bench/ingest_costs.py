"""P1's cost breakdown: where the collector's CPU goes, per event and step.

``python -m bench.ingest_costs --events N --batch B --seed S --end-us E``
prints one JSON object. P1 runs it in a subprocess (a process opens one chDB
store) on the same request bodies it sends to the collector. CPU time is
``time.process_time`` of the whole process, so chDB's own threads count.
Each figure is given for one request per INSERT (the writer when one client
sends) and for :data:`GROUP` requests per INSERT (the writer's group commit
with P1's four connections), the latter on a second set of bodies of the
same shape with other event ids, so that its de-dup finds nothing either.

Steps of the collector, on the P1 bodies, in order:

* ``decode``: ``otlp.decode_request``;
* ``to_batch``: ``processors.to_batch`` (routing, AnyValue as text, the
  contract's verdict, the rows);
* ``background``: what chDB's own threads did while this thread decoded and
  converted (merges and other background work of the INSERTs before); the
  two steps above count only this thread's CPU (``time.thread_time``);
* ``dedup``: the exporter's look-up of the ids already stored;
* ``insert``: the INSERT into ``audit_ingest``: the client's serialization,
  both views (verdict, mapping) and the new part of ``audit_events``;
* ``merges``: the background merges still running after the last INSERT,
  until none is left (merges during the INSERTs are in ``insert``).

Two comparisons in the same store and run:

* ``insert_without_views``: the same rows into a Null table with the same
  columns and no views: the serialization and ClickHouse's reading of the
  block, so ``insert`` minus it is what the views and the part cost;
* ``clickhouse_decodes``: the request bytes read by ClickHouse itself
  (``file(…, 'ProtobufSingle')`` with :data:`PROTO`, a subset of the OTLP
  logs schema), flattened with ``ARRAY JOIN`` and AnyValue as text in SQL,
  and INSERTed into ``audit_ingest`` (the same views and part), plus the
  merges after. It is the floor of the redesign that P1's notes describe
  (docs/benchmarks.md), not a working route: it has no de-dup, no
  partial-success counts and no fallback for doubles, arrays, maps or a
  repeated key, so a real route costs more.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

from upmetr_audit.collector import otlp, schema
from upmetr_audit.collector import store as store_mod
from upmetr_audit.collector.cluster import literal
from upmetr_audit.collector.exporters import ClickHouseExporter
from upmetr_audit.collector.metrics import Metrics
from upmetr_audit.collector.processors import to_batch

#: The OTLP logs messages, fields as upstream numbers them, reduced to what
#: the rows need; ``array_value`` and ``kvlist_value`` are declared ``bytes``
#: (their wire type is the same) so that ClickHouse only notes their presence.
PROTO = """syntax = "proto3";
message AnyValue {
  oneof value {
    string string_value = 1; bool bool_value = 2; int64 int_value = 3; double double_value = 4;
    bytes array_value = 5; bytes kvlist_value = 6; bytes bytes_value = 7;
  }
}
message KeyValue { string key = 1; AnyValue value = 2; }
message Resource { repeated KeyValue attributes = 1; }
message InstrumentationScope { string name = 1; string version = 2; repeated KeyValue attributes = 3; }
message LogRecord {
  fixed64 time_unix_nano = 1; fixed64 observed_time_unix_nano = 11; int32 severity_number = 2;
  string severity_text = 3; AnyValue body = 5; repeated KeyValue attributes = 6; fixed32 flags = 8;
  bytes trace_id = 9; bytes span_id = 10; string event_name = 12;
}
message ScopeLogs {
  InstrumentationScope scope = 1; repeated LogRecord log_records = 2; string schema_url = 3;
}
message ResourceLogs { Resource resource = 1; repeated ScopeLogs scope_logs = 2; string schema_url = 3; }
message ExportLogsServiceRequest { repeated ResourceLogs resource_logs = 1; }
"""

_KINDS = ("'none' = 0, 'string_value' = 1, 'bool_value' = 2, 'int_value' = 3, 'double_value' = 4, "
          "'array_value' = 5, 'kvlist_value' = 6, 'bytes_value' = 7")
_ANY = (f"Tuple(string_value String, bool_value Bool, int_value Int64, double_value Float64, "
        f"array_value String, kvlist_value String, bytes_value String, value Enum8({_KINDS}))")
_KVS = f"Array(Tuple(key String, value {_ANY}))"
#: The request as ClickHouse reads it (names match the .proto's fields).
STRUCTURE = (
    f"resource_logs Array(Tuple(resource Tuple(attributes {_KVS}), scope_logs Array(Tuple("
    f"scope Tuple(name String, version String, attributes {_KVS}), log_records Array(Tuple("
    f"time_unix_nano UInt64, observed_time_unix_nano UInt64, severity_number Int32, "
    f"severity_text String, body {_ANY}, attributes {_KVS}, flags UInt32, trace_id String, "
    f"span_id String, event_name String)), schema_url String)), schema_url String))")


def _as_string(v: str) -> str:
    """pcommon's AsString for the scalar kinds; a double, array or map fails the query."""
    return (f"multiIf({v}.value = 'string_value', {v}.string_value, {v}.value = 'none', '', "
            f"{v}.value = 'bool_value', if({v}.bool_value, 'true', 'false'), "
            f"{v}.value = 'int_value', toString({v}.int_value), "
            f"{v}.value = 'bytes_value', base64Encode({v}.bytes_value), "
            f"toString(throwIf(toUInt8({v}.value) > 0, 'not handled by this probe')))")


def _map(kvs: str) -> str:
    return (f"CAST(mapFromArrays(arrayMap(kv -> kv.key, {kvs}), "
            f"arrayMap(kv -> {_as_string('kv.value')}, {kvs})), 'Map(LowCardinality(String), String)')")


def _hex_id(raw: str) -> str:
    return f"if(trim(BOTH '\\0' FROM {raw}) = '', '', lower(hex({raw})))"


def clickhouse_decodes_sql(path: str) -> str:
    """INSERT INTO audit_ingest from the request in file ``path``, mapped as ``to_batch`` maps it."""
    ts = ("if(r.time_unix_nano != 0, r.time_unix_nano, if(r.observed_time_unix_nano != 0, "
          "r.observed_time_unix_nano, toUInt64(toUnixTimestamp64Nano(now64(9)))))")
    resource = _map("rl.resource.attributes")
    columns = {
        "Timestamp": f"fromUnixTimestamp64Nano(toInt64(if({ts} > 9223372036854775807, 1, {ts})), 'UTC')",
        "TraceId": _hex_id("r.trace_id"), "SpanId": _hex_id("r.span_id"),
        "TraceFlags": "toUInt8(bitAnd(r.flags, 255))", "SeverityText": "r.severity_text",
        "SeverityNumber": "toUInt8(least(greatest(r.severity_number, 0), 255))",
        "ServiceName": f"{resource}['service.name']", "Body": _as_string("r.body"),
        "ResourceSchemaUrl": "rl.schema_url", "ResourceAttributes": resource,
        "ScopeSchemaUrl": "sl.schema_url", "ScopeName": "sl.scope.name",
        "ScopeVersion": "sl.scope.version", "ScopeAttributes": _map("sl.scope.attributes"),
        "LogAttributes": _map("r.attributes"), "EventName": "r.event_name",
    }
    assert tuple(columns) == schema.INGEST_COLUMNS
    select = ", ".join(f"{sql} AS {name}" for name, sql in columns.items())
    return (f"INSERT INTO {schema.INGEST_TABLE} ({', '.join(columns)}) SELECT {select} "
            f"FROM file({literal(path)}, 'ProtobufSingle', {literal(STRUCTURE)}) "
            "ARRAY JOIN resource_logs AS rl ARRAY JOIN rl.scope_logs AS sl "
            "ARRAY JOIN sl.log_records AS r "
            f"SETTINGS format_schema_source = 'string', format_schema = {literal(PROTO)}, "
            "format_schema_message_name = 'ExportLogsServiceRequest', "
            "input_format_protobuf_oneof_presence = 1")


def _settle(client) -> None:
    """Until no merge runs (polled: ClickHouse has no event to wait on)."""
    while client.query("SELECT count() FROM system.merges").result_rows[0][0]:
        time.sleep(0.02)


#: Requests per INSERT in the grouped figures: P1's connections, each of which
#: has one request waiting while a commit runs (the writer's group wait).
GROUP = 4


def _ours(client, bodies, group: int, steps: dict) -> list:
    """Our path over ``bodies``, ``group`` requests per INSERT; adds CPU seconds to ``steps``."""
    exporter = ClickHouseExporter(client, Metrics())
    cpu = time.process_time
    lookup = exporter._stored_ids

    def timed_lookup(*args):
        t0 = cpu()
        try:
            return lookup(*args)
        finally:
            steps["dedup"] += cpu() - t0

    exporter._stored_ids = timed_lookup
    batches = []
    for i in range(0, len(bodies), group):
        converted = []
        for _, body in bodies[i:i + group]:
            p0, t0 = cpu(), time.thread_time()
            request = otlp.decode_request(body, otlp.PROTOBUF)
            t1 = time.thread_time()
            converted.append(to_batch(request))
            t2 = time.thread_time()
            steps["decode"] += t1 - t0
            steps["to_batch"] += t2 - t1
            steps["background"] += (cpu() - p0) - (t2 - t0)
        t0 = cpu()
        exporter.export(converted)
        steps["insert"] += cpu() - t0
        batches.extend(converted)
    t0 = cpu()
    _settle(client)
    steps["merges"] += cpu() - t0
    steps["insert"] -= steps["dedup"]
    return batches


def _clickhouse_decodes(client, folder: str, n: int, group: int) -> tuple[float, float]:
    """(INSERT, merges after) CPU seconds of the probe over the ``n`` request
    files in ``folder``, ``group`` files per INSERT (a glob: ``request-{0,1}.pb``)."""
    statements = [clickhouse_decodes_sql(os.path.join(
        folder, "request-{" + ",".join(str(k) for k in range(i, min(i + group, n))) + "}.pb"))
        for i in range(0, n, group)]  # built before the clock starts
    cpu = time.process_time
    t0 = cpu()
    for sql in statements:
        client.command(sql)
    t1 = cpu()
    _settle(client)
    return t1 - t0, cpu() - t1


def measure(bodies: list[tuple[int, bytes]], other: list[tuple[int, bytes]], tmp: str) -> dict:
    """``bodies`` one request per INSERT, then ``other`` (the same shape, other
    event ids) :data:`GROUP` requests per INSERT."""
    events = sum(n for n, _ in bodies)
    if sum(n for n, _ in other) != events:
        raise ValueError("the two body sets must hold as many events")
    store = store_mod.open_store(store_mod.default_url(os.path.join(tmp, "data")))
    try:
        client = store.client
        store_mod.migrate(client)
        steps = dict.fromkeys(("decode", "to_batch", "background", "dedup", "insert", "merges"), 0.0)
        batches = _ours(client, bodies, 1, steps)
        grouped = dict.fromkeys(steps, 0.0)
        _ours(client, other, GROUP, grouped)

        client.command(f"CREATE TABLE {schema.DATABASE}.probe_no_views AS {schema.INGEST_TABLE} "
                       "ENGINE = Null")
        types = ClickHouseExporter(client, Metrics())._ingest_column_types()
        t0 = time.process_time()
        for batch in batches:
            client.insert(f"{schema.DATABASE}.probe_no_views", list(zip(*batch.rows, strict=True)),
                          column_names=schema.INGEST_COLUMNS, column_type_names=types,
                          column_oriented=True)
        no_views = time.process_time() - t0

        for i, (_, body) in enumerate(bodies):
            with open(os.path.join(tmp, f"request-{i}.pb"), "wb") as f:
                f.write(body)
        before = client.query(f"SELECT count() FROM {schema.EVENTS_TABLE}").result_rows[0][0]
        probe = _clickhouse_decodes(client, tmp, len(bodies), 1)
        probe_grouped = _clickhouse_decodes(client, tmp, len(bodies), GROUP)
        stored = client.query(f"SELECT count() FROM {schema.EVENTS_TABLE}").result_rows[0][0] - before
        if stored != 2 * events:
            raise RuntimeError(f"the ClickHouse-decodes probe stored {stored} of {2 * events} events")
    finally:
        store.close()

    def us(seconds: float) -> float:
        return round(seconds / events * 1e6, 2)

    def per_cpu_s(seconds: float) -> int:
        return round(events / seconds)

    total, grouped_total = sum(steps.values()), sum(grouped.values())
    return {"events": events, "requests": len(bodies), "group": GROUP,
            "steps_us": {k: us(v) for k, v in steps.items()},
            "total_us": us(total), "events_per_cpu_s": per_cpu_s(total),
            "grouped_steps_us": {k: us(v) for k, v in grouped.items()},
            "grouped_total_us": us(grouped_total), "grouped_events_per_cpu_s": per_cpu_s(grouped_total),
            "insert_without_views_us": us(no_views),
            "clickhouse_decodes_us": {"insert": us(probe[0]), "merges": us(probe[1]),
                                      "total": us(sum(probe))},
            "clickhouse_decodes_events_per_cpu_s": per_cpu_s(sum(probe)),
            "clickhouse_decodes_grouped_us": us(sum(probe_grouped)),
            "clickhouse_decodes_grouped_events_per_cpu_s": per_cpu_s(sum(probe_grouped))}


def main(argv: list[str] | None = None) -> None:
    from . import ingest  # here: ``bench.ingest`` runs this module as a subprocess

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--end-us", type=int, required=True)
    a = p.parse_args(argv)
    bodies = ingest.build_bodies(a.events, a.seed, a.end_us, a.batch)
    other = ingest.build_bodies(a.events, a.seed + 1, a.end_us, a.batch)
    tmp = tempfile.mkdtemp(prefix="upmetr-bench-costs-")
    try:
        # chDB keeps a schema given as a string in ./__cache__: keep it in the temp folder
        os.chdir(tmp)
        print(json.dumps(measure(bodies, other, tmp)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The acceptance rules exist twice: in Python (contract.reject_reason, used by
the collector and the shipper) and in SQL (schema.REJECT_RULES, applied by the
materialized views to whatever writes the ingest table). This runs both on the
same records and requires the same verdict for each."""

import json
import random
import time

import pytest

from upmetr_audit.collector import schema
from upmetr_audit.collector import store as store_mod
from upmetr_audit.collector.exporters import ClickHouseExporter
from upmetr_audit.collector.metrics import Metrics
from upmetr_audit.collector.processors import to_batch
from upmetr_audit.shipper import contract as c

from helpers import audit_attrs, count, otlp_request

NOW = time.time_ns()

IDS = ["3F2504E0-4F89-11D3-9A0C-0305E82C3301", "3f2504e04f8911d39a0c0305e82c3301",
       "{3f2504e0-4f89-11d3-9a0c-0305e82c3301}", "urn:uuid:3f2504e0-4f89-11d3-9a0c-0305e82c3301",
       "", "not-a-uuid", "3f2504e0-4f89-11d3-9a0c-0305e82c330", "3f2504e0-4f89-11d3-9a0c-0305e82c3301 ",
       "3f2504e0-4f89-11d3-9a0c-0305e82c3301\n"]
IPS = ["1.2.3.4", "01.2.3.4", "1.2.3", "256.1.1.1", "::1", "::ffff:1.2.3.4", "fe80::1%eth0",
       "2001:db8::1/64", " 1.2.3.4", "1.2.3.4:80", "[::1]", "localhost", "2001:0db8:0000::1",
       "::", "1:2:3:4:5:6:7:8:9", "0.0.0.0", "1.2.3.4.5", "::ffff:999.1.1.1", "", "1.2.3.04",
       "::ffff:01.2.3.4", "1::1.2.3.00", "64:ff9b::1.2.3.4", "::0123", "2001:db8::1:0"]
STATUSES = ["success", "failure", "SUCCESS", "", "failure ", "ok"]
CHANGES = ['{}', '{"a": {"before": 1, "after": 2}}', "[]", '"x"', "{bad", "NaN", '{"a": NaN}',
           '{"a": 1} trailing', ' {"a": 1} ', "null", '{"a": Infinity}', "", "{\"a\":\"\\u00e9\"}",
           '{"a": 1e999}', '{"a": -1e999}', '{"a": "\\ud800"}', '{"a": "\\ud83d\\ude00"}',
           '{"a": 1e308}', '{"a": 123456789012345678901234567890}',
           '\ufeff{"a": 1}', ' \ufeff{"a": 1}', '{"a": "\ufeff"}',
           '{"a": ' * 63 + '[1]' + '}' * 63, '{"a": ' * 64 + '[1]' + '}' * 64,  # 64 and 65 deep
           '{"a": ' * 1010 + '1' + '}' * 1010, '{"s": "}}}]]][[[{{{\\"", "t": [{}]}']
TIMES = [1, c.MIN_TIMESTAMP_NS - 1, c.MIN_TIMESTAMP_NS, NOW, NOW + 2 * 86_400 * 10**9,
         NOW + 3600 * 10**9, 2**63 - 1]
ORG_USER = [("", "a@b.c"), ("o", ""), ("o", "a@b.c")]


def cases():
    out = []
    for uid in IDS:
        out.append(("upmetr.audit.auth.login", audit_attrs(**{c.EVENT_ID: uid}), NOW))
    for ip in IPS:
        out.append(("upmetr.audit.auth.login", audit_attrs(**{c.CLIENT_ADDRESS: ip}), NOW))
    for status in STATUSES:
        out.append(("upmetr.audit.auth.logout", audit_attrs(**{c.STATUS: status}), NOW))
    for changes in CHANGES:
        out.append(("upmetr.audit.settings.update", audit_attrs(**{c.CHANGES: changes}), NOW))
    for t in TIMES:
        out.append(("upmetr.audit.auth.login", audit_attrs(), t))
    for org, user in ORG_USER:
        out.append(("upmetr.audit.auth.login", audit_attrs(**{c.ORG_ID: org, c.USER_EMAIL: user}), NOW))
    for name in ["upmetr.audit.auth.teleport", "upmetr.audit.", "upmetr.audit.auth.login.x",
                 "upmetr.audit.AUTH.LOGIN", "upmetr.audit.auth"]:
        out.append((name, audit_attrs(), NOW))
    for rtype, rid in [(None, None), ("monitor", ""), ("", "m1"), ("incident", "m1"),
                       ("monitor", "m1"), ("Monitor", "m1")]:
        out.append(("upmetr.audit.monitor.delete", audit_attrs(**{
            c.RESOURCE_TYPE: rtype, c.RESOURCE_ID: rid, c.STATUS: "success"}), NOW))
    # a no-resource action may still name a resource
    out.append(("upmetr.audit.auth.login", audit_attrs(**{c.RESOURCE_TYPE: "x", c.RESOURCE_ID: "y"}), NOW))
    return out


def test_python_and_sql_rules_give_the_same_verdict(store):
    records = [{"event_name": name, "attrs": attrs, "time_unix_nano": t, "body": f"case-{i}"}
               for i, (name, attrs, t) in enumerate(cases())]
    batch = to_batch(otlp_request(records), now_ns=NOW)
    python = {}
    for row in batch.rows:
        attrs, ts = row[schema.INGEST_COLUMNS.index("LogAttributes")], row[0]
        python[row[schema.INGEST_COLUMNS.index("Body")]] = c.reject_reason(
            row[-1], attrs, ts, NOW) or ""
    store.client.insert(schema.INGEST_TABLE, batch.rows, column_names=schema.INGEST_COLUMNS)
    sql = {d["body"]: "" for (d,) in store.client.query(
        "SELECT details FROM audit.audit_events").result_rows}
    for reason, raw in store.client.query("SELECT reason, raw FROM audit.audit_rejects").result_rows:
        sql[json.loads(raw)["Body"]] = reason
    assert len(python) == len(records) == len(sql)
    mismatches = {k: (python[k], sql[k]) for k in python if python[k] != sql[k]}
    assert mismatches == {}, [(cases()[int(k[5:])], v) for k, v in mismatches.items()]
    # the corpus exercises every rule
    assert set(python.values()) - {""} == {r for r, _ in schema.REJECT_RULES}


@pytest.mark.parametrize("reason", [r for r, _ in schema.REJECT_RULES])
def test_every_sql_rule_has_a_python_twin(reason):
    assert reason in vars(c.Reason).values()


def _ip_corpus(n=3000, seed=7):
    """IPv4, IPv6 and IPv6 with a dotted quad, with and without leading zeros."""
    rng = random.Random(seed)
    octet = lambda: rng.choice([str(rng.randrange(256)), f"0{rng.randrange(10)}", "00", "256"])  # noqa: E731
    group = lambda: format(rng.choice([0, 1, 0xFFFF, rng.randrange(65536)]), rng.choice(["x", "04x"]))  # noqa: E731
    out = set()
    for _ in range(n):
        quad = ".".join(octet() for _ in range(4))
        out.add(rng.choice([quad, rng.choice(["::ffff:", "::", "1::", "64:ff9b::", "1:2:3:4:5:6:"]) + quad,
                            ":".join(group() for _ in range(rng.randrange(3, 10))),
                            ":".join(group() for _ in range(3)) + "::" + group()]))
    return sorted(out)


def test_python_and_sql_agree_on_which_addresses_are_malformed(store):
    corpus = _ip_corpus()
    (cond,) = [cond for reason, cond in schema.REJECT_RULES if reason == c.Reason.MALFORMED_IP]
    sql = store.client.query(
        f"SELECT groupArray(({cond})::Bool) FROM (SELECT map('{c.CLIENT_ADDRESS}', ip) AS LogAttributes "
        "FROM (SELECT arrayJoin({ips:Array(String)}) AS ip))", parameters={"ips": corpus},
    ).result_rows[0][0]
    mismatches = [(ip, bad) for ip, bad in zip(corpus, sql, strict=True) if bad == c.is_valid_ip(ip)]
    assert mismatches == []
    assert 0.2 < sum(sql) / len(corpus) < 0.8  # the corpus has both kinds


def _before_migration_9(select: str) -> str:
    """A view's query with the rules as they were: no leading-zero octets in
    a dotted quad inside IPv6, and changes up to 4,096 levels deep."""
    return (select.replace(f"OR match(extract(LogAttributes['{c.CLIENT_ADDRESS}']",
                           "AND match(extract(LogAttributes['x']")
            .replace(f"<= {c.MAX_CHANGES_DEPTH}", "<= 4096"))


def test_migration_9_gives_a_store_s_views_the_current_rules(store):
    client = store.client
    for view in (schema.EVENTS_VIEW, schema.REJECTS_VIEW):
        (select,) = client.query("SELECT as_select FROM system.tables WHERE database = 'audit' "
                                 "AND name = {name:String}",
                                 parameters={"name": view.split(".")[1]}).result_rows[0]
        client.command(f"ALTER TABLE {view} MODIFY QUERY {_before_migration_9(select)}")
    client.command(f"ALTER TABLE {schema.MIGRATIONS_TABLE} DELETE WHERE version = 9 "
                   "SETTINGS mutations_sync = 2")
    deep = '{"a": ' * 70 + '1' + '}' * 70

    def verdicts():
        records = [{"attrs": audit_attrs(**{c.CLIENT_ADDRESS: "::ffff:01.2.3.4"})},
                   {"event_name": "upmetr.audit.settings.update", "attrs": audit_attrs(**{c.CHANGES: deep})}]
        client.insert(schema.INGEST_TABLE, to_batch(otlp_request(records)).rows,
                      column_names=schema.INGEST_COLUMNS)
        return sorted(r for (r,) in client.query("SELECT reason FROM audit.audit_rejects").result_rows)

    assert verdicts() == []  # the old rules let both through
    assert store_mod.migrate(client) == [9]
    client.command("TRUNCATE TABLE audit.audit_rejects")
    assert verdicts() == [c.Reason.INVALID_CHANGES, c.Reason.MALFORMED_IP]


def test_a_time_near_the_future_bound_is_judged_as_of_the_insert_like_clickhouse_does(store):
    # The request arrived 10 s ago (it waited in the queue); its first record
    # was 5 s too far in the future then, and is not any more at the INSERT,
    # when ClickHouse judges it. The answer must say where it is stored.
    now = time.time_ns()
    arrived = now - 10 * 10**9
    bound = c.MAX_FUTURE_NS
    batch = to_batch(otlp_request([
        {"attrs": audit_attrs(), "time_unix_nano": now + bound - 5 * 10**9},
        {"attrs": audit_attrs(), "time_unix_nano": now + bound + 3600 * 10**9},  # still too far
        {"event_name": "upmetr.audit.settings.update", "attrs": audit_attrs(**{c.CHANGES: "[]"}),
         "time_unix_nano": now + bound - 5 * 10**9},  # in time now, but it breaks the next rule
    ]), now_ns=arrived)
    assert batch.rejected == {c.Reason.ABSURD_TIMESTAMP: 3}
    ClickHouseExporter(store.client, Metrics()).export([batch])
    assert batch.rejected == {c.Reason.ABSURD_TIMESTAMP: 1, c.Reason.INVALID_CHANGES: 1}
    assert count(store) == 1 and count(store, "audit.audit_rejects") == 2

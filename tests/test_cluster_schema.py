"""`db schema`: the one-server DDL is what migrate runs; the cluster DDL is
parsed by ClickHouse's own parser (chDB) and its structure asserted, for every
table the migrations create (so later migrations are covered too)."""

import re

import pytest
from click.testing import CliRunner

from upmetr_audit.collector import cluster, schema
from upmetr_audit.collector import store as store_mod
from upmetr_audit.collector.cli import cli
from upmetr_audit.collector.cluster import ClusterSchemaError

C = "prod"


def split_script(text: str) -> list[str]:
    """Statements of a rendered script (each ends with ';' at a line end)."""
    out = []
    for chunk in re.split(r";\n", text):
        lines = [ln for ln in chunk.splitlines() if not ln.startswith("--")]
        if "\n".join(lines).strip():
            out.append("\n".join(lines).strip())
    return out


def fmt(client, sql: str) -> str:
    return client.query("SELECT formatQuery({q:String})", parameters={"q": sql}).result_rows[0][0]


def ast(client, sql: str) -> list[str]:
    return [r[0] for r in client.query(f"EXPLAIN AST {sql}").result_rows]


@pytest.fixture
def fresh(tmp_path):
    s = store_mod.open_store(f"chdb://{tmp_path}/ch")
    yield s
    s.close()


def _create_queries(client) -> dict[str, str]:
    rows = client.query("SELECT name, create_table_query FROM system.tables "
                        "WHERE database = 'audit' ORDER BY name").result_rows
    return dict(rows)


def test_plain_schema_is_exactly_what_migrate_runs(fresh):
    out = CliRunner().invoke(cli, ["db", "schema"])
    assert out.exit_code == 0, out.output
    printed = split_script(out.output)
    assert printed == [s.strip() for s in cluster.plain_statements()]
    for stmt in printed:
        fresh.client.command(stmt)
    by_script = _create_queries(fresh.client)
    fresh.client.command("DROP DATABASE audit SYNC")
    store_mod.migrate(fresh.client)
    by_migrate = _create_queries(fresh.client)
    assert by_script == by_migrate
    assert set(by_script) >= {t.name for t in cluster.tables()}


def test_every_table_is_placed():
    placed = {t.name: t.placement for t in cluster.tables()}
    assert placed["audit_events"] == placed["audit_rejects"] == cluster.SHARDED
    assert placed["audit_ingest"] == cluster.INGEST
    for name in ("catalog_actions", "schema_migrations", "users", "orgs", "api_tokens"):
        assert placed[name] == cluster.EVERYWHERE
    for t in cluster.tables():  # the rule, for tables added later (alerts, seals, ...)
        if t.engine == "MergeTree" and "org_id" in t.columns:
            assert t.placement == cluster.SHARDED, t.name


def _by_kind(client, statements):
    """formatQuery every statement, then index the CREATEs by object name."""
    creates = {}
    everywhere = {t.name for t in cluster.tables() if t.placement == cluster.EVERYWHERE}
    for sql in statements:
        f = fmt(client, sql)
        if f.startswith("INSERT INTO"):  # into replicated-everywhere tables, once, on one node
            assert re.match(r"INSERT INTO audit\.(\w+)", f)[1].removesuffix("_staging") in everywhere
            continue
        assert f"ON CLUSTER {C}" in f, f[:120]
        m = re.match(r"CREATE (?:TABLE|MATERIALIZED VIEW) (?:IF NOT EXISTS )?audit\.(\w+)", f)
        if m:
            creates[m[1]] = f
    return creates


def test_cluster_ddl_parses_and_has_the_cluster_structure(store):
    statements = cluster.cluster_statements(C)
    creates = _by_kind(store.client, statements)
    for t in cluster.tables():
        if t.placement == cluster.SHARDED:
            local = creates[t.name + "_local"]
            assert f"ENGINE = Replicated{t.engine}('/clickhouse/tables/{{uuid}}/{{shard}}', " \
                   "'{replica}'" in local
            dist = creates[t.name]
            assert f"ENGINE = Distributed({C}, audit, {t.name}_local, cityHash64(org_id))" in dist
            assert f"AS audit.{t.name}_local" in dist
        elif t.placement == cluster.EVERYWHERE:
            assert f"{t.name}_local" not in creates
            assert f"ENGINE = Replicated{t.engine}('/clickhouse/tables/{{uuid}}/all', " \
                   "'{shard}_{replica}'" in creates[t.name]
        else:
            assert re.search(r"ENGINE = `?Null`?\s*$", creates[t.name + "_local"])
            assert (f"ENGINE = Distributed({C}, audit, {t.name}_local, "
                    f"cityHash64(LogAttributes['upmetr.org.id']))") in creates[t.name]
    # The parser's AST: the storage of a local table is the Replicated function.
    lines = ast(store.client, next(s for s in statements if "audit_events_local ON" in s))
    engine = lines[lines.index(next(x for x in lines if x.strip().startswith("Storage"))) + 1]
    assert engine.strip().startswith("Function ReplicatedMergeTree")


def test_views_run_on_every_shard_against_local_tables(store):
    statements = cluster.cluster_statements(C)
    placed = {t.name: t.placement for t in cluster.tables()}
    views = [fmt(store.client, s) for s in statements if "MATERIALIZED VIEW" in s]
    assert len(views) == sum("MATERIALIZED VIEW" in s for s in cluster.plain_statements()) >= 2
    for v in views:
        for ref in set(re.findall(r"\baudit\.(\w+)", v)):
            if ref.endswith("_local"):
                assert placed[ref.removesuffix("_local")] in (cluster.SHARDED, cluster.INGEST)
            elif ref in placed:  # the view's own name is not a table
                assert placed[ref] == cluster.EVERYWHERE, (ref, v[:80])
    assert any("TO audit.audit_events_local" in v and "FROM audit.audit_ingest_local" in v
               for v in views)


def test_one_org_lands_on_one_shard(store):
    """The ingest rows are sharded by the org the views store as org_id, so a
    view writes into the local table of the shard that owns the org."""
    assert cluster.ingest_sharding_key() == f"cityHash64({schema.EVENT_COLUMNS_SQL['org_id']})"
    key = cluster.ingest_sharding_key()
    orgs = ["org-a", "org-b", "ünïcode", ""]
    for org in orgs:
        (ingest_hash,) = store.client.query(
            f"SELECT {key} FROM (SELECT CAST(map('upmetr.org.id', {{o:String}}), "
            "'Map(LowCardinality(String), String)') AS LogAttributes)", parameters={"o": org}
        ).result_rows[0]
        (events_hash, rejects_hash) = store.client.query(
            "SELECT cityHash64(toLowCardinality({o:String})), cityHash64({o:String})",
            parameters={"o": org}).result_rows[0]
        assert ingest_hash == events_hash == rejects_hash


_DISTRIBUTED = {t.name for t in cluster.tables() if t.placement != cluster.EVERYWHERE}


def _single_node(sql: str) -> str | None:
    """The shard-local half of a cluster statement, runnable without Keeper:
    no ON CLUSTER, the non-replicated engine; Distributed tables left out."""
    if "Distributed(" in sql or sql.startswith("SYSTEM SYNC REPLICA"):
        return None
    m = re.match(r"ALTER TABLE audit\.(\w+) ", sql)
    if m and m[1] in _DISTRIBUTED:
        return None
    sql = sql.replace(f" ON CLUSTER {C}", "")
    return re.sub(r"Replicated(\w*MergeTree)\('[^']*', '[^']*'(?:, )?", r"\1(", sql)


def test_shard_local_half_routes_rows_and_loads_the_catalog(fresh):
    """What runs on each shard, with the replication stripped, works on chDB:
    rows inserted into audit_ingest_local reach the local events/rejects
    tables, and the catalog swap loaded every action."""
    from upmetr_audit.collector.processors import to_batch

    from helpers import audit_attrs, otlp_request

    for sql in cluster.cluster_statements(C):
        local = _single_node(sql)
        if local:
            fresh.client.command(local)
    (n,) = fresh.client.query("SELECT count() FROM audit.catalog_actions").result_rows[0]
    assert n == len(store_mod.catalog_rows())
    batch = to_batch(otlp_request([{"attrs": audit_attrs(**{"upmetr.org.id": "org-z"})},
                                   {"attrs": audit_attrs(**{"log.record.uid": "nope"})}]))
    fresh.client.insert("audit.audit_ingest_local", batch.rows,
                        column_names=list(schema.INGEST_COLUMNS))
    assert fresh.client.query("SELECT org_id FROM audit.audit_events_local").result_rows == [("org-z",)]
    assert fresh.client.query("SELECT reason FROM audit.audit_rejects_local").result_rows == [
        ("invalid event id",)]
    versions = fresh.client.query("SELECT version FROM audit.schema_migrations").result_rows
    assert sorted(v for (v,) in versions) == [m.version for m in schema.MIGRATIONS]
    # Re-running the script is harmless: no duplicate migration records.
    for sql in cluster.cluster_statements(C):
        local = _single_node(sql)
        if local:
            fresh.client.command(local)
    assert len(fresh.client.query("SELECT version FROM audit.schema_migrations").result_rows) == len(
        schema.MIGRATIONS)


def test_no_ttl_anywhere(store):
    for sql in cluster.cluster_statements(C) + cluster.plain_statements():
        if sql.lstrip().startswith("CREATE"):
            assert not any("TTL" in line for line in ast(store.client, sql)), sql[:80]
            assert " TTL " not in fmt(store.client, sql)


def test_catalog_literals_round_trip(store):
    hostile = "it's a \\ back'slash\n\t' OR 1=1 --"
    (got,) = store.client.query(f"SELECT {cluster.literal(hostile)}").result_rows[0]
    assert got == hostile


@pytest.mark.parametrize("name", ["", "a b", "x;DROP TABLE audit.audit_events", "1abc", "c'", "ü"])
def test_hostile_cluster_names_are_refused(name):
    with pytest.raises(ClusterSchemaError, match="invalid cluster name"):
        cluster.cluster_statements(name)
    out = CliRunner().invoke(cli, ["db", "schema", "--cluster", name])
    assert out.exit_code == 1 and out.output.startswith("Error: invalid cluster name")
    assert out.output.count("\n") == 1


def test_a_new_per_org_table_is_covered_without_code_changes(monkeypatch):
    extra = schema.Migration(99, "widgets", (
        "\nCREATE TABLE IF NOT EXISTS audit.widgets (\n    org_id String,\n    n UInt8\n"
        ") ENGINE = MergeTree ORDER BY org_id",
        "\nALTER TABLE audit.widgets ADD COLUMN IF NOT EXISTS m UInt8"))
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, extra))
    out = "\n".join(cluster.cluster_statements(C))
    assert "CREATE TABLE IF NOT EXISTS audit.widgets_local ON CLUSTER prod" in out
    assert "Distributed(prod, audit, widgets_local, cityHash64(org_id))" in out
    assert "ALTER TABLE audit.widgets_local ON CLUSTER prod ADD COLUMN" in out
    assert "ALTER TABLE audit.widgets ON CLUSTER prod ADD COLUMN" in out


@pytest.mark.parametrize("stmt,match", [
    ("DROP TABLE audit.audit_events", "no cluster form"),
    ("\nCREATE TABLE IF NOT EXISTS audit.x (a UInt8) ENGINE = Memory", "no replicated form"),
    ("ALTER TABLE audit.nope ADD COLUMN a UInt8", "unknown table"),
])
def test_unknown_statement_shapes_fail_loudly(monkeypatch, stmt, match):
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, schema.Migration(99, "x", (stmt,))))
    with pytest.raises(ClusterSchemaError, match=match):
        cluster.cluster_statements(C)

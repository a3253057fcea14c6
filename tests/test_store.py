"""The ClickHouse store: migrations, the retention guard, the catalog table, the lock."""

import os
import subprocess
import sys
import textwrap

import pytest

from upmetr_audit.collector import schema
from upmetr_audit.collector import store as store_mod
from upmetr_audit.collector.app import Collector, CollectorSettings
from upmetr_audit.collector.errors import ConfigError, RetentionError, SchemaError, StoreLocked
from upmetr_audit.shipper.catalog import ACTIONS

SETTINGS = CollectorSettings(otlp_http_addr="127.0.0.1:0", otlp_grpc_addr="127.0.0.1:0",
                             insecure_no_auth=True)


def test_migrate_is_idempotent_and_recorded(store):
    assert store_mod.migrate(store.client) == []  # the fixture already migrated
    assert store_mod.applied_versions(store.client) == [m.version for m in schema.MIGRATIONS]
    (n,) = store.client.query(f"SELECT count() FROM {schema.MIGRATIONS_TABLE}").result_rows[0]
    assert n == len(schema.MIGRATIONS)


def test_audit_events_is_a_mergetree_without_ttl(store):
    states = {t.name: t for t in store_mod.table_states(store.client)}
    for name in schema.RETAINED_TABLES:
        assert states[name].engine == "MergeTree"
        assert states[name].ttl is None and states[name].problem is None
    assert states["audit_ingest"].engine == "Null"
    ddl = store.client.command("SHOW CREATE TABLE audit.audit_events")
    assert "ORDER BY (org_id, timestamp, event_id)" in ddl
    assert "PARTITION BY toYYYYMM(timestamp)" in ddl


def test_collector_refuses_to_start_when_someone_added_a_ttl(store):
    store.client.command(
        "ALTER TABLE audit.audit_events MODIFY TTL toDateTime(timestamp) + INTERVAL 90 DAY")
    with pytest.raises(RetentionError, match="audit_events has a TTL"):
        Collector(store, SETTINGS)
    with pytest.raises(RetentionError, match="REMOVE TTL"):
        store_mod.check_retention(store.client)
    store.client.command("ALTER TABLE audit.audit_events REMOVE TTL")
    store_mod.check_retention(store.client)  # fine again


@pytest.mark.parametrize("engine", ["Memory", "ReplacingMergeTree ORDER BY x",
                                    "CollapsingMergeTree(s) ORDER BY x"])
def test_collector_refuses_a_table_that_could_lose_rows(store, engine):
    store.client.command("DROP TABLE audit.audit_rejects")
    store.client.command(f"CREATE TABLE audit.audit_rejects (x UInt8, s Int8) ENGINE = {engine}")
    with pytest.raises(RetentionError, match="not a plain MergeTree"):
        Collector(store, SETTINGS)


def test_collector_refuses_a_column_ttl(store):
    store.client.command("ALTER TABLE audit.audit_events MODIFY COLUMN user_agent String "
                         "TTL toDateTime(timestamp) + INTERVAL 30 DAY")
    with pytest.raises(RetentionError, match="has a TTL"):
        Collector(store, SETTINGS)


def test_collector_refuses_an_unmigrated_store(tmp_path):
    s = store_mod.open_store(f"chdb://{tmp_path}/ch")
    try:
        with pytest.raises(SchemaError, match="db migrate"):
            Collector(s, SETTINGS)
    finally:
        s.close()


def test_catalog_table_equals_the_catalog_and_is_resynced(store):
    got = dict(store.client.query("SELECT action, resource_type FROM audit.catalog_actions").result_rows)
    assert got == {a.id: a.resource_type or "" for a in ACTIONS.values()}
    store.client.command("TRUNCATE TABLE audit.catalog_actions")
    store_mod.migrate(store.client)
    (n,) = store.client.query("SELECT count() FROM audit.catalog_actions").result_rows[0]
    assert n == len(ACTIONS)


@pytest.mark.parametrize("url", ["postgres://x", "chdb://", "http://localhost:8123/otherdb"])
def test_bad_store_urls_are_config_errors(url):
    with pytest.raises(ConfigError):
        store_mod.open_store(url)


def test_second_process_gets_a_clear_lock_error(tmp_path):
    url = f"chdb://{tmp_path}/ch"
    holder = store_mod.open_store(url)
    try:
        code = textwrap.dedent(f"""
            from upmetr_audit.collector import store
            from upmetr_audit.collector.errors import StoreLocked
            try:
                store.open_store({url!r})
            except StoreLocked as e:
                print(e.pid); print(e)
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60).stdout.splitlines()
        assert out[0] == str(os.getpid())
        assert f"locked by process {os.getpid()}" in out[1] and "--clickhouse-url" in out[1]
    finally:
        holder.close()


def test_lock_is_released_on_close(tmp_path):
    url = f"chdb://{tmp_path}/ch"
    store_mod.open_store(url).close()
    store_mod.open_store(url).close()  # no StoreLocked


def test_purging_thread_runs_and_stops_on_close(tmp_path):
    s = store_mod.open_store(f"chdb://{tmp_path}/ch")
    s.start_purging(0.01)
    s.start_purging(0.01)  # a second call does not start a second thread
    purger = s._purger
    assert purger.is_alive()
    s.client.command("SYSTEM JEMALLOC PURGE")  # the statement the thread runs is accepted
    s.close()
    assert not purger.is_alive() and s._purger is None


def test_storelocked_message_names_pid_and_remedy():
    msg = str(StoreLocked("/data/ch", 4242))
    assert "process 4242" in msg and "one process at a time" in msg


def test_an_embedded_store_keeps_decompressed_blocks_for_the_next_page_load(store):
    """The page's second load of the same rows reads them from the
    uncompressed cache instead of decompressing them again."""
    import datetime as dt

    from upmetr_audit.web import queries

    from helpers import insert_events

    now = dt.datetime.now(dt.UTC)
    insert_events(store.client, [{"timestamp": now - dt.timedelta(minutes=i), "org_id": "org-a"}
                                 for i in range(50)])

    def hits() -> int:
        return store.client.query(
            "SELECT sum(value) FROM system.events WHERE event = 'UncompressedCacheHits'"
        ).result_rows[0][0]

    filters = queries.parse_filters({}, now)
    first = queries.list_events(store.client, "org-a", filters)
    before = hits()
    again = queries.list_events(store.client, "org-a", filters)
    assert again == first and len(first.events) == 25
    assert hits() > before


@pytest.mark.parametrize("value, expected", [(None, store_mod.UNCOMPRESSED_CACHE_BYTES),
                                             ("", store_mod.UNCOMPRESSED_CACHE_BYTES),
                                             ("0", 0), ("128", 128 << 20)])
def test_the_uncompressed_cache_size_can_be_set_in_mb(value, expected):
    environ = {} if value is None else {store_mod.CACHE_ENV: value}
    assert store_mod.uncompressed_cache_bytes(environ) == expected


@pytest.mark.parametrize("value", ["-1", "32MB", "1e3", "99999999"])
def test_a_bad_uncompressed_cache_size_is_a_config_error(value):
    with pytest.raises(ConfigError, match="UPMETR_AUDIT_UNCOMPRESSED_CACHE_MB"):
        store_mod.uncompressed_cache_bytes({store_mod.CACHE_ENV: value})


LEAN = r"""
import sys
from upmetr_audit.collector import entry
entry.skip_unused_libraries()
import datetime as dt
from upmetr_audit.collector import store as store_mod
from upmetr_audit.web import queries
from helpers import insert_events
store = store_mod.open_store("chdb://" + sys.argv[1])
store_mod.migrate(store.client)
now = dt.datetime.now(dt.UTC)
insert_events(store.client, [{"timestamp": now - dt.timedelta(minutes=i)} for i in range(30)])
page = queries.list_events(store.client, "org-a", queries.parse_filters({}, now))
print(len(page.events), queries.summary(store.client, "org-a")["total_events"],
      [m for m in entry.UNUSED_LIBRARIES if sys.modules.get(m) is not None])
"""


def test_the_commands_work_without_the_dataframe_libraries(tmp_path):
    """The CLI makes pandas, pyarrow, polars and numpy unimportable (~80 MB of
    RSS): opening, migrating, inserting and the page's queries still work."""
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", LEAN, str(tmp_path / "ch")], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": tests_dir})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["25", "30", "[]"]

"""The benchmark harness runs every registered benchmark at tiny size, so it
cannot rot. Speeds are not asserted (they live in docs/benchmarks.md); what
is asserted: every benchmark ran, every event was committed or delivered, the
three systems of the page benchmark returned equal results, and the harness
wrote its two files. A benchmark is skipped only when its baseline's binary
is not installed on this machine (the reason says how to install it)."""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.harness import REGISTRY  # noqa: E402


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One harness run, shared by the xdist workers: the first one runs it
    under a file lock, the others read its files (the pattern pytest-xdist
    documents for session fixtures)."""
    base = tmp_path_factory.getbasetemp()
    # under xdist each worker's basetemp is a child of the session's folder;
    # without it, basetemp is the session's folder (its parent is shared by
    # every pytest run on the machine: an old run's files must not be read)
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    json_path, md_path, log_path = (shared / f"bench.{ext}" for ext in ("json", "md", "log"))
    with open(shared / "bench.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not json_path.exists():
            # A private temp folder: what the harness leaves behind is its own,
            # whatever else runs on the machine. World-traversable, since the
            # PostgreSQL baseline runs as the postgres user.
            tmp = tempfile.mkdtemp(prefix="bench-smoke-")
            os.chmod(tmp, 0o755)
            r = subprocess.run([sys.executable, "-m", "bench", "--size", "tiny", "--json", str(json_path),
                                "--md", str(md_path)], cwd=ROOT, capture_output=True, text=True,
                               timeout=900, env={**os.environ, "TMPDIR": tmp})
            log_path.write_text(json.dumps({"returncode": r.returncode, "stderr": r.stderr[-3000:],
                                            "left": sorted(_leftovers(tmp))}))
            shutil.rmtree(tmp, ignore_errors=True)
    runs = json.loads(json_path.read_text())["runs"]
    return json.loads(log_path.read_text()), runs, md_path.read_text()


def _leftovers(tmp: str) -> set[str]:
    return {d for d in os.listdir(tmp) if d.startswith("upmetr-bench-")}


def _result(tiny_run, name):
    _, runs, _ = tiny_run
    entry = runs[name]["tiny"]
    if "skipped" in entry:
        pytest.skip(entry["skipped"])
    assert "error" not in entry, entry["error"]
    return entry["result"]


def test_harness_exits_cleanly_and_writes_a_section_per_benchmark(tiny_run):
    log, runs, md = tiny_run
    assert log["returncode"] == 0, log["stderr"]
    assert set(runs) == set(REGISTRY)
    for name, b in REGISTRY.items():
        assert f"## {name}: {b.title}" in md
        entry = runs[name]["tiny"]
        assert entry["machine"]["cpus"] > 0
        assert "error" not in entry, f"{name}: {entry['error']}"
    assert not log["left"], f"the harness left temp folders behind: {log['left']}"


def test_p1_ingest_commits_every_event_and_rotel_took_the_same(tiny_run):
    result = _result(tiny_run, "P1")
    for cfg in result["configs"]:
        assert cfg["collector"]["committed"] == cfg["events"] > 0
        assert cfg["rotel"]["events"] == cfg["events"] and cfg["rotel"]["failures"] == 0
        # the cost breakdown ran over the same events (its probe checks it stored them all)
        costs = cfg["costs"]
        assert costs["events"] == cfg["events"]
        assert costs["total_us"] == pytest.approx(sum(costs["steps_us"].values()), abs=0.1)
        assert costs["grouped_total_us"] == pytest.approx(sum(costs["grouped_steps_us"].values()), abs=0.1)
    # the probe's schema cache stays in the harness's temp folder, not in the checkout
    assert not os.path.exists(os.path.join(ROOT, "__cache__"))


def test_p2_results_are_equal_across_the_three_systems(tiny_run):
    result = _result(tiny_run, "P2")
    assert result["results_equal"] is True
    assert result["rows_per_part"]["page_filtered"] > 0 and result["rows_per_part"]["user_search"] > 0
    for system in ("typed", "otel_logs", "postgres"):
        for temp in ("warm", "cold"):
            assert result["timings"][system][temp]["composite"]["p50_ms"] > 0


def test_p3_measures_all_three_stores(tiny_run):
    result = _result(tiny_run, "P3")
    for store in ("typed", "otel_logs", "postgres"):
        assert result[store]["rows"] == result["events"]
        assert result[store]["bytes_per_event"] > 0


def test_p5_our_shipper_delivers_every_event(tiny_run):
    result = _result(tiny_run, "P5")
    assert {r["mode"] for r in result["results"]} == {"stock", "durable", "crash-safe", "fast",
                                                      "stock-no-drop"}
    assert all(r["delivered"] == r["events"] for r in result["results"] if r["mode"] != "stock")


def test_p6_serve_ingested_and_served_pages(tiny_run):
    result = _result(tiny_run, "P6")
    assert result["pages"] > 0 and result["committed"] > 0 and result["rss_max_mb"] > 0

"""A non-editable install works, and installs nothing but the upmetr_audit namespace."""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    # Build from a copy of the sources, so that no build/ folder in the work
    # tree (or a concurrent build) can leak into the wheel.
    src = tmp_path_factory.mktemp("src") / "upmetr-audit"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv", "build", "*.egg-info", ".git", "var", "__pycache__", ".pytest_cache"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
                   check=True, timeout=600)
    (name,) = [f for f in os.listdir(out) if f.endswith(".whl")]
    return out / name


def test_wheel_has_only_the_upmetr_audit_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"upmetr_audit"}
    for module in ("upmetr_audit/collector/cli.py", "upmetr_audit/shipper/catalog.py",
                   "upmetr_audit/collector/receivers/http.py", "upmetr_audit/web/app.py",
                   "upmetr_audit/web/templates/base.html", "upmetr_audit/web/static/app.css",
                   "upmetr_audit/web/static/vendor/uplot/uPlot.iife.min.js",
                   "upmetr_audit/web/static/vendor/uplot/LICENSE"):
        assert module in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "upmetr-audit = upmetr_audit.collector.entry:main" in zipfile.ZipFile(wheel).read(entry).decode()


@pytest.fixture(scope="module")
def base_venv(wheel, tmp_path_factory):
    """A fresh venv with the wheel installed non-editable, base dependencies only."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                   check=True, timeout=600)
    return venv


def test_non_editable_install_into_fresh_venv_imports_the_base(base_venv, tmp_path):
    py = str(base_venv / "bin" / "python")
    # The base install is the shipper: no chDB, ClickHouse client, Flask or click.
    code = ("import upmetr_audit.shipper as s, upmetr_audit.shipper.catalog as k;"
            "import importlib.util as u;"
            "print(s.__file__); print(len(k.ACTIONS));"
            "print(u.find_spec('collector'), u.find_spec('shipper'), u.find_spec('web'));"
            "print([m for m in ('chdb', 'clickhouse_connect', 'flask', 'waitress') if u.find_spec(m)])")
    out = subprocess.run([py, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path, timeout=120).stdout.split("\n")
    assert "site-packages/upmetr_audit/shipper/__init__.py" in out[0]
    assert int(out[1]) >= 42
    assert out[2] == "None None None"
    assert out[3] == "[]"


def test_command_in_base_install_says_which_extra_a_server_command_needs(base_venv, tmp_path):
    exe = str(base_venv / "bin" / "upmetr-audit")
    assert subprocess.run([exe, "ship", "--help"], capture_output=True, timeout=120).returncode == 0
    r = subprocess.run([exe, "db", "check", "--data-dir", str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1
    assert "pip install 'upmetr-audit[server]'" in r.stderr and "Traceback" not in r.stderr

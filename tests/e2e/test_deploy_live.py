"""The deployment kit against a running graygate: every metric the Grafana dashboard
queries is in a live ``/metrics`` scrape, and the Dockerfile's install steps (the sources
it copies, the Go canary removed, ``pip install``) give a working ``graygate`` in a fresh
virtualenv."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families

from tests.test_deploy import dashboard_metric_names, dockerfile_copies

if TYPE_CHECKING:
    from tests.e2e.conftest import Procs, TwinSetup

ROOT = Path(__file__).resolve().parents[2]
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
    "summary": ("", "_sum", "_count", "_created"),
}


def scraped_names(text: str) -> set[str]:
    """Every sample name the scrape has or, for a labelled family with no child yet, would
    have (a counter's ``_total``, a histogram's ``_bucket``...)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names |= {family.name + s for s in _SUFFIXES.get(family.type, ("",))}
        names |= {s.name for s in family.samples}
    return names


def test_every_dashboard_metric_is_in_a_live_scrape(
    procs: Procs,
    migrated_database: Callable[[], str],
    twin_config: Callable[..., TwinSetup],
) -> None:
    url = migrated_database()
    setup = twin_config("e2e-deploy")
    cfg, listen, admin = setup.cfg, setup.listen, setup.admin
    procs.serve(cfg, url, f"http://127.0.0.1:{admin}")
    for i in range(5):
        assert procs.http_get(f"http://127.0.0.1:{listen}/api/inventory/SKU-000{i + 1}")[0] == 200
    wanted = dashboard_metric_names()
    deadline = time.monotonic() + 30
    while True:
        status, body = procs.http_get(f"http://127.0.0.1:{admin}/metrics")
        assert status == 200
        missing = wanted - scraped_names(body.decode())
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, f"the dashboard queries metrics graygate does not expose: {missing}"
    assert b"graygate_verdict{" in body  # the verdict, for Flagger's MetricTemplate


def test_the_dockerfile_install_works_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for item in dockerfile_copies():
        if item.startswith("deploy/"):
            continue  # copied into the image after the install
        path = ROOT / item.rstrip("/")
        if path.is_dir():
            shutil.copytree(
                path, src / item.rstrip("/"), ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(path, src / item)
    shutil.rmtree(src / "examples" / "canary")  # as the Dockerfile does
    # Offline, with this machine's setuptools: build the install tree the wheel is made
    # of (build_py: the package list and package data of pyproject.toml) and run graygate
    # from it in a fresh virtualenv whose dependencies are this machine's.
    build = tmp_path / "build"
    subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py",
         "-d", str(build)],
        cwd=src, check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120
    )
    env = {"PYTHONPATH": str(build), "PATH": "/usr/bin:/bin"}
    probe = (
        "import graygate, graygate.examples, pathlib, click.testing; "
        "from graygate.cli import cli; "
        "print(pathlib.Path(graygate.__file__).parent); "
        "print(pathlib.Path(graygate.examples.__file__).parent); "
        "r = click.testing.CliRunner().invoke(cli, ['--version']); print(r.exit_code, r.output)"
    )
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe],
        capture_output=True, timeout=120, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    package, examples, version = done.stdout.decode().splitlines()[:3]
    assert package.startswith(str(build)) and examples.startswith(str(build)), done.stdout
    assert version.startswith("0 ") and "0.1.0" in version, version
    assert (Path(examples) / "orders.py").is_file()
    assert not list(Path(examples).rglob("*.go")), "the Go canary is in the install"
    assert (build / "migrations" / "script.py.mako").is_file()
    assert (build / "config" / "demo.yaml").is_file()

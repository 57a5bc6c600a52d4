"""tidegate-loadtest against the lab primary: bad targets are one line each and exit status 2, a
missing table says what to run, rounds interleave the targets and the report holds every figure, and
a connection the server terminates mid-run is counted under the server's SQLSTATE without stopping
the run. (The statistics and the report writer have their unit tests in loadtest/Tests.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import tgharness as h

BINARY = Path(os.environ.get("TIDEGATE_LOADTEST_BIN", str(h.REPO / ".build" / "debug" / "tidegate-loadtest")))
PGBENCH = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"


def loadtest(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    if not BINARY.exists():
        pytest.skip(f"tidegate-loadtest not found at {BINARY} (swift build --product tidegate-loadtest)")
    child = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    child.update(env or {})
    return subprocess.run([str(BINARY), *args], capture_output=True, text=True, timeout=timeout, env=child)


def dsn(db: str, password: str | None = "tidegate", port: int = h.PRIMARY_PORT) -> str:
    text = f"host={h.HOST} port={port} user=tidegate dbname={db}"
    return text + (f" password={password}" if password is not None else "")


@pytest.fixture(scope="module")
def bench_db(lab: None):
    """A scratch database with pgbench's tables at scale 1."""
    with h.scratch_database("tg_it_loadtest") as name:
        r = subprocess.run([PGBENCH, "-i", "-s", "1", "-q", "-h", h.HOST, "-p", str(h.PRIMARY_PORT), "-U", "tidegate", name],
                           capture_output=True, text=True, timeout=120, env={**os.environ, "PGPASSWORD": "tidegate"})
        assert r.returncode == 0, r.stderr
        yield name


def test_bad_targets_are_one_line_each_and_exit_2(bench_db: str):
    closed = h.allocate_port("pg")
    r = loadtest("run", "--scenario", "passthrough", "--duration", "1", "--rounds", "1",
                 "--target", f"unreachable={dsn(bench_db, port=closed)}",
                 "--target", f"wrongpw={dsn(bench_db, password='not-the-password')}",
                 "--target", f"nopw={dsn(bench_db, password=None)}",
                 "--target", f"nodb={dsn('tg_it_no_such_database')}")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.startswith("tidegate-loadtest: target ")]
    assert len(lines) == 4, r.stderr
    by_target = {line.split()[2]: line for line in lines}
    assert "Connection refused" in by_target["unreachable"], by_target
    assert "SQLSTATE 28P01" in by_target["wrongpw"] and "check the password" in by_target["wrongpw"], by_target
    assert "none is given" in by_target["nopw"] and "PGPASSWORD" in by_target["nopw"], by_target
    assert "SQLSTATE 3D000" in by_target["nodb"], by_target
    assert "Fatal error" not in r.stderr and "Stack" not in r.stderr, r.stderr


def test_missing_tables_say_what_to_run(lab: None):
    with h.scratch_database("tg_it_loadtest_empty") as empty:
        r = loadtest("run", "--scenario", "api-reads", "--duration", "1", "--rounds", "1", "--target", f"empty={dsn(empty)}")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "target empty" in r.stderr and "needs table(s)" in r.stderr, r.stderr
    assert "tidegate migrate" in r.stderr and "tidegate-loadtest prepare" in r.stderr, r.stderr


def test_rounds_interleave_and_the_report_holds_every_figure(bench_db: str, tmp_path: Path):
    out = tmp_path / "report"
    r = loadtest("run", "--scenario", "passthrough", "--engine", "native", "--clients", "2", "--duration", "1",
                 "--warmup", "0", "--rounds", "2", "--seed", "7", "--out", str(out),
                 "--target", f"first={dsn(bench_db)}", "--target", f"second={dsn(bench_db)}")
    assert r.returncode == 0, (r.stdout, r.stderr)
    report = json.loads((out / "report.json").read_text())
    assert [(run["round"], run["target"]) for run in report["runs"]] == [(1, "first"), (1, "second"), (2, "first"), (2, "second")]
    assert all(run.get("failure") is None for run in report["runs"]), report["runs"]
    summary = {row["target"]: row for row in report["summary"]}
    assert set(summary) == {"first", "second"}
    assert summary["first"]["throughputMedian"] > 0 and summary["first"].get("throughputRatio") is None
    assert summary["second"]["throughputRatio"] > 0 and summary["second"]["errors"] == 0
    assert "password=tidegate" not in report["command"] and "password=…" in report["command"], report["command"]
    markdown = (out / "report.md").read_text()
    assert "| first |" in markdown and "| second |" in markdown and "No errors." in markdown
    for chart in ("throughput.svg", "latency.svg"):
        ET.parse(out / chart)  # well-formed, a browser opens it


def test_a_terminated_connection_is_counted_and_the_run_goes_on(bench_db: str, tmp_path: Path):
    out = tmp_path / "report"

    def terminate() -> None:
        # Once the run's 3 clients are connected (the preflight uses one connection at a time),
        # and a moment into the run, the server terminates them.
        deadline = time.monotonic() + 20
        with h.superuser() as c:
            while time.monotonic() < deadline:
                (connected,) = c.execute("select count(*) from pg_stat_activity where datname = %s "
                                         "and application_name = 'tidegate-loadtest'", (bench_db,)).fetchone()
                if connected >= 3:
                    break
                time.sleep(0.05)
            time.sleep(1.0)
            c.execute("select pg_terminate_backend(pid) from pg_stat_activity "
                      "where datname = %s and application_name = 'tidegate-loadtest'", (bench_db,))

    killer = threading.Thread(target=terminate)
    killer.start()
    r = loadtest("run", "--scenario", "passthrough", "--engine", "native", "--clients", "3", "--duration", "4",
                 "--warmup", "0", "--rounds", "1", "--out", str(out), "--target", f"direct={dsn(bench_db)}")
    killer.join()
    assert r.returncode == 0, (r.stdout, r.stderr)
    report = json.loads((out / "report.json").read_text())
    (run,) = report["runs"]
    assert run.get("failure") is None, run
    (queries,) = run["classes"]
    assert queries["errors"] == {"57P01": 3}, queries["errors"]
    assert "terminating connection" in queries["errorMessages"]["57P01"]
    assert queries["throughput"] > 0

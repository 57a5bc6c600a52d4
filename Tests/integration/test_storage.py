"""Storage policies, the maintenance job and storage analytics on plain PostgreSQL: every test gets a
scratch database migrated with the real `tidegate migrate`, then drives `tidegate policies`, a running
Tidegate's maintenance job and the admin console's SHOW STORAGE against it."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

import tgharness as h

pytestmark = pytest.mark.requires_tidegate("tidegate policies, maintenance job, SHOW STORAGE")

MIGRATIONS = h.REPO / "migrations"


superuser = h.superuser
run_tidegate = h.run_tidegate


def db_conn(db: str) -> psycopg.Connection:
    return psycopg.connect(h.direct_dsn(db=db), autocommit=True)


def write_config(tmp_path: Path, overrides: dict[str, Any]) -> Path:
    return h.write_tidegate_config(tmp_path, overrides)


@pytest.fixture
def empty_db(lab: None):
    with h.scratch_database("tg_it_sto") as name:
        yield name


@pytest.fixture
def market_db(empty_db: str, tmp_path: Path) -> str:
    r = h.run_migrate(write_config(tmp_path, {}), empty_db)
    assert r.returncode == 0, r.stderr
    return empty_db


def utc_today() -> dt.date:
    return dt.datetime.now(dt.timezone.utc).date()


def partitions(db: str, parent: str = "ticks") -> set[str]:
    with db_conn(db) as c:
        return {r[0] for r in c.execute("select part from tidegate_partitions(%s)", (parent,)).fetchall()}


def pname(day: dt.date, parent: str = "ticks") -> str:
    return f"{parent}_p{day:%Y%m%d}"


def insert_tick(c: psycopg.Connection, ts: str | dt.datetime, trade_id: int, symbol: str = "AAPL") -> None:
    c.execute("insert into ticks (ts, symbol, price, size, exchange, trade_id) values (%s, %s, 100.5, 10, 'XNAS', %s)",
              (ts, symbol, trade_id))


def test_policies_apply_creates_partitions_ahead_and_drops_expired(market_db, tmp_path):
    today = utc_today()
    old_day = today - dt.timedelta(days=40)
    with db_conn(market_db) as c:
        c.execute("select tidegate_ensure_partitions('ticks', %s, 1)", (old_day,))
        insert_tick(c, dt.datetime.combine(old_day, dt.time(12), dt.timezone.utc), 1)
        insert_tick(c, dt.datetime.combine(old_day, dt.time(13), dt.timezone.utc), 2)
        insert_tick(c, "2001-02-03 10:00+00", 3)  # lands in ticks_default
        insert_tick(c, dt.datetime.now(dt.timezone.utc), 4)
        c.execute(f"drop table {pname(today + dt.timedelta(days=3))}")
    assert pname(old_day) in partitions(market_db)
    config = write_config(tmp_path, {"storage.partitions_ahead_days": 10, "relations.ticks.retention_days": 30})

    show = run_tidegate("policies", "show", "--config", str(config), "--database", market_db)
    assert show.returncode == 0, show.stderr
    assert "postgres flavour" in show.stdout, show.stdout
    lines = {tuple(part.strip() for part in line.split("|")[:2]): line for line in show.stdout.splitlines() if "|" in line}
    assert "create 4 partitions" in lines[("ticks", "partitions")], show.stdout  # today+3, +8, +9, +10
    assert "drop 1 partition" in lines[("ticks", "retention")], show.stdout
    assert "DEFAULT" in lines[("ticks", "retention")], show.stdout
    assert "stale" in lines[("bars_*", "refresh")], show.stdout

    dry = run_tidegate("policies", "apply", "--dry-run", "--config", str(config), "--database", market_db)
    assert dry.returncode == 0 and "would be applied" in dry.stdout, (dry.stdout, dry.stderr)
    assert pname(old_day) in partitions(market_db), "--dry-run changed the database"

    applied = run_tidegate("policies", "apply", "--config", str(config), "--database", market_db)
    assert applied.returncode == 0, (applied.stdout, applied.stderr)
    assert f"{pname(old_day)} dropped" in applied.stdout, applied.stdout
    parts = partitions(market_db)
    assert pname(old_day) not in parts
    for i in range(0, 11):
        assert pname(today + dt.timedelta(days=i)) in parts, (i, sorted(parts))
    with db_conn(market_db) as c:
        ids = sorted(r[0] for r in c.execute("select trade_id from ticks").fetchall())
        assert ids == [4], ids
        assert c.execute("select count(*) from bars_1m").fetchone()[0] >= 1, "apply refreshes the bars"

    again = run_tidegate("policies", "show", "--config", str(config), "--database", market_db)
    assert again.returncode == 0, again.stderr
    after = {tuple(part.strip() for part in line.split("|")[:2]): line for line in again.stdout.splitlines() if "|" in line}
    for policy in ("partitions", "retention"):
        assert after[("ticks", policy)].rstrip().endswith("| ok"), again.stdout
    assert "unsupported" in after[("ticks", "compression")], again.stdout  # compress_after_days on plain PostgreSQL


def test_policies_on_an_unmigrated_database_is_a_clear_error(empty_db, tmp_path):
    config = write_config(tmp_path, {})
    r = run_tidegate("policies", "show", "--config", str(config), "--database", empty_db)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "no storage schema" in r.stderr and "tidegate migrate" in r.stderr, r.stderr
    assert "Fatal error" not in r.stderr


def test_maintenance_job_records_history_refreshes_bars_and_keeps_partitions(market_db, tidegate_instance):
    today = utc_today()
    ahead = pname(today + dt.timedelta(days=2))
    with db_conn(market_db) as c:
        c.execute(f"drop table {ahead}")
        insert_tick(c, dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5), 1)
        insert_tick(c, dt.datetime.now(dt.timezone.utc), 2, symbol="MSFT")
    p = tidegate_instance({
        "storage.database": market_db, "storage.maintenance_interval_ms": 1000,
        "storage.history_interval_ms": 1000,
        "relations.bars_1m.refresh_interval_ms": 1000,
    }, name="storage-job")

    def history_rounds() -> int:
        with db_conn(market_db) as c:
            return c.execute("select count(distinct taken_at) from tidegate_storage_history").fetchone()[0]

    assert h.wait_for(lambda: history_rounds() >= 2, timeout=20, interval=0.3), p.log_tail()
    with db_conn(market_db) as c:
        relations = {r[0] for r in c.execute("select distinct relation from tidegate_storage_history").fetchall()}
        assert {"(database)", "ticks", "quotes", "bars_1m"} <= relations, relations
        assert c.execute("select min(total_bytes) from tidegate_storage_history where relation = '(database)'").fetchone()[0] > 0
    with db_conn(market_db) as c:
        assert h.wait_for(lambda: c.execute("select count(*) from bars_1m").fetchone()[0] == 2, timeout=10), p.log_tail()
        # Ticks arriving while it runs get their bars at the next refresh.
        insert_tick(c, dt.datetime.now(dt.timezone.utc), 3, symbol="NVDA")
        assert h.wait_for(lambda: c.execute("select count(*) from bars_1m where symbol = 'NVDA'").fetchone()[0] == 1,
                          timeout=10), p.log_tail()
    assert ahead in partitions(market_db), "the job creates the partitions ahead"
    # Clients are served as usual meanwhile.
    with psycopg.connect(p.dsn(market_db), autocommit=True) as c:
        assert c.execute("select count(*) from ticks").fetchone()[0] == 3


def test_maintenance_job_skips_a_database_without_the_schema(empty_db, tidegate_instance):
    p = tidegate_instance({"storage.database": empty_db, "storage.maintenance_interval_ms": 1000}, name="storage-absent")
    with psycopg.connect(p.dsn(empty_db), autocommit=True) as c:
        for _ in range(3):
            assert c.execute("select 1").fetchone() == (1,)
            c.execute("select pg_sleep(0.5)")
    nodb = tidegate_instance({"storage.database": "tg_no_such_db", "storage.maintenance_interval_ms": 1000},
                             name="storage-nodb-job")
    time.sleep(2.5)
    for proxy in (p, nodb):
        log = proxy.log_tail(200)
        assert "storage maintenance failed" not in log, log
    # The job has a connection of its own, outside the pools: nothing of it in SHOW POOLS.
    pools = h.admin_dicts(nodb, "SHOW POOLS")
    assert not [r for r in pools if r["database"] == "tg_no_such_db"], pools


def test_show_storage_returns_sane_rows(market_db, tidegate_instance):
    with db_conn(market_db) as c:
        for i in range(50):
            insert_tick(c, dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=i), i)
        insert_tick(c, "2001-02-03 10:00+00", 1000)
        c.execute("analyze ticks")
    p = tidegate_instance({"storage.database": market_db, "storage.maintenance_interval_ms": 0}, name="storage-show")
    rows = h.admin_dicts(p, "SHOW STORAGE")
    assert rows, "no rows"
    total = {r["relation"]: r for r in rows if r["part"] is None}
    assert {"ticks", "quotes", "bars_1m", "bars_1d", "instruments"} <= set(total), sorted(total)
    for r in rows:
        assert int(r["total_bytes"]) > 0, r
        if r["oldest"] is not None and r["newest"] is not None:
            assert r["oldest"] <= r["newest"], r
        assert r["compressed_bytes"] is None and r["compression_ratio"] is None, r
    assert int(total["ticks"]["rows"]) == 51, total["ticks"]
    assert total["ticks"]["oldest"].startswith("2001-02-03T10:00:00"), total["ticks"]
    default = next(r for r in rows if r["part"] == "ticks_default")
    assert default["oldest"] == default["newest"] == "2001-02-03T10:00:00Z", default
    today = next(r for r in rows if r["part"] == pname(utc_today()))
    assert int(today["rows"]) >= 1 and today["oldest"].startswith(f"{utc_today():%Y-%m-%d}T00:00:00"), today
    assert int(total["ticks"]["total_bytes"]) >= sum(int(r["total_bytes"]) for r in rows
                                                     if r["relation"] == "ticks" and r["part"] is not None)
    helps = {r["command"] for r in h.admin_dicts(p, "SHOW HELP")}
    assert {"SHOW STORAGE", "SHOW STORAGE GROWTH [days]"} <= helps
    config = {r["key"]: r["value"] for r in h.admin_dicts(p, "SHOW CONFIG")}
    assert config["storage.database"] == market_db and config["storage.maintenance_interval_ms"] == "0", config


def test_show_storage_growth_fits_the_history_and_forecasts(market_db, tidegate_instance):
    disk = 100 * 10**9
    base = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    with db_conn(market_db) as c:
        for i in range(6):  # five days of samples: ticks +1 MB/day, the database +1 GB/day
            at = base - dt.timedelta(days=5 - i)
            c.execute("insert into tidegate_storage_history (taken_at, relation, total_bytes) values (%s, 'ticks', %s), "
                      "(%s, '(database)', %s)", (at, 10**8 + i * 10**6, at, 10**10 + i * 10**9))
        c.execute("insert into tidegate_storage_history (taken_at, relation, total_bytes) values "
                  "(now() - interval '30 days', 'ticks', 1)")  # outside the window: ignored
    p = tidegate_instance({"storage.database": market_db, "storage.maintenance_interval_ms": 0,
                           "storage.disk_bytes": disk}, name="storage-growth")
    rows = {r["relation"]: r for r in h.admin_dicts(p, "SHOW STORAGE GROWTH")}
    assert abs(float(rows["ticks"]["bytes_per_day"]) - 10**6) <= 1, rows["ticks"]
    assert int(rows["ticks"]["samples"]) == 6 and rows["ticks"]["window_days"] == "7", rows["ticks"]
    db = rows["(database)"]
    with db_conn(market_db) as c:
        size = c.execute("select pg_database_size(current_database())").fetchone()[0]
    assert abs(float(db["bytes_per_day"]) - 10**9) <= 10, db
    assert abs(float(db["days_until_full"]) - (disk - size) / 10**9) < 0.2, (db, size)
    assert db["note"] is None and db["disk_bytes"] == str(disk), db
    wide = {r["relation"]: r for r in h.admin_dicts(p, "SHOW STORAGE GROWTH 60")}
    assert int(wide["ticks"]["samples"]) == 7, wide["ticks"]

    q = tidegate_instance({"storage.database": market_db, "storage.maintenance_interval_ms": 0}, name="storage-nodisk")
    db = {r["relation"]: r for r in h.admin_dicts(q, "SHOW STORAGE GROWTH")}["(database)"]
    assert db["days_until_full"] is None and "disk_bytes is 0" in db["note"], db
    with pytest.raises(psycopg.Error) as ei:
        h.admin_query(q, "SHOW STORAGE GROWTH lots")
    assert ei.value.sqlstate == "22023", ei.value


def test_show_storage_without_the_schema_is_a_clear_error(empty_db, tidegate_instance):
    p = tidegate_instance({"storage.database": empty_db, "storage.maintenance_interval_ms": 0}, name="storage-noschema")
    with pytest.raises(psycopg.Error) as ei:
        h.admin_query(p, "SHOW STORAGE")
    assert ei.value.sqlstate == "42P01" and "tidegate migrate" in (ei.value.diag.message_hint or ""), ei.value
    missing = tidegate_instance({"storage.database": "tg_no_such_db", "storage.maintenance_interval_ms": 0},
                                name="storage-nodb")
    with pytest.raises(psycopg.Error) as ei:
        h.admin_query(missing, "SHOW STORAGE")
    assert ei.value.sqlstate == "3D000", ei.value


def test_bad_storage_config_is_refused(tmp_path):
    config = write_config(tmp_path, {"storage.maintenance_interval_ms": 10, "storage.partitions_ahead_days": 0,
                                     "storage.disk_bytes": "lots"})
    r = run_tidegate("check-config", "--config", str(config))
    assert r.returncode == 2, (r.stdout, r.stderr)
    for key in ("storage.maintenance_interval_ms", "storage.partitions_ahead_days", "storage.disk_bytes"):
        assert key in r.stderr, r.stderr


# --------------------------------------------------------------------------------------------
# TimescaleDB flavour: only when TIDEGATE_TIMESCALE_PORT names a server with timescaledb preloaded, the
# role tidegate (password tidegate) and the postgres superuser trusted on loopback (DEVELOPERS.md).

TIMESCALE_PORT = int(os.environ.get("TIDEGATE_TIMESCALE_PORT", "0") or 0)


@pytest.fixture
def timescale_db(tmp_path: Path):
    if not TIMESCALE_PORT:
        pytest.skip("TIDEGATE_TIMESCALE_PORT not set (a TimescaleDB server; see DEVELOPERS.md)")
    name = h.unique_name("tg_it_tsdb")
    admin = psycopg.connect(h.make_dsn(h.HOST, TIMESCALE_PORT, "postgres", "postgres"), autocommit=True)
    with admin:
        admin.execute(f'create database "{name}" owner tidegate')
    try:
        with psycopg.connect(h.make_dsn(h.HOST, TIMESCALE_PORT, name, "postgres"), autocommit=True) as c:
            c.execute("create extension timescaledb")
        cfg = h.tidegate_config(h.allocate_port("pg"), 0, {"primary": {"host": h.HOST, "port": TIMESCALE_PORT},
                                                           "storage.database": name})
        config = tmp_path / "timescale.yaml"
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        r = run_tidegate("migrate", "--config", str(config), "--database", name, "--dir", str(MIGRATIONS))
        assert r.returncode == 0 and "timescaledb flavour" in r.stdout, (r.stdout, r.stderr)
        yield name, config
    finally:
        with psycopg.connect(h.make_dsn(h.HOST, TIMESCALE_PORT, "postgres", "postgres"), autocommit=True) as c:
            c.execute(f'drop database if exists "{name}" with (force)')


def test_timescale_policies_apply_and_storage(timescale_db):
    name, config = timescale_db
    show = run_tidegate("policies", "show", "--config", str(config))
    assert show.returncode == 0 and "timescaledb flavour" in show.stdout, (show.stdout, show.stderr)
    assert all(line.rstrip().endswith("| ok") for line in show.stdout.splitlines()[3:]), show.stdout
    changes = ["--set", "relations.ticks.retention_days=30", "--set", "relations.quotes.compress_after_days=3",
               "--set", "relations.bars_1m.refresh_interval_ms=120000"]
    applied = run_tidegate("policies", "apply", "--config", str(config), *changes)
    assert applied.returncode == 0 and "applied 3 step(s)" in applied.stdout, (applied.stdout, applied.stderr)
    with psycopg.connect(h.make_dsn(h.HOST, TIMESCALE_PORT, name), autocommit=True) as c:
        jobs = {(r[0], r[1]): r[2] for r in c.execute(
            "select coalesce(ca.view_name::text, j.hypertable_name::text), j.proc_name, "
            "coalesce(j.config->>'drop_after', j.config->>'compress_after', j.schedule_interval::text) "
            "from timescaledb_information.jobs j left join timescaledb_information.continuous_aggregates ca "
            "on ca.materialization_hypertable_name = j.hypertable_name").fetchall()}
        assert jobs[("ticks", "policy_retention")] in ("30 days", "720:00:00"), jobs
        assert jobs[("quotes", "policy_compression")] in ("3 days", "72:00:00"), jobs
        assert jobs[("bars_1m", "policy_refresh_continuous_aggregate")] == "00:02:00", jobs
        c.execute("insert into ticks (ts, symbol, price, size, exchange, trade_id) select now() - (i || ' hours')::interval, "
                  "'AAPL', 100 + i % 7, 10, 'XNAS', i from generate_series(1, 300) i")
        c.execute("select compress_chunk(ch) from show_chunks('ticks', older_than => interval '8 days') ch")
    again = run_tidegate("policies", "show", "--config", str(config), *changes)
    assert all(line.rstrip().endswith("| ok") for line in again.stdout.splitlines()[3:]), again.stdout

    cfg = yaml.safe_load(config.read_text())
    p = h.start_tidegate(config.parent / "ts-proxy", h.allocate_port("pg"), 0,
                         {"primary": cfg["primary"], "storage.database": name, "storage.maintenance_interval_ms": 0},
                         name="tidegate-timescale")
    try:
        rows = h.admin_dicts(p, "SHOW STORAGE")
        chunks = [r for r in rows if r["relation"] == "ticks" and r["part"] is not None]
        compressed = [r for r in chunks if r["compressed_bytes"] is not None]
        assert compressed and all(float(r["compression_ratio"]) > 0 and r["rows"] is None for r in compressed), chunks
        assert all(r["oldest"] < r["newest"] for r in chunks), chunks
        total = next(r for r in rows if r["relation"] == "ticks" and r["part"] is None)
        assert int(total["total_bytes"]) > 0 and int(total["compressed_bytes"]) > 0, total
        assert {"bars_1m", "bars_1d"} <= {r["relation"] for r in rows}, rows
    finally:
        p.stop()
